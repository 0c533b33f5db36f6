//! Whether tests that need external services (MariaDB, Redis, NATS, an S3 server, CLIs) run.
//! They run by default; only an explicit `SCAI_TEST_SKIP_SERVICES=1` skips them, never silence.

/// True when service-backed tests must be skipped. Prints why, so a skip is visible.
pub fn skip(test: &str) -> bool {
    let skip = std::env::var("SCAI_TEST_SKIP_SERVICES")
        .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        eprintln!("SKIPPED {test}: SCAI_TEST_SKIP_SERVICES=1");
    }
    skip
}

/// MariaDB server URL without a database (`SCAI_TEST_MARIADB_URL`, default root on loopback).
pub fn mariadb_url() -> String {
    std::env::var("SCAI_TEST_MARIADB_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_string())
}

pub fn redis_url() -> String {
    std::env::var("SCAI_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

pub fn nats_url() -> String {
    std::env::var("SCAI_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_string())
}

/// Path of a helper program: `$VAR` if set, else `name` on PATH or in `~/.cargo/bin`.
pub fn program(var: &str, name: &str) -> Option<std::path::PathBuf> {
    if let Ok(p) = std::env::var(var) {
        return Some(p.into());
    }
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(std::path::PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}
