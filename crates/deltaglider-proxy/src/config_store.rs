//! The config store at rest (`$DGP_DATA_DIR/deltaglider_config.db`): the admin-API IAM overlay
//! sealed with AES-256-GCM under a key derived from the bootstrap password hash, and the
//! private, crash-safe file writes it and the bootstrap hash file use.
//!
//! Upstream keeps the same data in an SQLCipher database keyed by the bootstrap hash; this
//! proxy keeps the property (unreadable without the hash, rewritten whole and atomically,
//! re-keyed when the password changes) without linking SQLCipher. See
//! docs/deltaglider-proxy.md, "Admin identity, password and backup".

use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};

/// File name of the store inside `DGP_DATA_DIR`.
pub const FILE: &str = "deltaglider_config.db";
/// The plaintext overlay of earlier versions, migrated into [`FILE`] on first start.
pub const LEGACY_FILE: &str = "iam.json";

/// Format tag, also authenticated as associated data: a file of another format or version
/// is never mistaken for a wrong key.
const MAGIC: &[u8; 8] = b"DGPCDB01";
const NONCE_LEN: usize = 12;

/// The 256-bit store key for a bootstrap bcrypt hash. The hash already embeds a random salt
/// and the bcrypt work factor; SHA-256 with a domain tag only turns it into key bytes.
pub fn key_for(bootstrap_hash: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"deltaglider-proxy config store v1\0");
    h.update(bootstrap_hash.trim().as_bytes());
    h.finalize().into()
}

/// Why sealed bytes could not be opened.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Not a store file of this format.
    Format,
    /// The authentication tag does not verify: another key (bootstrap hash) or tampering.
    WrongKey,
}

/// `MAGIC || nonce || AES-256-GCM(plaintext, aad = MAGIC)`.
pub fn seal(key: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.into());
    let nonce: [u8; NONCE_LEN] = rand::random();
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: MAGIC,
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + ct.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Inverse of [`seal`].
pub fn open(key: &[u8; 32], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
    if sealed.len() < MAGIC.len() + NONCE_LEN + 16 || &sealed[..MAGIC.len()] != MAGIC {
        return Err(OpenError::Format);
    }
    let (nonce, ct) = sealed[MAGIC.len()..].split_at(NONCE_LEN);
    Aes256Gcm::new(key.into())
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: MAGIC,
            },
        )
        .map_err(|_| OpenError::WrongKey)
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new file: a temp
/// file with mode 0600 beside it, fsync, rename, directory fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("store");
    let tmp = dir.join(format!(".{name}.tmp"));
    write_private(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Creates (or truncates) `path` with mode 0600 and fsyncs it.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_only_with_the_same_hash() {
        let k = key_for("$2b$04$abcdefghijklmnopqrstuuAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        let other = key_for("$2b$04$abcdefghijklmnopqrstuuBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB");
        let s = seal(&k, b"{\"users\":{}}");
        assert!(!s.windows(5).any(|w| w == b"users"));
        assert_eq!(open(&k, &s).unwrap(), b"{\"users\":{}}");
        assert_eq!(open(&other, &s), Err(OpenError::WrongKey));
        assert_eq!(open(&k, b"{\"users\":{}}"), Err(OpenError::Format));
        let mut t = s.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert_eq!(open(&k, &t), Err(OpenError::WrongKey));
    }
}
