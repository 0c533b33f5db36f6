//! The sliding-window-counter arithmetic, shared by both backends.
//!
//! Each `(dimension, key)` keeps one counter per fixed window of `W` milliseconds (window
//! index `now / W`). The units used in the *sliding* window ending now are estimated as
//!
//! ```text
//! used(now) = curr + floor(prev * (W - elapsed) / W)      elapsed = now mod W
//! ```
//!
//! i.e. the previous window's units are assumed evenly spread and only the part still
//! inside the sliding window counts. A request of `cost` units is admitted when
//! `used + cost <= limit` (for every dimension at once), and then `cost` is added to `curr`.
//!
//! The Redis Lua script mirrors [`WindowCounts::used`] exactly and hands the raw counters back,
//! so the decision details (remaining, reset, retry-after) are computed here once for both
//! backends.

/// The two counters of one `(dimension, key)` as they were *before* the request was counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Units consumed in the previous fixed window.
    pub prev: u64,
    /// Units consumed in the current fixed window.
    pub curr: u64,
}

impl WindowCounts {
    /// Estimated units used in the sliding window ending at `now_ms`.
    pub fn used(&self, now_ms: u64, window_ms: u64) -> u64 {
        let elapsed = now_ms % window_ms;
        self.curr + self.prev * (window_ms - elapsed) / window_ms
    }

    /// Whether `cost` more units fit under `limit` at `now_ms`.
    pub fn admits(&self, cost: u64, limit: u64, now_ms: u64, window_ms: u64) -> bool {
        self.used(now_ms, window_ms) + cost <= limit
    }

    /// Milliseconds from `now_ms` until `cost` units would fit under `limit`, assuming no
    /// other traffic. Rounded up, so waiting this long is always enough. A cost larger than
    /// the limit never fits: the answer is then one whole window (a hint, not a promise).
    pub fn wait_ms(&self, cost: u64, limit: u64, now_ms: u64, window_ms: u64) -> u64 {
        if self.admits(cost, limit, now_ms, window_ms) {
            return 0;
        }
        if cost > limit {
            return window_ms;
        }
        let elapsed = now_ms % window_ms;
        // Still inside the current window: wait until enough of `prev` has slid out.
        if self.curr + cost <= limit && self.prev > 0 {
            let room = limit - cost - self.curr; // units of `prev` we can afford
            let e_needed = first_elapsed_fitting(self.prev, room, window_ms);
            if e_needed < window_ms {
                return e_needed.saturating_sub(elapsed).max(1);
            }
        }
        // Otherwise into the next window, where today's `curr` becomes `prev`.
        let to_next = window_ms - elapsed;
        let room = limit - cost;
        if self.curr <= room {
            return to_next;
        }
        to_next + first_elapsed_fitting(self.curr, room, window_ms)
    }
}

/// The smallest `elapsed` with `floor(units * (W - elapsed) / W) <= room` (`units > 0`):
/// `units * (W - e) < (room + 1) * W`  <=>  `W - e <= ((room + 1) * W - 1) / units`.
fn first_elapsed_fitting(units: u64, room: u64, window_ms: u64) -> u64 {
    window_ms.saturating_sub(((room + 1) * window_ms - 1) / units)
}

/// What one dimension looks like after a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Whether this dimension alone would admit the request.
    pub admits: bool,
    /// Units left in the sliding window after this request (after counting it when the
    /// request as a whole was allowed).
    pub remaining: u64,
    /// Milliseconds until this dimension would admit the request (0 when it does).
    pub wait_ms: u64,
    /// Unix seconds at which the current fixed window ends (what `X-RateLimit-Reset` shows).
    pub reset_unix: u64,
}

/// Evaluate one dimension given the counters before the request and whether the request as
/// a whole was admitted (and therefore counted).
pub fn outcome(
    counts: WindowCounts,
    cost: u64,
    limit: u64,
    now_ms: u64,
    window_ms: u64,
    counted: bool,
) -> Outcome {
    let used = counts.used(now_ms, window_ms);
    let admits = used + cost <= limit;
    let used_after = if counted { used + cost } else { used };
    let window_end_ms = (now_ms / window_ms + 1) * window_ms;
    Outcome {
        admits,
        remaining: limit.saturating_sub(used_after),
        wait_ms: counts.wait_ms(cost, limit, now_ms, window_ms),
        reset_unix: window_end_ms.div_ceil(1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 60_000;

    #[test]
    fn previous_window_slides_out_linearly() {
        let c = WindowCounts { prev: 100, curr: 0 };
        assert_eq!(c.used(0, W), 100);
        assert_eq!(c.used(W / 4, W), 75);
        assert_eq!(c.used(W / 2, W), 50);
        assert_eq!(c.used(W - 1, W), 0);
    }

    #[test]
    fn wait_is_enough_and_tight() {
        // Every wait_ms answer must admit at now + wait, and not at now + wait - 1.
        for prev in [0u64, 1, 7, 50, 100] {
            for curr in [0u64, 3, 60, 100] {
                for elapsed in [0u64, 1, 17_000, 59_999] {
                    for cost in [1u64, 5, 20] {
                        let limit = 100;
                        let c = WindowCounts { prev, curr };
                        let now = 10 * W + elapsed;
                        let wait = c.wait_ms(cost, limit, now, W);
                        if wait == 0 {
                            assert!(c.admits(cost, limit, now, W));
                            continue;
                        }
                        let at = |t: u64| {
                            // Roll the counters forward as the store would.
                            let rolled = if t / W == now / W {
                                c
                            } else if t / W == now / W + 1 {
                                WindowCounts {
                                    prev: curr,
                                    curr: 0,
                                }
                            } else {
                                WindowCounts::default()
                            };
                            rolled.admits(cost, limit, t, W)
                        };
                        assert!(
                            at(now + wait),
                            "prev {prev} curr {curr} e {elapsed} cost {cost}"
                        );
                        assert!(!at(now + wait - 1), "not tight: prev {prev} curr {curr} e {elapsed} cost {cost} wait {wait}");
                    }
                }
            }
        }
    }

    #[test]
    fn cost_above_limit_never_fits() {
        let c = WindowCounts::default();
        assert!(!c.admits(11, 10, 0, W));
        assert_eq!(c.wait_ms(11, 10, 0, W), W);
    }
}
