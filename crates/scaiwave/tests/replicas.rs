//! Production configuration: two `scaiwave api` processes on one MariaDB database with NATS
//! JetStream fan-out. A message sent through one replica arrives on sockets of the other;
//! concurrent writes through both get gap-free, strictly increasing positions.
//! Needs MariaDB (127.0.0.1:3306) and NATS with JetStream (127.0.0.1:4222); skipped only
//! with SCAI_TEST_SKIP_SERVICES=1.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;

use common::*;
use scai_testkit::mariadb::TempDatabase;
use scai_testkit::services;

async fn cluster() -> (TempDatabase, Server, Server) {
    cluster_with(Vec::new()).await
}

/// Two replicas; `extra` env vars go to both.
async fn cluster_with(extra: Vec<(&'static str, String)>) -> (TempDatabase, Server, Server) {
    let db = TempDatabase::create().await.expect("MariaDB");
    let dir = tempfile::tempdir().unwrap();
    let envs = |dir: &std::path::Path| -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("SCAIWAVE_DATABASE_URL", db.url()),
            ("SCAIWAVE_NATS_URL", services::nats_url()),
            ("SCAIWAVE_EMBEDDED_AUTH", "true".into()),
            ("SCAIWAVE_DATA_DIR", dir.display().to_string()),
        ];
        v.extend(extra.iter().cloned());
        v
    };
    let status = Command::new(bin())
        .arg("migrate")
        .envs(envs(dir.path()))
        .status()
        .unwrap();
    assert!(status.success(), "scaiwave migrate failed");
    // Both replicas trust the same embedded issuer key (shared data dir for the key only).
    scai_auth::EmbeddedIssuer::load_or_create(dir.path(), "scaiwave-embedded:localhost").unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("jwt-signing-key.pem"),
        dir2.path().join("jwt-signing-key.pem"),
    )
    .ok();
    let e1 = envs(dir.path());
    let a = Server::start_in(
        dir,
        "api",
        &e1.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>(),
    )
    .await;
    let e2 = envs(dir2.path());
    let b = Server::start_in(
        dir2,
        "api",
        &e2.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>(),
    )
    .await;
    (db, a, b)
}

#[tokio::test]
async fn message_sent_through_one_replica_arrives_on_the_other() {
    if services::skip("message_sent_through_one_replica_arrives_on_the_other") {
        return;
    }
    let (_db, a, b) = cluster().await;
    let tenant = format!("rep{}", rand_suffix());
    let alice = a.token(&tenant, "alice");
    let bob = b.token(&tenant, "bob");
    let room = a.create_room(&alice, "cross").await;
    b.join(&bob, &room).await;
    let (mut ws_b, hello) = connect_hello(&b.ws_url(&bob)).await;
    assert_eq!(hello["tenant_id"], format!("tnt_{tenant}"));
    let (mut ws_a, _) = connect_hello(&a.ws_url(&alice)).await;
    let sent = a.send(&alice, &room, "over the wire").await;
    loop {
        let ev = next_event(&mut ws_b).await;
        if ev["id"] == sent["id"] {
            assert_eq!(ev["content"]["body"], "over the wire");
            break;
        }
    }
    // And back: sent on B, seen on A's socket.
    let back = b.send(&bob, &room, "and back").await;
    loop {
        let ev = next_event(&mut ws_a).await;
        if ev["id"] == back["id"] {
            break;
        }
    }
    // Long-poll on A is woken by a write on B.
    let head = back["stream_position"].as_u64().unwrap();
    let poll = {
        let url = format!("{}/v1/sync?since={head}&timeout=20000", a.base);
        let alice = alice.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(alice)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let third = b.send(&bob, &room, "wake A").await;
    let v = poll.await.unwrap();
    assert_eq!(v["data"]["events"][0]["id"], third["id"]);
}

fn rand_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_string()
}

#[tokio::test]
async fn concurrent_writes_on_two_replicas_get_gap_free_ordered_positions() {
    if services::skip("concurrent_writes_on_two_replicas_get_gap_free_ordered_positions") {
        return;
    }
    let (_db, a, b) = cluster().await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let tenant = format!("ord{}", rand_suffix());
    let alice = a.token(&tenant, "alice");
    let bob = b.token(&tenant, "bob");
    let room = a.create_room(&alice, "race").await;
    b.join(&bob, &room).await;
    let (mut ws_a, _) = connect_hello(&a.ws_url(&alice)).await;
    let (mut ws_b, _) = connect_hello(&b.ws_url(&bob)).await;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (srv, tok, room) = if w % 2 == 0 {
            (a.clone(), alice.clone(), room.clone())
        } else {
            (b.clone(), bob.clone(), room.clone())
        };
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                ids.push(
                    srv.send(&tok, &room, &format!("w{w} {i}")).await["id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            ids
        }));
    }
    let mut sent = HashSet::new();
    for t in tasks {
        sent.extend(t.await.unwrap());
    }
    // Both sockets see every message, positions strictly increasing and, for this one-room
    // tenant, contiguous: nothing skipped, nothing repeated, in commit order.
    for ws in [&mut ws_a, &mut ws_b] {
        let mut got = HashSet::new();
        let mut last: Option<u64> = None;
        while got.len() < sent.len() {
            let ev = next_event(ws).await;
            let p = ev["stream_position"].as_u64().unwrap();
            if let Some(l) = last {
                assert_eq!(p, l + 1, "gap or reorder: {p} after {l}");
            }
            last = Some(p);
            if ev["type"] == "swp.room.message" {
                got.insert(ev["id"].as_str().unwrap().to_string());
            }
        }
        assert_eq!(got, sent);
    }
    let all = a.sync_all(&alice, 0).await;
    let positions: Vec<u64> = all
        .iter()
        .map(|e| e["stream_position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, (1..=positions.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        all.iter()
            .filter(|e| e["type"] == "swp.room.message")
            .count(),
        100
    );
}

