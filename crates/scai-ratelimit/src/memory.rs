//! The in-process backend, for the embedded single-process `serve` mode: a mutex-guarded map
//! of per-`(dimension, key)` window counters. Exact same arithmetic as the Redis backend;
//! counters live only as long as the process and are not shared between processes.

use std::collections::HashMap;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::backend::{system_now_ms, Backend, Taken};
use crate::window::WindowCounts;
use crate::{Dimension, Error};

/// Counters of one key: the fixed window they belong to and the two counts.
#[derive(Clone, Copy, Debug)]
struct Slot {
    window: u64,
    prev: u64,
    curr: u64,
}

impl Slot {
    /// The counters as seen from window index `w` (rolling forward if time moved on).
    fn at(&self, w: u64) -> WindowCounts {
        if self.window == w {
            WindowCounts {
                prev: self.prev,
                curr: self.curr,
            }
        } else if self.window + 1 == w {
            WindowCounts {
                prev: self.curr,
                curr: 0,
            }
        } else {
            WindowCounts::default()
        }
    }
}

#[derive(Default)]
struct State {
    slots: HashMap<(Dimension, String), Slot>,
    /// Checks since the last sweep of stale slots.
    since_sweep: u64,
}

/// In-process counters. Cheap to clone behind an `Arc`; one per process.
#[derive(Default)]
pub struct MemoryBackend {
    state: Mutex<State>,
}

/// Sweep stale slots every this many checks, so memory stays proportional to active keys.
const SWEEP_EVERY: u64 = 4096;

impl MemoryBackend {
    /// An empty limiter store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys currently tracked (for tests and diagnostics).
    pub fn tracked_keys(&self) -> usize {
        self.state.lock().slots.len()
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn take(
        &self,
        checks: &[(Dimension, &str, u64)],
        cost: u64,
        window_ms: u64,
        now_ms: Option<u64>,
    ) -> Result<Taken, Error> {
        let now_ms = now_ms.unwrap_or_else(system_now_ms);
        let w = now_ms / window_ms;
        let mut st = self.state.lock();
        // One lock over read-decide-write: atomic across dimensions.
        let counts: Vec<WindowCounts> = checks
            .iter()
            .map(|(d, k, _)| {
                st.slots
                    .get(&(*d, (*k).to_string()))
                    .map(|s| s.at(w))
                    .unwrap_or_default()
            })
            .collect();
        let counted = checks
            .iter()
            .zip(&counts)
            .all(|((_, _, limit), c)| c.admits(cost, *limit, now_ms, window_ms));
        if counted {
            for ((d, k, _), c) in checks.iter().zip(&counts) {
                st.slots.insert(
                    (*d, (*k).to_string()),
                    Slot {
                        window: w,
                        prev: c.prev,
                        curr: c.curr + cost,
                    },
                );
            }
        }
        st.since_sweep += 1;
        if st.since_sweep >= SWEEP_EVERY {
            st.since_sweep = 0;
            // A slot two windows old counts for nothing any more.
            st.slots.retain(|_, s| s.window + 1 >= w);
        }
        Ok(Taken {
            now_ms,
            counted,
            counts,
        })
    }
}
