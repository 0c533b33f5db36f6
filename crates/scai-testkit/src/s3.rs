//! A real S3-compatible server for tests: `s3s-fs` (crates.io, installed by `.ci/run`) on a
//! free loopback port over a temporary directory, where each bucket is a folder.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::ServerProcess;

pub const ACCESS_KEY: &str = "scai-test-ak";
pub const SECRET_KEY: &str = "scai-test-sk-0123456789";

pub struct S3Server {
    process: ServerProcess,
    port: u16,
    root: tempfile::TempDir,
}

impl S3Server {
    /// Start s3s-fs (`$SCAI_TEST_S3S_FS`, or `s3s-fs` on PATH or in `~/.cargo/bin`).
    pub async fn start() -> Result<Self, String> {
        let bin = crate::services::program("SCAI_TEST_S3S_FS", "s3s-fs").ok_or_else(|| {
            "s3s-fs not found: install it with `cargo install s3s-fs@0.14.1 --features binary --locked` (done by .ci/run)"
                .to_string()
        })?;
        let root = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = crate::free_port();
        let root_str = root.path().to_string_lossy().to_string();
        let port_str = port.to_string();
        let process = ServerProcess::start(
            &bin,
            &[
                "--host",
                "127.0.0.1",
                "--port",
                &port_str,
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET_KEY,
                &root_str,
            ],
            &[],
        );
        let s = S3Server {
            process,
            port,
            root,
        };
        s.wait_listening(Duration::from_secs(20))?;
        Ok(s)
    }

    fn wait_listening(&self, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(format!(
            "s3s-fs did not listen on {}: {}",
            self.port,
            self.process.logs()
        ))
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the buckets (one folder each).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Create a bucket (s3s-fs maps it to a folder).
    pub fn create_bucket(&self, name: &str) -> std::io::Result<PathBuf> {
        let p = self.root.path().join(name);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }

    /// Stop the server (to test a backend outage); [`S3Server::resume`] starts it again.
    pub fn stop(&mut self) {
        self.process.kill9();
    }

    pub fn resume(&mut self) -> Result<(), String> {
        self.process.restart();
        self.wait_listening(Duration::from_secs(20))
    }
}
