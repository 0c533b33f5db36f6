//! `run`: keep the folder in step until stopped. Triggers for a pass: filesystem events
//! (`notify`, debounced), a periodic full scan, and WebSocket nudges on
//! `/api/v1/sync/ws/{device_id}`. The socket reconnects immediately once, then with
//! exponential backoff up to 30 s; every (re)connect triggers a pass, which catches up from
//! the persisted cursor — a nudge is only ever a hint.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use notify::Watcher;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::engine::Engine;

/// Why a pass runs.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    Local,
    Remote,
    Scan,
}

/// Backoff before reconnect attempt `n` (0-based): immediate, then 1, 2, 4 … 30 s.
pub fn backoff(n: u32) -> Duration {
    if n == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs((1u64 << (n - 1).min(5)).min(30))
    }
}

/// Keep a WebSocket to the server open; every change nudge or (re)connect sends a trigger.
pub async fn websocket(url: String, token: String, tx: mpsc::Sender<Trigger>) {
    let mut failures = 0u32;
    loop {
        let mut req =
            match tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            ) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(event = "ws_bad_url", error = %e);
                    return;
                }
            };
        if let Ok(v) = format!("Bearer {token}").parse() {
            req.headers_mut().insert("Authorization", v);
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((mut ws, _)) => {
                let _ = ws
                    .send(Message::Text(r#"{"type":"subscribe"}"#.into()))
                    .await;
                failures = 0;
                tracing::info!(event = "ws_connected");
                // Catch up on whatever happened while disconnected.
                let _ = tx.send(Trigger::Remote).await;
                while let Some(m) = ws.next().await {
                    match m {
                        Ok(Message::Text(t)) => {
                            let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                            let kind = v["event_type"]
                                .as_str()
                                .or(v["type"].as_str())
                                .unwrap_or("");
                            if matches!(kind, "change" | "force_sync" | "changes_missed") {
                                let _ = tx.try_send(Trigger::Remote);
                            }
                        }
                        Ok(Message::Close(f)) => {
                            let code = f.as_ref().map(|f| u16::from(f.code)).unwrap_or(1005);
                            tracing::warn!(event = "ws_closed", code);
                            if code == 4401 || code == 4403 {
                                // Token or device problem: retrying fast will not help.
                                failures = failures.max(5);
                            }
                            break;
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
            Err(e) => tracing::warn!(event = "ws_connect_failed", error = %e),
        }
        tokio::time::sleep(backoff(failures)).await;
        failures = failures.saturating_add(1);
    }
}

/// Run until ctrl-c.
pub async fn run(engine: Engine, scan_every: Duration) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Trigger>(64);
    // Filesystem events (the state dir excluded).
    let ftx = tx.clone();
    let state_dir = engine.dir.join(crate::STATE_DIR);
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if ev.paths.iter().any(|p| !p.starts_with(&state_dir)) {
                let _ = ftx.try_send(Trigger::Local);
            }
        }
    })?;
    watcher.watch(&engine.dir, notify::RecursiveMode::Recursive)?;
    let ws_url = format!(
        "{}/api/v1/sync/ws/{}",
        engine
            .remote
            .base
            .trim_end_matches('/')
            .replacen("http", "ws", 1),
        engine.remote.device_id
    );
    tokio::spawn(websocket(ws_url, engine.remote.token.clone(), tx.clone()));
    let stx = tx.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(scan_every).await;
            if stx.send(Trigger::Scan).await.is_err() {
                return;
            }
        }
    });
    let _ = tx.send(Trigger::Scan).await;
    loop {
        tokio::select! {
            t = rx.recv() => {
                let Some(t) = t else { return Ok(()) };
                // Debounce: let a burst of events settle, then one pass for all of them.
                tokio::time::sleep(Duration::from_millis(300)).await;
                while rx.try_recv().is_ok() {}
                match engine.once().await {
                    Ok(r) => tracing::info!(event = "pass", trigger = ?t, downloaded = r.downloaded, uploaded = r.uploaded, pushed = r.pushed, conflicts = r.conflicts, errors = r.errors),
                    Err(e) => tracing::warn!(event = "pass_failed", trigger = ?t, error = %format!("{e:#}")),
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_pattern() {
        let s: Vec<u64> = (0..9).map(|n| super::backoff(n).as_secs()).collect();
        assert_eq!(s, vec![0, 1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
