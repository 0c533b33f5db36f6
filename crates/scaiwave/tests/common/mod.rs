//! Shared helpers for the integration tests: start the real `scaiwave` binary on a free
//! port with a temp data dir, mint tokens with the same embedded issuer, talk HTTP with
//! reqwest and WebSocket with tokio-tungstenite.
#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use scai_auth::{EmbeddedIssuer, MintOptions};
use scai_testkit::{free_port, wait_http_ok, ServerProcess};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const WAIT: Duration = Duration::from_secs(20);

pub struct Server {
    pub proc: ServerProcess,
    pub port: u16,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub issuer: EmbeddedIssuer,
    http: reqwest::Client,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_scaiwave")
}

impl Server {
    /// `scaiwave serve` (embedded) with `extra` env.
    pub async fn start(extra: &[(&str, String)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, "serve", extra).await
    }

    pub async fn start_in(dir: tempfile::TempDir, role: &str, extra: &[(&str, String)]) -> Server {
        let issuer =
            EmbeddedIssuer::load_or_create(dir.path(), "scaiwave-embedded:localhost").unwrap();
        let port = free_port();
        let mut envs: Vec<(&str, String)> = vec![
            ("SCAIWAVE_DATA_DIR", dir.path().display().to_string()),
            ("SCAIWAVE_BIND", format!("127.0.0.1:{port}")),
            ("SCAIWAVE_RATE_LIMIT_PER_SEC", "100000".into()),
            ("SCAIWAVE_RATE_LIMIT_BURST", "100000".into()),
            ("RUST_LOG", "info".into()),
        ];
        for (k, v) in extra {
            envs.retain(|(k2, _)| k2 != k);
            envs.push((k, v.clone()));
        }
        let proc = ServerProcess::start(bin(), &[role], &envs);
        let base = format!("http://127.0.0.1:{port}");
        if let Err(e) = wait_http_ok(&format!("{base}/health"), Duration::from_secs(30)).await {
            panic!("server did not start: {e}\n{}", proc.logs());
        }
        Server {
            proc,
            port,
            base,
            dir,
            issuer,
            http: reqwest::Client::new(),
        }
    }

    pub fn token(&self, tenant: &str, user: &str) -> String {
        self.issuer.mint(&MintOptions::new(tenant, user))
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://127.0.0.1:{}/v1/stream?token={token}", self.port)
    }

    pub async fn call(
        &self,
        method: &str,
        token: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{}", self.base, path);
        let mut req = match method {
            "GET" => self.http.get(url),
            "POST" => self.http.post(url),
            "PUT" => self.http.put(url),
            "DELETE" => self.http.delete(url),
            _ => unreachable!(),
        }
        .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, v)
    }

    pub async fn create_room(&self, token: &str, name: &str) -> String {
        let (s, v) = self
            .call(
                "POST",
                token,
                "/v1/rooms",
                Some(json!({"name": name, "room_type": "public"})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["data"]["id"].as_str().unwrap().to_string()
    }

    pub async fn join(&self, token: &str, room: &str) {
        let (s, v) = self
            .call("POST", token, &format!("/v1/rooms/{room}/join"), None)
            .await;
        assert_eq!(s, 200, "{v}");
    }

    pub async fn send(&self, token: &str, room: &str, body: &str) -> Value {
        let (s, v) = self
            .call(
                "POST",
                token,
                &format!("/v1/rooms/{room}/send"),
                Some(json!({"content": {"msgtype": "swp.text", "body": body}})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["data"].clone()
    }

    /// Every event visible to `token` after `since`, draining `has_more`.
    pub async fn sync_all(&self, token: &str, since: u64) -> Vec<Value> {
        let mut out = Vec::new();
        let mut since = since;
        loop {
            let (s, v) = self
                .call(
                    "GET",
                    token,
                    &format!("/v1/sync?since={since}&limit=500&timeout=0"),
                    None,
                )
                .await;
            assert_eq!(s, 200, "{v}");
            out.extend(v["data"]["events"].as_array().unwrap().iter().cloned());
            since = v["data"]["next_cursor"].as_u64().unwrap();
            if !v["data"]["has_more"].as_bool().unwrap() {
                return out;
            }
        }
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

pub async fn connect(url: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connect");
    ws
}

/// Connect and read the hello frame.
pub async fn connect_hello(url: &str) -> (Ws, Value) {
    let mut ws = connect(url).await;
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    (ws, hello)
}

/// The next text frame as JSON (control frames are skipped; tungstenite answers pings).
pub async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a frame");
        match m {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The next positioned event (typing/presence frames skipped).
pub async fn next_event(ws: &mut Ws) -> Value {
    loop {
        let v = next_json(ws).await;
        if v.get("stream_position").is_some() {
            return v;
        }
    }
}

/// Read until the server closes; returns the close code and reason.
pub async fn expect_close(ws: &mut Ws) -> (u16, String) {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for close");
        match m {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) => return (u16::from(CloseCode::Status), String::new()),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Wait until the server log has a `ws.disconnect` line with `reason`.
pub async fn wait_log(s: &Server, reason: &str) {
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let logs = s.proc.logs();
        if logs
            .lines()
            .any(|l| l.contains("ws.disconnect") && l.contains(reason))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "no ws.disconnect {reason} in logs:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
