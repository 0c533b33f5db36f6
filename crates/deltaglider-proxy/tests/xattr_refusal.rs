//! The filesystem backend refuses to start on a data dir without user xattr support, logging
//! the guide's line. Uses a real `ramfs` mount (no user xattrs), so it needs root with mount
//! rights; elsewhere it prints why and skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Unmounts on drop (declared after the temp dir so it is dropped first).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_ramfs(at: &Path) -> Result<Mount, String> {
    let out = Command::new("mount")
        .args(["-t", "ramfs", "ramfs"])
        .arg(at)
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mount -t ramfs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let m = Mount(at.to_path_buf());
    // Make sure this kernel's ramfs really refuses user xattrs before relying on it.
    let probe = at.join("probe");
    std::fs::write(&probe, b"x").map_err(|e| e.to_string())?;
    if xattr::set(&probe, "user.dg.metadata", b"{}").is_ok() {
        return Err("this kernel's ramfs accepts user xattrs".into());
    }
    std::fs::remove_file(&probe).map_err(|e| e.to_string())?;
    Ok(m)
}

#[test]
fn fs_backend_refuses_data_dir_without_user_xattrs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let _mount = match mount_ramfs(&data) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipping fs_backend_refuses_data_dir_without_user_xattrs: {why}");
            return;
        }
    };
    let port = scai_testkit::free_port();
    let bin = std::env::var_os("DGP_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_deltaglider-proxy")));
    let mut child = Command::new(bin)
        .env("DGP_DATA_DIR", &data)
        .env("DGP_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("DGP_AUTHENTICATION", "none")
        .env("DGP_CONFIG", dir.path().join("none.yaml"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the proxy started on a data dir without xattr support");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!status.success(), "exit status {status}: {logs}");
    assert!(
        logs.contains("Data directory does not support extended attributes"),
        "{logs}"
    );
    // Nothing was served and no object store was laid out beyond the probe's directory.
    assert!(!data.join("multipart").exists(), "{logs}");
}
