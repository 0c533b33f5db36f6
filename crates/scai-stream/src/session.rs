//! One WebSocket session: hello, optional replay from a position, live frames in position
//! order, protocol-level pings with a pong deadline, the server close codes, and RFC 6455
//! behaviour on bad input (1002 protocol error, 1003 binary, 1007 invalid UTF-8, 1009 too big).
//!
//! Close codes: 4001 = authentication failed (the product's reason string); 4003 = server
//! abort with reason `ping_timeout` or `duplicate_connection`. Every end is logged as
//! `ws.disconnect` with its `reason`.

use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::time::Instant;

use crate::hub::Hub;
use crate::queue::Frame;
use crate::Payload;

pub const CLOSE_AUTH_INVALID: u16 = 4001;
pub const CLOSE_SERVER_ABORT: u16 = 4003;

/// Page size used when replaying from the store.
const REPLAY_PAGE: usize = 500;

#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub session_id: String,
    pub tenant: String,
    pub user: String,
    /// Sessions sharing a key are duplicates (the product passes a digest of the token).
    pub conn_key: String,
    /// The hello frame, already serialised.
    pub hello: String,
    /// Replay events after this position before going live.
    pub since: Option<u64>,
    /// Close with 4001 when the credential expires.
    pub expires_at: Option<SystemTime>,
    pub ping_interval: Duration,
    /// Close with 4003 `ping_timeout` when no pong arrived for this long.
    pub pong_timeout: Duration,
    /// The reason sent with 4001 on expiry.
    pub expired_reason: &'static str,
}

/// How a session ended (the `reason` of `ws.disconnect`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    ClientClosed,
    PingTimeout,
    DuplicateConnection,
    TokenExpired,
    ProtocolError(u16),
    Gone,
}

impl Ended {
    pub fn reason(&self) -> &'static str {
        match self {
            Ended::ClientClosed => "client_closed",
            Ended::PingTimeout => "ping_timeout",
            Ended::DuplicateConnection => "duplicate_connection",
            Ended::TokenExpired => "token_expired",
            Ended::ProtocolError(_) => "protocol_error",
            Ended::Gone => "connection_lost",
        }
    }
}

/// Send a close frame and wait briefly for the peer's close (the closing handshake).
pub async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        })))
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(m)) = socket.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Map a read error to the RFC 6455 close code the server answers with; `None` when the
/// peer is simply gone (reset, EOF) and there is nobody to answer.
fn error_close_code(e: axum::Error) -> Option<u16> {
    use tungstenite::error::ProtocolError;
    match e.into_inner().downcast::<tungstenite::Error>() {
        Ok(te) => match *te {
            tungstenite::Error::Utf8(_) => Some(1007),
            tungstenite::Error::Capacity(_) => Some(1009),
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
            tungstenite::Error::Protocol(_) => Some(1002),
            tungstenite::Error::Io(_)
            | tungstenite::Error::ConnectionClosed
            | tungstenite::Error::AlreadyClosed => None,
            _ => Some(1011),
        },
        Err(_) => None,
    }
}

