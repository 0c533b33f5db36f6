//! Spawning a product binary for a test: free port, environment, log capture, SIGKILL and
//! restart on the same data directory, and a kill on drop so no test leaks a server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Poll `url` until it answers 200 or `timeout` passes.
pub async fn wait_http_ok(url: &str, timeout: Duration) -> Result<(), String> {
    let client = reqwest::Client::new();
    let start = Instant::now();
    let mut last = String::from("no attempt");
    while start.elapsed() < timeout {
        match client.get(url).timeout(Duration::from_secs(2)).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{url} not ready after {timeout:?}: {last}"))
}

/// A running server process. Killed (SIGKILL) when dropped.
pub struct ServerProcess {
    bin: PathBuf,
    args: Vec<String>,
    envs: BTreeMap<String, String>,
    log: PathBuf,
    child: Option<Child>,
}

impl ServerProcess {
    /// Spawn `bin args…` with `envs` added to the environment. Output goes to a log file whose
    /// path [`ServerProcess::log_path`] gives (printed on failure by [`ServerProcess::logs`]).
    pub fn start(bin: impl AsRef<Path>, args: &[&str], envs: &[(&str, String)]) -> Self {
        let log = std::env::temp_dir().join(format!(
            "scai-test-{}-{}.log",
            bin.as_ref()
                .file_name()
                .and_then(|s| s.to_str())
                .unwrap_or("server"),
            rand::random::<u64>()
        ));
        let mut p = ServerProcess {
            bin: bin.as_ref().to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            log,
            child: None,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open server log");
        let err = log.try_clone().expect("clone log handle");
        let child = Command::new(&self.bin)
            .args(&self.args)
            .envs(&self.envs)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn env(&self, key: &str) -> Option<&str> {
        self.envs.get(key).map(String::as_str)
    }

    /// SIGKILL: no shutdown hooks run, exactly like a crash or an OOM kill.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait up to `timeout` for a graceful exit, then SIGKILL.
    pub fn terminate(&mut self, timeout: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let start = Instant::now();
            while start.elapsed() < timeout {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the same command again (after [`ServerProcess::kill9`]), same env and data.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The server's output so far (for assertion messages).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