#[tokio::test]
async fn duplicate_connection_is_closed_across_replicas() {
    if services::skip("duplicate_connection_is_closed_across_replicas") {
        return;
    }
    let (_db, a, b) = cluster().await;
    let tenant = format!("dup{}", rand_suffix());
    let alice = a.token(&tenant, "alice");
    let room = a.create_room(&alice, "dup").await;
    let (mut on_a, _) = connect_hello(&a.ws_url(&alice)).await;
    let (mut on_b, _) = connect_hello(&b.ws_url(&alice)).await;
    let (code, reason) = expect_close(&mut on_a).await;
    assert_eq!((code, reason.as_str()), (4003, "duplicate_connection"));
    let sent = a.send(&alice, &room, "to the survivor").await;
    assert_eq!(next_event(&mut on_b).await["id"], sent["id"]);
}

#[tokio::test]
async fn rate_limit_is_shared_across_replicas_through_redis() {
    if services::skip("rate_limit_is_shared_across_replicas_through_redis") {
        return;
    }
    // A budget of 6 events per user per 600 s window, counted in Redis under a prefix of
    // this run only.
    let (_db, a, b) = cluster_with(vec![
        ("SCAIWAVE_REDIS_URL", services::redis_url()),
        (
            "SCAIWAVE_REDIS_KEY_PREFIX",
            format!("scaiwave-test:{}", rand_suffix()),
        ),
        ("SCAIWAVE_RATE_LIMIT_PER_SEC", "0.01".into()),
        ("SCAIWAVE_RATE_LIMIT_BURST", "6".into()),
    ])
    .await;
    let tenant = format!("rl{}", rand_suffix());
    let alice = a.token(&tenant, "alice");
    // Creating the room takes 1 of alice's 6.
    let room = a.create_room(&alice, "limited").await;
    let mut accepted = [0u32; 2];
    let mut refused = [0u32; 2];
    for i in 0..10 {
        let (idx, server) = if i % 2 == 0 { (0, &a) } else { (1, &b) };
        let (status, v) = server
            .call(
                "POST",
                &alice,
                &format!("/v1/rooms/{room}/send"),
                Some(serde_json::json!({"content": {"msgtype": "swp.text", "body": format!("m{i}")}})),
            )
            .await;
        match status {
            200 => accepted[idx] += 1,
            429 => {
                assert!(v.to_string().contains("SW_RATE_LIMIT_EXCEEDED"), "{v}");
                refused[idx] += 1;
            }
            other => panic!("unexpected status {other}: {v}"),
        }
    }
    // One budget for both replicas: 5 sends in all (per-replica buckets would admit 10).
    assert_eq!(accepted[0] + accepted[1], 5, "accepted {accepted:?}");
    assert!(accepted[0] > 0 && accepted[1] > 0, "accepted {accepted:?}");
    assert!(refused[0] > 0 && refused[1] > 0, "refused {refused:?}");
    // Another user still has a budget of their own.
    let bob = b.token(&tenant, "bob");
    b.join(&bob, &room).await;
    b.send(&bob, &room, "bob is not limited by alice").await;
}

#[tokio::test]
async fn presence_sees_sockets_held_by_the_other_replica() {
    if services::skip("presence_sees_sockets_held_by_the_other_replica") {
        return;
    }
    let (_db, a, b) = cluster_with(vec![
        ("SCAIWAVE_REDIS_URL", services::redis_url()),
        (
            "SCAIWAVE_REDIS_KEY_PREFIX",
            format!("scaiwave-test:{}", rand_suffix()),
        ),
    ])
    .await;
    let tenant = format!("pr{}", rand_suffix());
    let alice = b.token(&tenant, "alice");
    let bob = a.token(&tenant, "bob");
    assert_eq!(presence_of(&a, &bob).await.0, "offline");
    // Alice's socket is on replica b; replica a must see her online.
    let (ws, _) = connect_hello(&b.ws_url(&alice)).await;
    assert_eq!(
        presence_of(&a, &bob).await,
        ("online".to_string(), "offline".to_string())
    );
    drop(ws);
    // Her last socket closed: a sees her offline once b has noticed.
    let mut seen = String::new();
    for _ in 0..200 {
        seen = presence_of(&a, &bob).await.0;
        if seen == "offline" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen, "offline");
}

/// (alice, carol) as `GET /v1/presence` on `srv` reports them.
async fn presence_of(srv: &Server, tok: &str) -> (String, String) {
    let (s, v) = srv
        .call("GET", tok, "/v1/presence?ids=usr_alice,usr_carol", None)
        .await;
    assert_eq!(s, 200, "{v}");
    (
        v["data"]["usr_alice"].as_str().unwrap_or("").to_string(),
        v["data"]["usr_carol"].as_str().unwrap_or("").to_string(),
    )
}