/// Run the session until it ends. `on_text` answers client text frames (rate limiting and
/// application pings are the product's business); its reply, if any, is sent back. Return
/// a boxed future from it: it is held inside every session's state.
pub async fn run<E, F, Fut>(
    socket: WebSocket,
    hub: Hub<E>,
    mut opts: SessionOptions,
    mut on_text: F,
) -> Ended
where
    E: Payload,
    F: FnMut(Utf8Bytes) -> Fut + Send,
    Fut: std::future::Future<Output = Option<String>> + Send,
{
    let reg = hub
        .register(&opts.tenant, &opts.user, &opts.conn_key, &opts.session_id)
        .await;
    tracing::info!(event = "ws.connect", tenant = %opts.tenant, user = %opts.user, session_id = %opts.session_id, "ws.connect");
    let (mut tx, mut rx) = socket.split();
    // The hello is sent once; its buffer is not kept for the life of the connection.
    let hello = Utf8Bytes::from(std::mem::take(&mut opts.hello));
    let ended = async {
        if tx.send(Message::Text(hello)).await.is_err() {
            return Ended::Gone;
        }
        // Without `since` the session starts live at the last position released before it
    // registered; everything after reaches its queue (or, if dropped, the store replay).
    let mut last = opts.since.unwrap_or(reg.head_at_start);
        if opts.since.is_some() && Box::pin(replay(&hub, &opts, &mut tx, &mut last)).await.is_err() {
            return Ended::Gone;
        }
        let mut ping = tokio::time::interval_at(Instant::now() + opts.ping_interval, opts.ping_interval);
        let mut last_pong = Instant::now();
        let expiry = opts.expires_at.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            Instant::now() + left
        });
        let expiry_sleep = tokio::time::sleep_until(expiry.unwrap_or_else(|| Instant::now() + Duration::from_secs(86400 * 365)));
        tokio::pin!(expiry_sleep);
        loop {
            tokio::select! {
                batch = reg.queue.next_batch() => {
                    if let Some(c) = batch.close {
                        let _ = tx.send(Message::Close(Some(CloseFrame { code: c.code, reason: Utf8Bytes::from_static(c.reason) }))).await;
                        return if c.reason == "duplicate_connection" { Ended::DuplicateConnection } else { Ended::Gone };
                    }
                    if send_frames(&mut tx, batch.frames, &mut last).await.is_err() {
                        return Ended::Gone;
                    }
                    if batch.dropped > 0 {
                        // The queue overflowed: what was dropped is in the store; catch up
                        // from it before taking more live frames (which skip by position).
                        if Box::pin(replay(&hub, &opts, &mut tx, &mut last)).await.is_err() {
                            return Ended::Gone;
                        }
                    }
                }
                _ = ping.tick() => {
                    if last_pong.elapsed() > opts.pong_timeout {
                        let _ = tx.send(Message::Close(Some(CloseFrame { code: CLOSE_SERVER_ABORT, reason: Utf8Bytes::from_static("ping_timeout") }))).await;
                        return Ended::PingTimeout;
                    }
                    if tx.send(Message::Ping(axum::body::Bytes::new())).await.is_err() {
                        return Ended::Gone;
                    }
                }
                _ = &mut expiry_sleep, if expiry.is_some() => {
                    let _ = tx.send(Message::Close(Some(CloseFrame { code: CLOSE_AUTH_INVALID, reason: Utf8Bytes::from_static(opts.expired_reason) }))).await;
                    return Ended::TokenExpired;
                }
                msg = rx.next() => match msg {
                    None => return Ended::Gone,
                    Some(Ok(Message::Pong(_))) => last_pong = Instant::now(),
                    Some(Ok(Message::Ping(_))) => {} // answered by the protocol layer
                    Some(Ok(Message::Text(t))) => {
                        if let Some(reply) = on_text(t).await {
                            if tx.send(Message::Text(Utf8Bytes::from(reply))).await.is_err() {
                                return Ended::Gone;
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let _ = tx.send(Message::Close(Some(CloseFrame { code: 1003, reason: Utf8Bytes::from_static("binary frames are not supported") }))).await;
                        return Ended::ProtocolError(1003);
                    }
                    Some(Ok(Message::Close(_))) => {
                        // The protocol layer queued the close reply; flush it by reading on.
                        let _ = tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = rx.next().await {} }).await;
                        return Ended::ClientClosed;
                    }
                    Some(Err(e)) => {
                        let Some(code) = error_close_code(e) else {
                            return Ended::Gone;
                        };
                        let _ = tx.send(Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static("protocol error") }))).await;
                        return Ended::ProtocolError(code);
                    }
                }
            }
        }
    }
    .await;
    tracing::info!(event = "ws.disconnect", tenant = %opts.tenant, user = %opts.user, session_id = %opts.session_id, reason = ended.reason(), dropped = reg.queue.dropped(), "ws.disconnect");
    // Complete the closing handshake when we initiated it (best effort, bounded).
    if !matches!(ended, Ended::ClientClosed | Ended::Gone) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(m)) = rx.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    let _ = tx.close().await;
    ended
}

type Tx = futures::stream::SplitSink<WebSocket, Message>;

async fn send_frames(tx: &mut Tx, frames: Vec<Frame>, last: &mut u64) -> Result<(), axum::Error> {
    let mut any = false;
    for f in frames {
        if let Some(p) = f.position {
            if p <= *last {
                continue;
            }
            *last = p;
        }
        tx.feed(Message::Text(f.text)).await?;
        any = true;
    }
    if any {
        tx.flush().await?;
    }
    Ok(())
}

async fn replay<E: Payload>(
    hub: &Hub<E>,
    opts: &SessionOptions,
    tx: &mut Tx,
    last: &mut u64,
) -> Result<(), ()> {
    loop {
        let page = match hub
            .source()
            .visible_after(&opts.tenant, &opts.user, *last, REPLAY_PAGE)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(event = "ws.fanout_failed", tenant = %opts.tenant, error = %e, "ws.fanout_failed: replay");
                return Ok(());
            }
        };
        let n = page.len();
        let mut frames = Vec::with_capacity(n);
        for (p, e) in page {
            let text = serde_json::to_string(&e).map_err(|_| ())?;
            frames.push(Frame {
                position: Some(p),
                text: Utf8Bytes::from(text),
            });
        }
        send_frames(tx, frames, last).await.map_err(|_| ())?;
        if n < REPLAY_PAGE {
            return Ok(());
        }
    }
}
