//! RFC 6455 conformance of `/v1/stream`, driven with raw frames over a plain TCP socket (an
//! autobahn-style subset): handshake, fragmentation with interleaved control frames, UTF-8
//! split across fragments, the closing handshake, and the close codes for protocol
//! violations (1002), binary data (1003) and invalid UTF-8 (1007).

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl Raw {
    async fn open(s: &Server, token: &str) -> Raw {
        let mut tcp = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
        let req = format!(
            "GET /v1/stream?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            s.port
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "connection closed during handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // The RFC's own example key and accept value.
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        let rest = buf[head_end..].to_vec();
        Raw { tcp, buf: rest }
    }

    async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8], masked: bool, rsv: u8) {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | (rsv << 4) | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(mask_bit | n as u8),
            n if n < 65536 => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x37u8, 0xfa, 0x21, 0x3d];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        self.tcp.write_all(&f).await.unwrap();
    }

    async fn fill(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            let mut chunk = [0u8; 4096];
            let r = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .expect("timed out reading");
            match r {
                Ok(0) | Err(_) => return false,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
        true
    }

    /// The next frame from the server, or None at EOF.
    async fn recv(&mut self) -> Option<Frame> {
        if !self.fill(2).await {
            return None;
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        assert_eq!(b1 & 0x80, 0, "server frames must not be masked");
        let (len, off) = match b1 & 0x7f {
            126 => {
                assert!(self.fill(4).await);
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                assert!(self.fill(10).await);
                (
                    u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                    10,
                )
            }
            n => (n as usize, 2),
        };
        assert!(self.fill(off + len).await, "truncated frame");
        let payload = self.buf[off..off + len].to_vec();
        self.buf.drain(..off + len);
        Some(Frame {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0f,
            payload,
        })
    }

    /// Next frame that is not a server ping or a presence notice.
    async fn recv_skip_pings(&mut self) -> Option<Frame> {
        loop {
            let f = self.recv().await?;
            let presence = f.opcode == 1
                && serde_json::from_slice::<Value>(&f.payload)
                    .is_ok_and(|v| v["type"] == "presence");
            if f.opcode != 9 && !presence {
                return Some(f);
            }
        }
    }

    async fn hello(&mut self) -> Value {
        let f = self.recv_skip_pings().await.unwrap();
        assert_eq!(f.opcode, 1);
        serde_json::from_slice(&f.payload).unwrap()
    }

    /// Expect a close frame with `code`, then EOF.
    async fn expect_close(&mut self, code: u16) {
        let f = self
            .recv_skip_pings()
            .await
            .expect("expected a close frame, got EOF");
        assert_eq!(f.opcode, 8, "expected close, got {f:?}");
        assert!(f.payload.len() >= 2);
        assert_eq!(
            u16::from_be_bytes([f.payload[0], f.payload[1]]),
            code,
            "{f:?}"
        );
        // Complete our side of the handshake; the server then closes the TCP connection.
        self.send(true, 8, &f.payload[..2], true, 0).await;
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < until {
            if self.recv().await.is_none() {
                return;
            }
        }
        panic!("server did not close the TCP connection");
    }
}

/// fin, opcode, payload, masked, rsv bits.
type RawFrame = (bool, u8, Vec<u8>, bool, u8);

async fn setup() -> (Server, String) {
    let s = Server::start(&[]).await;
    let t = s.token("acme", "raw");
    (s, t)
}

#[tokio::test]
async fn fragmented_text_with_interleaved_ping_is_reassembled() {
    let (s, t) = setup().await;
    let mut r = Raw::open(&s, &t).await;
    assert_eq!(r.hello().await["type"], "hello");
    r.send(false, 1, br#"{"type":"#, true, 0).await;
    r.send(true, 9, b"mid", true, 0).await; // control frame between fragments
    r.send(false, 0, br#""ping","nonce":"#, true, 0).await;
    // "é" (C3 A9) split across two fragments is still valid UTF-8 as a whole.
    r.send(false, 0, b"\"\xC3", true, 0).await;
    r.send(true, 0, b"\xA9\"}", true, 0).await;
    let pong = r.recv_skip_pings().await.unwrap();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (10, &b"mid"[..]));
    let reply = r.recv_skip_pings().await.unwrap();
    assert!(reply.fin);
    assert_eq!(reply.opcode, 1);
    let v: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["type"], "pong");
    assert_eq!(v["nonce"], "é");
}

#[tokio::test]
async fn ping_is_answered_with_identical_pong_and_close_is_echoed() {
    let (s, t) = setup().await;
    let mut r = Raw::open(&s, &t).await;
    r.hello().await;
    r.send(true, 9, &[1, 2, 3, 0xff, 0], true, 0).await;
    let f = r.recv_skip_pings().await.unwrap();
    assert_eq!((f.opcode, f.payload), (10, vec![1, 2, 3, 0xff, 0]));
    // Closing handshake initiated by the client: the server echoes the close and hangs up.
    let mut body = 1000u16.to_be_bytes().to_vec();
    body.extend_from_slice(b"bye");
    r.send(true, 8, &body, true, 0).await;
    let f = r.recv_skip_pings().await.unwrap();
    assert_eq!(f.opcode, 8);
    assert_eq!(u16::from_be_bytes([f.payload[0], f.payload[1]]), 1000);
    assert!(
        r.recv().await.is_none(),
        "server must close TCP after the closing handshake"
    );
    wait_log(&s, "client_closed").await;
}

#[tokio::test]
async fn invalid_utf8_text_closes_1007() {
    let (s, t) = setup().await;
    let mut r = Raw::open(&s, &t).await;
    r.hello().await;
    r.send(true, 1, b"{\"type\":\"\xC3\x28\"}", true, 0).await;
    r.expect_close(1007).await;
    // Invalid UTF-8 split across fragments is caught too.
    let mut r = Raw::open(&s, &t).await;
    r.hello().await;
    r.send(false, 1, b"ok \xED", true, 0).await;
    r.send(true, 0, b"\xA0\x80", true, 0).await; // a UTF-16 surrogate: not UTF-8
    r.expect_close(1007).await;
}

#[tokio::test]
async fn protocol_violations_close_1002() {
    let (s, t) = setup().await;
    // (name, frames to send)
    let cases: Vec<(&str, Vec<RawFrame>)> = vec![
        (
            "unmasked client frame",
            vec![(true, 1, b"{}".to_vec(), false, 0)],
        ),
        (
            "continuation without a start",
            vec![(true, 0, b"x".to_vec(), true, 0)],
        ),
        (
            "control frame over 125 bytes",
            vec![(true, 9, vec![b'a'; 126], true, 0)],
        ),
        (
            "fragmented control frame",
            vec![(false, 9, b"a".to_vec(), true, 0)],
        ),
        (
            "reserved bits without an extension",
            vec![(true, 1, b"{}".to_vec(), true, 4)],
        ),
        ("reserved opcode", vec![(true, 3, b"".to_vec(), true, 0)]),
        (
            "new message inside a fragmented one",
            vec![
                (false, 1, b"a".to_vec(), true, 0),
                (true, 1, b"b".to_vec(), true, 0),
            ],
        ),
    ];
    for (name, frames) in cases {
        let mut r = Raw::open(&s, &t).await;
        r.hello().await;
        for (fin, op, p, masked, rsv) in frames {
            r.send(fin, op, &p, masked, rsv).await;
        }
        eprintln!("case: {name}");
        r.expect_close(1002).await;
    }
}

#[tokio::test]
async fn binary_frames_close_1003_and_text_still_works_before() {
    let (s, t) = setup().await;
    let mut r = Raw::open(&s, &t).await;
    r.hello().await;
    r.send(true, 1, br#"{"type":"ping","nonce":1}"#, true, 0)
        .await;
    let f = r.recv_skip_pings().await.unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&f.payload).unwrap()["type"],
        "pong"
    );
    r.send(true, 2, &[0, 1, 2], true, 0).await;
    r.expect_close(1003).await;
}
