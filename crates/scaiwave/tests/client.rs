//! The reference client (`scaiwave client`) survives a server crash: it reconnects with the
//! documented backoff, catches up through /v1/sync and the stream's `since`, prints every
//! event exactly once in position order, and persists `last_stream_position`.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn reference_client_reconnects_after_server_crash_without_gap_or_duplicate() {
    let mut s = Server::start(&[]).await;
    let alice = s.token("acme", "alice");
    let room = s.create_room(&alice, "r").await; // position 1: alice's join
    let state = s.dir.path().join("client-state.json");
    let total = 1 + 40;
    let mut child = tokio::process::Command::new(bin())
        .args(["client", "--server", &s.base, "--token", &alice, "--state"])
        .arg(&state)
        .args(["--max-events", &total.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for i in 0..20 {
        s.send(&alice, &room, &format!("before {i}")).await;
    }
    // Once the client has processed everything so far, crash the server and bring it back
    // on the same data and port.
    let until = tokio::time::Instant::now() + WAIT;
    while std::fs::read_to_string(&state)
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["last_stream_position"].as_u64())
        != Some(21)
    {
        assert!(
            tokio::time::Instant::now() < until,
            "client did not catch up before the crash"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.proc.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.proc.restart();
    scai_testkit::wait_http_ok(&format!("{}/health", s.base), Duration::from_secs(30))
        .await
        .unwrap();
    for i in 0..20 {
        s.send(&alice, &room, &format!("after {i}")).await;
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("client did not finish")
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert!(status.success(), "client failed: {err}");
    let positions: Vec<u64> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["stream_position"].as_u64())
        .collect();
    assert_eq!(
        positions,
        (1..=total as u64).collect::<Vec<_>>(),
        "stderr: {err}"
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["last_stream_position"], total as u64);
}
