//! Stream positions and the values that travel through the engine, plus the per-tenant
//! reorder buffer that turns "published in any order" into "released in position order".
//!
//! Positions are assigned by the product in the same database transaction that stores the
//! event, tenant-wide, strictly increasing and gap-free in commit order. Publication to the
//! broker happens after commit, so two replicas may publish p+1 before p; the buffer holds
//! p+1 until p arrives (or until the hub fetches p from the store).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Who may receive an event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Audience {
    /// Every session of the tenant.
    Tenant,
    /// Only sessions of these users.
    Users { users: Vec<String> },
}

impl Audience {
    pub fn users(users: Vec<String>) -> Self {
        Audience::Users { users }
    }
}

/// One event on its way to sessions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delivery<E> {
    pub tenant: String,
    /// Tenant-wide stream position; `None` for ephemeral frames (typing, presence).
    pub position: Option<u64>,
    pub audience: Audience,
    pub payload: E,
}

/// What travels on the broker between replicas.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum BusMessage<E> {
    Event(Delivery<E>),
    /// A session opened with `conn_key` somewhere; older sessions with that key close with
    /// `duplicate_connection` on every replica.
    SessionOpened {
        tenant: String,
        conn_key: String,
        session_id: String,
        /// The replica that opened it (it closed its own older sessions already).
        origin: String,
        /// Wall-clock ms of the opening: only sessions opened before it are older.
        opened_at_ms: u64,
    },
}

impl<E> BusMessage<E> {
    pub fn tenant(&self) -> &str {
        match self {
            BusMessage::Event(d) => &d.tenant,
            BusMessage::SessionOpened { tenant, .. } => tenant,
        }
    }
}

/// Releases positioned items strictly in order, starting after `head`.
#[derive(Debug)]
pub struct Reorder<T> {
    next: u64,
    pending: BTreeMap<u64, T>,
}

impl<T> Reorder<T> {
    /// `head` is the last position already released (or known to be committed before we
    /// started listening).
    pub fn new(head: u64) -> Self {
        Reorder {
            next: head + 1,
            pending: BTreeMap::new(),
        }
    }

    /// The next position that will be released.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Offer an item; returns the items now releasable, in order. Duplicates and positions
    /// already released are discarded.
    pub fn offer(&mut self, pos: u64, item: T) -> Vec<(u64, T)> {
        if pos < self.next {
            return Vec::new();
        }
        self.pending.entry(pos).or_insert(item);
        self.drain()
    }

    fn drain(&mut self) -> Vec<(u64, T)> {
        let mut out = Vec::new();
        while let Some(item) = self.pending.remove(&self.next) {
            out.push((self.next, item));
            self.next += 1;
        }
        out
    }

    /// The first missing range `(from, to)` inclusive, when something later is waiting.
    pub fn gap(&self) -> Option<(u64, u64)> {
        let (&first, _) = self.pending.iter().next()?;
        (first > self.next).then(|| (self.next, first - 1))
    }

    /// Give up on positions below `pos` (they are not in the store either): release what
    /// is waiting from `pos` on.
    pub fn skip_to(&mut self, pos: u64) -> Vec<(u64, T)> {
        if pos > self.next {
            self.next = pos;
        }
        self.drain()
    }

    pub fn is_waiting(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_in_order_and_drops_duplicates() {
        let mut r = Reorder::new(10);
        assert!(r.offer(12, "b").is_empty());
        assert_eq!(r.gap(), Some((11, 11)));
        assert_eq!(r.offer(11, "a"), vec![(11, "a"), (12, "b")]);
        assert!(r.offer(11, "dup").is_empty());
        assert!(r.offer(5, "old").is_empty());
        assert_eq!(r.gap(), None);
        assert!(r.offer(15, "e").is_empty());
        assert_eq!(r.gap(), Some((13, 14)));
        assert_eq!(r.skip_to(15), vec![(15, "e")]);
        assert_eq!(r.next(), 16);
    }
}
