//! The bootstrap (admin) password: where its bcrypt hash comes from at start-up
//! (`DGP_BOOTSTRAP_PASSWORD_HASH` / `DGP_ADMIN_PASSWORD_HASH`, else the hash file
//! `$DGP_DATA_DIR/.deltaglider_bootstrap_hash`, else a password generated on first run), the
//! runtime-mutable current hash that login checks, and `--set-bootstrap-password`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use parking_lot::RwLock;

use crate::config::Config;
use crate::config_store;
use crate::error::ProxyError;

/// File name of the persisted hash inside `DGP_DATA_DIR`.
pub const HASH_FILE: &str = ".deltaglider_bootstrap_hash";

/// Where the hash in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Env,
    File,
    Generated,
}

/// The current bootstrap hash. Changed at runtime by `PUT /_/api/admin/password`.
pub struct Bootstrap {
    hash: RwLock<String>,
    pub file: PathBuf,
    pub source: Source,
}

impl Bootstrap {
    /// Resolves the hash at start-up, generating (and persisting) one on first run.
    pub fn load(cfg: &Config) -> Result<Bootstrap, ProxyError> {
        let file = cfg.data_dir.join(HASH_FILE);
        if let Some(h) = &cfg.bootstrap_password_hash {
            let hash = normalize(h);
            check_hash(&hash, "DGP_BOOTSTRAP_PASSWORD_HASH")?;
            return Ok(Bootstrap::new(hash, file, Source::Env));
        }
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let hash = normalize(text.trim());
                check_hash(&hash, &file.display().to_string())?;
                return Ok(Bootstrap::new(hash, file, Source::File));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ProxyError::Startup(format!("{}: {e}", file.display()))),
        }
        let password = generate_password();
        let hash = hash_password(&password)?;
        config_store::write_atomic(&file, hash.as_bytes())
            .map_err(|e| ProxyError::Startup(format!("{}: {e}", file.display())))?;
        // The plaintext goes to a person at a terminal only, never into collected logs.
        if std::io::stderr().is_terminal() {
            eprintln!(
                "\n  DeltaGlider Proxy generated an admin (bootstrap) password: {password}\n  \
                 Its bcrypt hash is saved in {}. This is the only time it is shown.\n",
                file.display()
            );
        } else {
            tracing::warn!(
                path = %file.display(),
                "generated a bootstrap password on first run; its plaintext is not shown because stderr is not a terminal. \
                 Set your own with `deltaglider-proxy --set-bootstrap-password` (reads it from stdin) \
                 or DGP_BOOTSTRAP_PASSWORD_HASH=<bcrypt hash>"
            );
        }
        Ok(Bootstrap::new(hash, file, Source::Generated))
    }

    pub fn new(hash: String, file: PathBuf, source: Source) -> Bootstrap {
        Bootstrap {
            hash: RwLock::new(hash),
            file,
            source,
        }
    }

    pub fn hash(&self) -> String {
        self.hash.read().clone()
    }

    pub fn set_hash(&self, hash: String) {
        *self.hash.write() = hash;
    }

    /// Checks `password` against the current hash (bcrypt: run it off the async workers).
    pub async fn verify(&self, password: String) -> bool {
        let hash = self.hash();
        tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false)
    }
}

/// Accepts the hash raw (`$2…`) or base64-encoded.
pub fn normalize(hash: &str) -> String {
    let hash = hash.trim();
    if hash.starts_with("$2") {
        return hash.to_string();
    }
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(hash)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| hash.to_string())
}

/// The start-up check of a hash (also applied to a backup's hash before it is adopted, so an
/// adopted hash can never stop the next start).
pub fn check_hash(hash: &str, from: &str) -> Result<(), ProxyError> {
    // What `bcrypt::verify` checks before it compares (prefix, cost range, salt and digest
    // encoding) without paying the hash's own cost, which every start would: the parts are
    // re-run at the cheapest cost (4) and only an error counts.
    let usable = hash.parse::<bcrypt::HashParts>().is_ok_and(|p| {
        (4..=31).contains(&p.get_cost()) && {
            // `$2b$NN$` is 7 bytes; salt and digest follow.
            let full = p.format_for_version(bcrypt::Version::TwoB);
            bcrypt::verify("", &format!("$2b$04${}", &full[7..])).is_ok()
        }
    });
    if !usable {
        return Err(ProxyError::Config(format!(
            "{from}: not a bcrypt hash (raw `$2…` or base64 of one)"
        )));
    }
    Ok(())
}

/// 24 characters from an unambiguous alphabet (~137 bits).
fn generate_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    (0..24)
        .map(|_| ALPHABET[rand::random::<u32>() as usize % ALPHABET.len()] as char)
        .collect()
}

/// Hashes a new password (bcrypt default cost).
pub fn hash_password(password: &str) -> Result<String, ProxyError> {
    bcrypt::hash(password, bcrypt::DEFAULT_COST)
        .map_err(|e| ProxyError::Internal(format!("bcrypt: {e}")))
}

/// `deltaglider-proxy --set-bootstrap-password`: reads the new password from stdin (first
/// line), stores its hash in the hash file and wipes the config store, which was sealed under
/// the old hash and could not be opened any more. Returns what was done, for the operator.
pub fn set_from_stdin(data_dir: &Path) -> Result<String, ProxyError> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| ProxyError::Config(format!("stdin: {e}")))?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(ProxyError::Config(
            "--set-bootstrap-password: empty password on stdin".into(),
        ));
    }
    let hash = hash_password(password)?;
    let file = data_dir.join(HASH_FILE);
    config_store::write_atomic(&file, hash.as_bytes())
        .map_err(|e| ProxyError::Startup(format!("{}: {e}", file.display())))?;
    let mut wiped = Vec::new();
    for name in [config_store::FILE, config_store::LEGACY_FILE] {
        let p = data_dir.join(name);
        match std::fs::remove_file(&p) {
            Ok(()) => wiped.push(p.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ProxyError::Startup(format!("{}: {e}", p.display()))),
        }
    }
    let mut msg = format!("bootstrap password hash written to {}", file.display());
    if !wiped.is_empty() {
        msg.push_str(&format!("; config store wiped ({})", wiped.join(", ")));
    }
    if std::env::var_os("DGP_BOOTSTRAP_PASSWORD_HASH").is_some()
        || std::env::var_os("DGP_ADMIN_PASSWORD_HASH").is_some()
    {
        msg.push_str(
            "; note: DGP_BOOTSTRAP_PASSWORD_HASH is set and wins over the file: unset it or set it to the new hash",
        );
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_hash_takes_any_usable_cost_and_refuses_broken_hashes() {
        let h = bcrypt::hash("pw", 4).unwrap();
        assert!(check_hash(&h, "t").is_ok());
        // A cost-12 hash is checked without running cost 12.
        let c12 = format!("$2b$12${}", &h[7..]);
        assert!(check_hash(&c12, "t").is_ok());
        for bad in [
            "nope".to_string(),
            format!("$2b$03${}", &h[7..]),
            format!("$2b$32${}", &h[7..]),
            format!("$2b$04${}{}", "!".repeat(22), &h[29..]),
            format!("$2q$04${}", &h[7..]),
            h[..h.len() - 1].to_string(),
        ] {
            let e = check_hash(&bad, "DGP_X").unwrap_err().to_string();
            assert!(e.contains("DGP_X: not a bcrypt hash"), "{bad}: {e}");
        }
    }
}
