//! Prefixed, time-ordered identifiers (`fil_01J3K…`): a ULID behind an entity prefix, so ids
//! sort by creation time (good for keyset pagination and index locality) and say what they name.

/// A new id such as `fil_01J3KX7ZQ4M4T5S6B8N9P0Q1R2`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new())
}

/// True when `id` looks like an id this crate made with `prefix`. Handlers use it to answer
/// a malformed id with 404 without touching the database.
pub fn has_prefix(id: &str, prefix: &str) -> bool {
    id.len() > prefix.len() + 1
        && id.len() <= 64
        && id.starts_with(prefix)
        && id.as_bytes()[prefix.len()] == b'_'
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_prefixed_and_ordered() {
        let a = super::new_id("fil");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::new_id("fil");
        assert!(a.starts_with("fil_") && a.len() == 30);
        assert!(a < b);
        assert!(super::has_prefix(&a, "fil"));
        assert!(!super::has_prefix(&a, "fld"));
        assert!(!super::has_prefix("fil_../x", "fil"));
    }
}
