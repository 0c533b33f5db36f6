//! ScaiDrive sync client library: the local state database, the HTTP/WebSocket client of the
//! sync API, the sync engine (pull remote changes, push local ones, keep both sides of a
//! conflict) and the `run` loop (filesystem watching, periodic scans, WebSocket nudges with
//! the documented reconnect pattern). The `scaidrive-sync` binary is a thin CLI over it.

pub mod bench;
pub mod engine;
pub mod ignore;
pub mod remote;
pub mod run;
pub mod state;

pub use engine::{Engine, PassReport};

/// Directory inside the synced folder that holds the client's state (never synced).
pub const STATE_DIR: &str = ".scaidrive";

/// `name (conflict copy YYYY-MM-DD HHMM device).ext`, the same form the server uses.
pub fn conflict_name(name: &str, device: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let when = now.format("%Y-%m-%d %H%M");
    let device: String = device
        .chars()
        .filter(|c| !matches!(c, '/' | '\\' | '\0'))
        .take(40)
        .collect();
    let tag = format!(" (conflict copy {when} {device})");
    match name.rfind('.') {
        Some(i) if i > 0 => format!("{}{}{}", &name[..i], tag, &name[i..]),
        _ => format!("{name}{tag}"),
    }
}
