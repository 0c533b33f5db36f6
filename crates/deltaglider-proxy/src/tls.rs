//! Built-in TLS (`DGP_TLS_ENABLED`): owns the server certificate and the rustls server
//! config. The certificate comes from the operator's PEM files (`DGP_TLS_CERT` /
//! `DGP_TLS_KEY`, or `advanced.tls.cert_path` / `key_path`), or, when neither is given, is a
//! self-signed one generated at start and kept under `DGP_DATA_DIR/tls/` so that clients
//! which pinned it keep working across restarts. The listener itself stays in `lib.rs`
//! (one server loop for plain HTTP and TLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ProxyError;

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsSource {
    /// Operator-supplied PEM files.
    Files { cert: PathBuf, key: PathBuf },
    /// Self-signed, generated on first start into this directory and reused afterwards.
    SelfSigned { dir: PathBuf },
}

/// File names of the generated pair under `DGP_DATA_DIR/tls/`.
pub const SELF_SIGNED_CERT: &str = "self-signed-cert.pem";
pub const SELF_SIGNED_KEY: &str = "self-signed-key.pem";

fn tls_err(what: &str, e: impl std::fmt::Display) -> ProxyError {
    ProxyError::Startup(format!("TLS: {what}: {e}"))
}

/// Names the self-signed certificate is valid for: loopback always, plus the listen host
/// when it is a concrete name or address (not the wildcard).
fn self_signed_names(listen_addr: &str) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let host = listen_addr
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(listen_addr)
        .trim_start_matches('[')
        .trim_end_matches(']');
    if !host.is_empty() && host != "0.0.0.0" && host != "::" && !names.iter().any(|n| n == host) {
        names.push(host.to_string());
    }
    names
}

/// Generates (first start) or reuses the self-signed pair; returns the PEM paths.
fn ensure_self_signed(dir: &Path, listen_addr: &str) -> Result<(PathBuf, PathBuf), ProxyError> {
    let cert = dir.join(SELF_SIGNED_CERT);
    let key = dir.join(SELF_SIGNED_KEY);
    if cert.exists() && key.exists() {
        tracing::info!(cert = %cert.display(), "TLS: reusing the self-signed certificate generated earlier");
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|e| tls_err(&dir.display().to_string(), e))?;
    let names = self_signed_names(listen_addr);
    let ck = rcgen::generate_simple_self_signed(names.clone())
        .map_err(|e| tls_err("generating a self-signed certificate", e))?;
    // The key is written first and owner-only; the cert (public) last, so a crash in
    // between leaves no cert without its key (the next start regenerates both).
    write_private(&key, ck.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert, ck.cert.pem()).map_err(|e| tls_err(&cert.display().to_string(), e))?;
    tracing::warn!(
        cert = %cert.display(),
        names = ?names,
        "TLS: no DGP_TLS_CERT / DGP_TLS_KEY given: generated a self-signed certificate (clients must trust this file; use a real certificate in production)"
    );
    Ok((cert, key))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ProxyError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| tls_err(&path.display().to_string(), e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| tls_err(&path.display().to_string(), e))
}

/// Builds the rustls server config (aws-lc-rs provider, TLS 1.2 and 1.3, ALPN h2 and
/// http/1.1) for the given source.
pub fn server_config(
    source: &TlsSource,
    listen_addr: &str,
) -> Result<Arc<rustls::ServerConfig>, ProxyError> {
    let (cert_path, key_path) = match source {
        TlsSource::Files { cert, key } => (cert.clone(), key.clone()),
        TlsSource::SelfSigned { dir } => ensure_self_signed(dir, listen_addr)?,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| tls_err(&format!("DGP_TLS_CERT {}", cert_path.display()), e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(&format!("DGP_TLS_CERT {}", cert_path.display()), e))?;
    if certs.is_empty() {
        return Err(tls_err(
            &format!("DGP_TLS_CERT {}", cert_path.display()),
            "no certificate in the file",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| tls_err(&format!("DGP_TLS_KEY {}", key_path.display()), e))?;
    // An explicit provider: several crates in the build enable both rustls backends, and
    // the process-wide default would then be ambiguous.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("protocol versions", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("certificate and key do not form a usable pair", e))?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tracing::info!(cert = %cert_path.display(), "TLS enabled");
    Ok(Arc::new(sc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_names_cover_loopback_and_a_concrete_listen_host() {
        assert_eq!(
            self_signed_names("0.0.0.0:9000"),
            ["localhost", "127.0.0.1", "::1"]
        );
        assert!(self_signed_names("10.1.2.3:9443").contains(&"10.1.2.3".to_string()));
        assert!(self_signed_names("dgp.example.com:443").contains(&"dgp.example.com".to_string()));
        assert!(self_signed_names("[fd00::1]:443").contains(&"fd00::1".to_string()));
    }
}
