//! The `/v1/stream` WebSocket and `/v1/sync` against a real embedded server with real
//! WebSocket clients: hello, ordering, ping timeout, duplicate connection, 4001, rate limit,
//! tenant isolation, reconnect catch-up, slow consumers.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn hello_then_events_in_position_order() {
    let s = Server::start(&[]).await;
    let alice = s.token("acme", "alice");
    let room = s.create_room(&alice, "general").await;
    let (mut ws, hello) = connect_hello(&s.ws_url(&alice)).await;
    assert_eq!(hello["tenant_id"], "tnt_acme");
    assert_eq!(hello["server_name"], "localhost");
    assert!(hello["session_id"].as_str().is_some_and(|x| !x.is_empty()));
    assert!(hello["ts"].as_str().is_some());

    // Concurrent senders: positions are assigned at commit, delivered in order.
    let mut tasks = Vec::new();
    let s = std::sync::Arc::new(s);
    for w in 0..4 {
        let s = s.clone();
        let (alice, room) = (alice.clone(), room.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..15 {
                ids.push(
                    s.send(&alice, &room, &format!("w{w} m{i}")).await["id"]
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
    let mut got = HashSet::new();
    let mut last = 0;
    while got.len() < sent.len() {
        let ev = next_event(&mut ws).await;
        let p = ev["stream_position"].as_u64().unwrap();
        assert!(p > last, "position {p} after {last}");
        last = p;
        assert_eq!(ev["tenant_id"], "tnt_acme");
        if ev["type"] == "swp.room.message" {
            assert_eq!(ev["room_id"], room.as_str());
            assert!(ev["origin_ts"].as_i64().is_some());
            got.insert(ev["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(got, sent);
    // Sync sees the same events in the same order, gap-free for a one-room tenant.
    let all = s.sync_all(&alice, 0).await;
    let positions: Vec<u64> = all
        .iter()
        .map(|e| e["stream_position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, (1..=positions.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn ping_timeout_closes_4003_but_answering_client_stays() {
    let s = Server::start(&[
        ("SCAIWAVE_WS_PING_INTERVAL", "100ms".into()),
        ("SCAIWAVE_WS_PONG_TIMEOUT", "300ms".into()),
    ])
    .await;
    let t1 = s.token("acme", "quiet");
    let t2 = s.token("acme", "lively");
    let (mut quiet, _) = connect_hello(&s.ws_url(&t1)).await;
    let (mut lively, _) = connect_hello(&s.ws_url(&t2)).await;
    // The lively client keeps reading (tungstenite answers every ping with a pong).
    let reader = tokio::spawn(async move {
        let until = tokio::time::Instant::now() + Duration::from_millis(1500);
        let mut pings = 0;
        while let Ok(Some(m)) = tokio::time::timeout_at(until, lively.next()).await {
            match m.unwrap() {
                Message::Ping(_) => pings += 1,
                Message::Close(f) => panic!("answering client was closed: {f:?}"),
                _ => {}
            }
        }
        (pings, lively)
    });
    // The quiet one does not read, so it sends no pongs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, reason) = expect_close(&mut quiet).await;
    assert_eq!((code, reason.as_str()), (4003, "ping_timeout"));
    let (pings, _lively) = reader.await.unwrap();
    assert!(
        pings >= 2,
        "server pinged the answering client {pings} times"
    );
    wait_log(&s, "ping_timeout").await;
}

#[tokio::test]
async fn second_connection_with_same_token_closes_the_older() {
    let s = Server::start(&[]).await;
    let t = s.token("acme", "alice");
    let room = s.create_room(&t, "r").await;
    let (mut old, _) = connect_hello(&s.ws_url(&t)).await;
    let (mut new, _) = connect_hello(&s.ws_url(&t)).await;
    let (code, reason) = expect_close(&mut old).await;
    assert_eq!((code, reason.as_str()), (4003, "duplicate_connection"));
    let sent = s.send(&t, &room, "still here").await;
    let ev = next_event(&mut new).await;
    assert_eq!(ev["id"], sent["id"]);
    // A different token of the same user is not a duplicate.
    let other = s.issuer.mint(&{
        let mut o = scai_auth::MintOptions::new("acme", "alice");
        o.ttl = Duration::from_secs(1800);
        o
    });
    let (_third, _) = connect_hello(&s.ws_url(&other)).await;
    s.send(&t, &room, "again").await;
    assert_eq!(next_event(&mut new).await["content"]["body"], "again");
    wait_log(&s, "duplicate_connection").await;
}

#[tokio::test]
async fn invalid_or_expired_token_closes_4001() {
    let s = Server::start(&[]).await;
    let mut ws = connect(&s.ws_url("not-a-jwt")).await;
    assert_eq!(
        expect_close(&mut ws).await,
        (4001, "SW_AUTH_INVALID_TOKEN".to_string())
    );
    let now = chrono::Utc::now().timestamp();
    let expired = s.issuer.sign(&json!({"iss": s.issuer.issuer(), "sub": "usr_a", "tenant_id": "tnt_acme", "exp": now - 3600, "iat": now - 7200, "scope": ""}));
    let mut ws = connect(&s.ws_url(&expired)).await;
    assert_eq!(expect_close(&mut ws).await.0, 4001);
    let foreign = scai_auth::EmbeddedIssuer::load_or_create(
        tempfile::tempdir().unwrap().path(),
        "scaiwave-embedded:localhost",
    )
    .unwrap();
    let mut ws = connect(&s.ws_url(&foreign.mint(&scai_auth::MintOptions::new("acme", "a")))).await;
    assert_eq!(expect_close(&mut ws).await.0, 4001);
    // The valid token of the same shape is accepted (the test can fail).
    connect_hello(&s.ws_url(&s.token("acme", "a"))).await;
    // HTTP answers with the envelope.
    let (status, v) = s.call("GET", "garbage", "/v1/sync?timeout=0", None).await;
    assert_eq!(status, 401);
    assert_eq!(v["error"]["code"], "SW_AUTH_INVALID_TOKEN");
    let (status, v) = s.call("GET", &expired, "/v1/sync?timeout=0", None).await;
    assert_eq!(status, 401);
    assert_eq!(v["error"]["code"], "SW_AUTH_EXPIRED_TOKEN");
}

#[tokio::test]
async fn rate_limited_events_never_enter_the_stream() {
    let s = Server::start(&[
        ("SCAIWAVE_RATE_LIMIT_PER_SEC", "0.01".into()),
        ("SCAIWAVE_RATE_LIMIT_BURST", "6".into()),
    ])
    .await;
    let alice = s.token("acme", "alice");
    let bob = s.token("acme", "bob");
    let room = s.create_room(&alice, "r").await; // 1 token
    s.join(&bob, &room).await;
    let (mut ws, _) = connect_hello(&s.ws_url(&bob)).await;
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..10 {
        let (st, v) = s
            .call(
                "POST",
                &alice,
                &format!("/v1/rooms/{room}/send"),
                Some(json!({"content": {"body": format!("m{i}")}})),
            )
            .await;
        match st {
            200 => accepted.push(v["data"]["id"].as_str().unwrap().to_string()),
            429 => {
                assert_eq!(v["error"]["code"], "SW_RATE_LIMIT_EXCEEDED");
                refused += 1;
            }
            other => panic!("unexpected {other} {v}"),
        }
    }
    assert_eq!(accepted.len(), 5);
    assert_eq!(refused, 5);
    // Bob (own bucket) sends a marker; everything before it on his socket is what got in.
    let marker = s.send(&bob, &room, "marker").await;
    let mut seen = Vec::new();
    loop {
        let ev = next_event(&mut ws).await;
        if ev["id"] == marker["id"] {
            break;
        }
        if ev["type"] == "swp.room.message" {
            seen.push(ev["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen, accepted);
    let msgs = s
        .sync_all(&bob, 0)
        .await
        .into_iter()
        .filter(|e| e["type"] == "swp.room.message")
        .count();
    assert_eq!(msgs, 6);
    // Client frames pass the same per-user limit: bob has 4 tokens left of 6.
    let mut replies = Vec::new();
    for n in 0..6 {
        ws.send(Message::text(
            json!({"type": "ping", "nonce": n}).to_string(),
        ))
        .await
        .unwrap();
        replies.push(next_json(&mut ws).await);
    }
    let pongs = replies.iter().filter(|r| r["type"] == "pong").count();
    let limited = replies
        .iter()
        .filter(|r| r["error"]["code"] == "SW_RATE_LIMIT_EXCEEDED")
        .count();
    assert_eq!((pongs, limited), (4, 2), "{replies:?}");
}

#[tokio::test]
async fn no_event_of_another_tenant_ever_arrives() {
    let s = Server::start(&[]).await;
    let a = s.token("acme", "alice");
    let b = s.token("globex", "bob");
    let room_a = s.create_room(&a, "acme-room").await;
    let room_b = s.create_room(&b, "globex-room").await;
    let (mut ws_b, hello) = connect_hello(&s.ws_url(&b)).await;
    assert_eq!(hello["tenant_id"], "tnt_globex");
    for i in 0..20 {
        s.send(&a, &room_a, &format!("secret {i}")).await;
    }
    // Another tenant cannot see or join the room, even knowing its id.
    let (st, v) = s
        .call("POST", &b, &format!("/v1/rooms/{room_a}/join"), None)
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("SW_ROOM_NOT_FOUND"))
    );
    let (st, _) = s
        .call("GET", &b, &format!("/v1/rooms/{room_a}/messages"), None)
        .await;
    assert_eq!(st, 404);
    let mine = s.send(&b, &room_b, "hello globex").await;
    loop {
        let ev = next_json(&mut ws_b).await;
        assert_eq!(ev["tenant_id"], "tnt_globex", "foreign event arrived: {ev}");
        if ev["id"] == mine["id"] {
            break;
        }
    }
    let synced = s.sync_all(&b, 0).await;
    assert!(synced.iter().all(|e| e["tenant_id"] == "tnt_globex"));
    assert!(synced.iter().any(|e| e["id"] == mine["id"]));
    // Tenant positions are independent.
    assert_eq!(mine["stream_position"], 2);
}

#[tokio::test]
async fn reconnect_with_last_position_loses_nothing_and_repeats_nothing() {
    let s = std::sync::Arc::new(Server::start(&[]).await);
    let alice = s.token("acme", "alice");
    let bob = s.token("acme", "bob");
    let room = s.create_room(&alice, "busy").await;
    s.join(&bob, &room).await;
    let total = 150;
    let writer = {
        let (s, alice, room) = (s.clone(), alice.clone(), room.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..total {
                ids.push(
                    s.send(&alice, &room, &format!("m{i}")).await["id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            ids
        })
    };
    let mut last = 0u64;
    let mut received: Vec<String> = Vec::new();
    let mut round = 0;
    while received.len() < total {
        round += 1;
        // 1. Bridge with sync since the last processed position.
        for ev in s.sync_all(&bob, last).await {
            let p = ev["stream_position"].as_u64().unwrap();
            assert!(p > last, "sync returned {p} not after {last}");
            last = p;
            if ev["type"] == "swp.room.message" {
                received.push(ev["id"].as_str().unwrap().to_string());
            }
        }
        if received.len() >= total {
            break;
        }
        // 2. Resume the stream from the same position; drop it abruptly after a few events.
        let url = format!("{}&since={last}", s.ws_url(&bob));
        let (mut ws, _) = connect_hello(&url).await;
        let mut n = 0;
        while received.len() < total && n < 20 {
            let ev = next_event(&mut ws).await;
            let p = ev["stream_position"].as_u64().unwrap();
            assert!(p > last, "stream repeated {p} (last {last})");
            last = p;
            if ev["type"] == "swp.room.message" {
                received.push(ev["id"].as_str().unwrap().to_string());
            }
            n += 1;
        }
        drop(ws);
    }
    let sent = writer.await.unwrap();
    assert!(round > 2, "the test should reconnect several times");
    assert_eq!(received, sent, "gap or duplicate across reconnects");
}

#[tokio::test]
async fn slow_consumer_does_not_stall_others_and_drops_are_counted_and_recoverable() {
    let s = Server::start(&[("SCAIWAVE_WS_QUEUE_CAPACITY", "8".into())]).await;
    let alice = s.token("acme", "alice");
    let slow_t = s.token("acme", "slow");
    let fast_t = s.token("acme", "fast");
    let room = s.create_room(&alice, "firehose").await;
    s.join(&slow_t, &room).await;
    s.join(&fast_t, &room).await;
    let (mut slow, _) = connect_hello(&s.ws_url(&slow_t)).await;
    let (mut fast, _) = connect_hello(&s.ws_url(&fast_t)).await;
    let big = "x".repeat(60 * 1024);
    let n = 300;
    let mut sent = Vec::new();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < n {
            let ev = next_event(&mut fast).await;
            if ev["type"] == "swp.room.message" {
                got.push(ev["id"].as_str().unwrap().to_string());
            }
        }
        (got, fast)
    });
    for i in 0..n {
        sent.push(
            s.send(&alice, &room, &format!("{i} {big}")).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // The fast reader got everything while the slow one read nothing.
    let (fast_got, _fast) = reader.await.unwrap();
    assert_eq!(fast_got, sent);
    let metrics = s.metrics().await;
    let dropped: f64 = metrics
        .lines()
        .find(|l| l.starts_with("scaiwave_ws_messages_dropped_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(dropped > 0.0, "expected drops:\n{metrics}");
    assert!(
        metrics.contains("scaiwave_ws_connections{tenant=\"tnt_acme\"} 2"),
        "{metrics}\n{}",
        s.proc.logs()
    );
    // What was dropped is recoverable: via sync, and the slow socket itself catches up from
    // the store, in order, without duplicates.
    let synced: Vec<String> = s
        .sync_all(&slow_t, 0)
        .await
        .into_iter()
        .filter(|e| e["type"] == "swp.room.message")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(synced, sent);
    let mut got = Vec::new();
    let mut last = 0;
    while got.len() < n {
        let ev = next_event(&mut slow).await;
        let p = ev["stream_position"].as_u64().unwrap();
        assert!(p > last);
        last = p;
        if ev["type"] == "swp.room.message" {
            got.push(ev["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(got, sent);
}

#[tokio::test]
async fn sync_long_poll_waits_then_returns_new_events() {
    let s = std::sync::Arc::new(Server::start(&[]).await);
    let alice = s.token("acme", "alice");
    let room = s.create_room(&alice, "r").await;
    let head = s.sync_all(&alice, 0).await.last().unwrap()["stream_position"]
        .as_u64()
        .unwrap();
    // Nothing new: an empty answer after the timeout, cursor unchanged.
    let (st, v) = s
        .call(
            "GET",
            &alice,
            &format!("/v1/sync?since={head}&timeout=200"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        v["data"],
        json!({"events": [], "next_cursor": head, "has_more": false})
    );
    // A waiting poll is woken by a send.
    let poll = {
        let (s, alice) = (s.clone(), alice.clone());
        tokio::spawn(async move {
            s.call(
                "GET",
                &alice,
                &format!("/v1/sync?since={head}&timeout=20000"),
                None,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = s.send(&alice, &room, "wake up").await;
    let (st, v) = poll.await.unwrap();
    assert_eq!(st, 200);
    let events = v["data"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], sent["id"]);
    assert_eq!(v["data"]["next_cursor"], sent["stream_position"]);
    // Limits are checked.
    let (st, v) = s.call("GET", &alice, "/v1/sync?limit=501", None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("SW_INVALID_REQUEST"))
    );
    // Paging with has_more.
    for i in 0..5 {
        s.send(&alice, &room, &format!("p{i}")).await;
    }
    let (_, v) = s
        .call("GET", &alice, "/v1/sync?since=0&limit=2&timeout=0", None)
        .await;
    assert_eq!(v["data"]["has_more"], true);
    assert_eq!(v["data"]["next_cursor"], 2);
    let all: Vec<Value> = s.sync_all(&alice, 0).await;
    assert_eq!(all.len(), 7);
}
