//! The reference client, following the documented reconnect strategy: the first reconnect
//! is immediate, then 1, 2, 4, 8 … seconds capped at 30; on every (re)connect it first
//! drains `/v1/sync?since=<last_stream_position>`, then resumes the stream (passing `since`
//! as well, so nothing committed between the two is lost); every processed position is
//! persisted to the state file (written to a temp file and renamed). Events are printed to
//! stdout as JSON lines.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

pub fn backoff(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => Duration::from_secs((1u64 << (n - 1).min(5)).min(30)),
    }
}

fn load_state(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v.get("last_stream_position").and_then(Value::as_u64))
        .unwrap_or(0)
}

fn save_state(path: &Path, pos: u64) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json!({"last_stream_position": pos}).to_string())?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

struct Progress<'a> {
    state: &'a Path,
    last: u64,
    seen: u64,
    max: Option<u64>,
}

impl Progress<'_> {
    /// Print and record an event; ephemeral frames are printed but carry no position.
    fn process(&mut self, ev: &Value) -> anyhow::Result<bool> {
        if let Some(p) = ev.get("stream_position").and_then(Value::as_u64) {
            if p <= self.last {
                return Ok(false);
            }
            println!("{ev}");
            self.last = p;
            save_state(self.state, p)?;
            self.seen += 1;
            return Ok(self.max.is_some_and(|m| self.seen >= m));
        }
        println!("{ev}");
        Ok(false)
    }
}

/// The server refused the token on /v1/sync: retrying cannot help, the user must refresh it.
#[derive(Debug)]
struct TokenRefused;

impl std::fmt::Display for TokenRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("token refused (401): refresh it and restart")
    }
}

impl std::error::Error for TokenRefused {}

pub async fn run(server: &str, token: &str, state: &Path, max: Option<u64>) -> anyhow::Result<()> {
    let base = server.trim_end_matches('/');
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        anyhow::bail!("--server must be an http:// or https:// URL");
    };
    let http = reqwest::Client::new();
    let mut p = Progress {
        state,
        last: load_state(state),
        seen: 0,
        max,
    };
    let mut failures = 0u32;
    loop {
        // 1. Bridge the gap with /v1/sync.
        let synced: anyhow::Result<bool> = async {
            loop {
                let resp = http
                    .get(format!("{base}/v1/sync"))
                    .query(&[
                        ("since", p.last.to_string()),
                        ("limit", "500".into()),
                        ("timeout", "0".into()),
                    ])
                    .bearer_auth(token)
                    .send()
                    .await?;
                if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
                    return Err(TokenRefused.into());
                }
                let body: Value = resp.error_for_status()?.json().await?;
                let data = &body["data"];
                for ev in data["events"].as_array().cloned().unwrap_or_default() {
                    if p.process(&ev)? {
                        return Ok(true);
                    }
                }
                if !data["has_more"].as_bool().unwrap_or(false) {
                    return Ok(false);
                }
            }
        }
        .await;
        match synced {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            // Typed, not matched on the message: a URL in a transport error can contain "401"
            // (port 40129 did), which once made a refused connection look like a bad token.
            Err(e) if e.is::<TokenRefused>() => return Err(e),
            Err(e) => {
                eprintln!("sync failed: {e}");
                failures += 1;
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
        }
        // 2. Resume the stream from the same position.
        let url = format!("{ws_base}/v1/stream?token={token}&since={}", p.last);
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((mut ws, _)) => {
                let mut hello = false;
                while let Some(msg) = ws.next().await {
                    match msg {
                        Ok(Message::Text(t)) => {
                            let v: Value = serde_json::from_str(t.as_str()).context("bad frame")?;
                            if v["type"] == "hello" {
                                hello = true;
                                failures = 0;
                                eprintln!(
                                    "connected: session {} tenant {}",
                                    v["session_id"], v["tenant_id"]
                                );
                                continue;
                            }
                            if p.process(&v)? {
                                let _ = ws.close(None).await;
                                return Ok(());
                            }
                        }
                        Ok(Message::Close(Some(f))) => {
                            let code: u16 = f.code.into();
                            eprintln!("closed by server: {code} {}", f.reason);
                            if code == 4001 {
                                anyhow::bail!(
                                    "token refused (4001 {}): refresh it and restart",
                                    f.reason
                                );
                            }
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("stream error: {e}");
                            break;
                        }
                    }
                }
                if !hello {
                    failures += 1;
                }
            }
            Err(e) => {
                eprintln!("connect failed: {e}");
                failures += 1;
            }
        }
        tokio::time::sleep(backoff(failures)).await;
        if failures == 0 {
            // First drop after a good connection: reconnect immediately, then back off.
            failures = 1;
        } else {
            failures += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_backoff() {
        let secs: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, vec![0, 1, 2, 4, 8, 16, 30, 30]);
    }
}
