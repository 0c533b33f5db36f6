//! The bounded per-connection queue between the fan-out and one socket writer.
//!
//! The fan-out never waits on a socket: when a connection's queue is full, the frame is
//! dropped and counted (per connection and in the product's dropped-messages counter). The
//! writer then tells its client how many frames it lost so the client catches up through the
//! product's sync endpoint. An empty queue holds no allocation, which keeps idle connections
//! small.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// A pre-serialised frame: serialised once per event, shared by every receiving session.
#[derive(Clone, Debug)]
pub struct Frame {
    pub position: Option<u64>,
    pub text: Utf8Bytes,
}

/// Why the hub asks a session to end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseRequest {
    pub code: u16,
    pub reason: &'static str,
}

#[derive(Default)]
struct Inner {
    frames: VecDeque<Frame>,
    close: Option<CloseRequest>,
    /// Positioned frames dropped since the writer last looked (it then catches up from
    /// the store).
    unreported_drops: u64,
}

pub struct SessionQueue {
    inner: Mutex<Inner>,
    notify: Notify,
    capacity: usize,
    dropped: AtomicU64,
}

/// What the writer takes out of its queue.
#[derive(Debug, Default)]
pub struct Batch {
    pub frames: Vec<Frame>,
    pub close: Option<CloseRequest>,
    /// Frames lost since the last batch (the queue was full).
    pub dropped: u64,
}

impl SessionQueue {
    pub fn new(capacity: usize) -> Self {
        SessionQueue {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    /// Enqueue without waiting; returns false when the frame was dropped.
    pub fn push(&self, frame: Frame) -> bool {
        let accepted = {
            let mut g = self.inner.lock();
            if g.close.is_some() {
                return true;
            }
            if g.frames.len() >= self.capacity {
                // Only positioned frames can be recovered from the store; a dropped
                // ephemeral frame (typing, presence) is just counted.
                if frame.position.is_some() {
                    g.unreported_drops += 1;
                }
                false
            } else {
                g.frames.push_back(frame);
                true
            }
        };
        if !accepted {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.notify.notify_one();
        accepted
    }

    /// Ask the session to close; frames still queued are discarded.
    pub fn close(&self, req: CloseRequest) {
        {
            let mut g = self.inner.lock();
            if g.close.is_none() {
                g.close = Some(req);
            }
            g.frames = VecDeque::new();
        }
        self.notify.notify_one();
    }

    /// Total frames dropped on this connection.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Wait until something is queued (frames, drops or a close request) and take it all.
    pub async fn next_batch(&self) -> Batch {
        loop {
            let notified = self.notify.notified();
            {
                let mut g = self.inner.lock();
                if g.close.is_some() || !g.frames.is_empty() || g.unreported_drops > 0 {
                    let frames: Vec<Frame> = g.frames.drain(..).collect();
                    if g.frames.capacity() > 64 {
                        // Give memory back after a burst: idle connections stay small.
                        g.frames = VecDeque::new();
                    }
                    let dropped = std::mem::take(&mut g.unreported_drops);
                    return Batch {
                        frames,
                        close: g.close.clone(),
                        dropped,
                    };
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(p: u64) -> Frame {
        Frame {
            position: Some(p),
            text: Utf8Bytes::from(p.to_string()),
        }
    }

    #[tokio::test]
    async fn full_queue_drops_and_counts() {
        let q = SessionQueue::new(2);
        assert!(q.push(f(1)));
        assert!(q.push(f(2)));
        assert!(!q.push(f(3)));
        let b = q.next_batch().await;
        assert_eq!(b.frames.len(), 2);
        assert_eq!(b.dropped, 1);
        assert_eq!(q.dropped(), 1);
        q.close(CloseRequest {
            code: 4003,
            reason: "duplicate_connection",
        });
        assert!(q.next_batch().await.close.is_some());
    }
}
