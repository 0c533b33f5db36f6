//! Rooms, membership and messages over the real HTTP API (embedded server), with the
//! resulting events checked on real WebSocket clients.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn membership_lifecycle_and_power_levels() {
    let s = Server::start(&[]).await;
    let (alice, bob, carol) = (
        s.token("acme", "alice"),
        s.token("acme", "bob"),
        s.token("acme", "carol"),
    );
    // Provision bob and carol (first sight).
    for t in [&bob, &carol] {
        let (st, _) = s.call("POST", t, "/v1/auth/register", None).await;
        assert_eq!(st, 200);
    }
    let (st, v) = s
        .call(
            "POST",
            &alice,
            "/v1/rooms",
            Some(json!({"room_type": "group", "name": "team", "topic": "plans"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let room = v["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(v["data"]["room_type"], "group");
    // A group room needs an invitation.
    let (st, v) = s
        .call("POST", &bob, &format!("/v1/rooms/{room}/join"), None)
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("SW_ROOM_FORBIDDEN"))
    );
    let (mut ws_bob, _) = connect_hello(&s.ws_url(&bob)).await;
    let (st, _) = s
        .call(
            "POST",
            &alice,
            &format!("/v1/rooms/{room}/invite"),
            Some(json!({"participant_id": "usr_bob"})),
        )
        .await;
    assert_eq!(st, 200);
    let inv = next_event(&mut ws_bob).await;
    assert_eq!(
        (
            inv["type"].as_str(),
            inv["membership"].as_str(),
            inv["participant_id"].as_str()
        ),
        (Some("swp.room.member"), Some("invite"), Some("usr_bob"))
    );
    s.join(&bob, &room).await;
    assert_eq!(next_event(&mut ws_bob).await["membership"], "join");
    // Members and power levels.
    let (_, v) = s
        .call("GET", &bob, &format!("/v1/rooms/{room}/members"), None)
        .await;
    let members = v["data"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    let power = |id: &str| {
        members.iter().find(|m| m["participant_id"] == id).unwrap()["power_level"]
            .as_i64()
            .unwrap()
    };
    assert_eq!((power("usr_alice"), power("usr_bob")), (100, 0));
    // Bob (power 0) cannot kick, rename or set power.
    s.call(
        "POST",
        &alice,
        &format!("/v1/rooms/{room}/invite"),
        Some(json!({"participant_id": "usr_carol"})),
    )
    .await;
    s.join(&carol, &room).await;
    let (st, v) = s
        .call(
            "POST",
            &bob,
            &format!("/v1/rooms/{room}/kick"),
            Some(json!({"participant_id": "usr_carol"})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("SW_ROOM_FORBIDDEN"))
    );
    let (st, _) = s
        .call(
            "PUT",
            &bob,
            &format!("/v1/rooms/{room}/name"),
            Some(json!({"name": "mine"})),
        )
        .await;
    assert_eq!(st, 403);
    // Alice renames; the event reaches bob.
    let (st, _) = s
        .call(
            "PUT",
            &alice,
            &format!("/v1/rooms/{room}/name"),
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(st, 200);
    loop {
        let ev = next_event(&mut ws_bob).await;
        if ev["type"] == "swp.room.name" {
            assert_eq!(ev["name"], "renamed");
            break;
        }
    }
    let (st, _) = s
        .call(
            "PUT",
            &alice,
            &format!("/v1/rooms/{room}/topic"),
            Some(json!({"topic": "new topic"})),
        )
        .await;
    assert_eq!(st, 200);
    let (_, v) = s
        .call("GET", &bob, &format!("/v1/rooms/{room}"), None)
        .await;
    assert_eq!(
        (
            v["data"]["name"].as_str(),
            v["data"]["topic"].as_str(),
            v["data"]["member_count"].as_i64()
        ),
        (Some("renamed"), Some("new topic"), Some(3))
    );
    // Promote bob to 50: now he may kick carol.
    let (st, _) = s
        .call(
            "PUT",
            &alice,
            &format!("/v1/rooms/{room}/power_levels"),
            Some(json!({"participant_id": "usr_bob", "power_level": 50})),
        )
        .await;
    assert_eq!(st, 200);
    let (st, v) = s
        .call(
            "POST",
            &bob,
            &format!("/v1/rooms/{room}/kick"),
            Some(json!({"participant_id": "usr_carol", "reason": "spam"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = s
        .call(
            "POST",
            &carol,
            &format!("/v1/rooms/{room}/send"),
            Some(json!({"content": {"body": "x"}})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("SW_NOT_MEMBER"))
    );
    // Ban: carol cannot come back even when invited.
    let (st, _) = s
        .call(
            "POST",
            &alice,
            &format!("/v1/rooms/{room}/ban"),
            Some(json!({"participant_id": "usr_carol"})),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .call("POST", &carol, &format!("/v1/rooms/{room}/join"), None)
        .await;
    assert_eq!(st, 403);
    // After leaving, carol no longer receives the room's new events (sync stops at her exit).
    let after = s.send(&alice, &room, "after carol left").await;
    let carol_sees = s.sync_all(&carol, 0).await;
    assert!(carol_sees.iter().all(|e| e["id"] != after["id"]));
    assert!(carol_sees.iter().any(|e| e["membership"] == "ban"));
    // Leave.
    let (st, _) = s
        .call("POST", &bob, &format!("/v1/rooms/{room}/leave"), None)
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .call("GET", &bob, &format!("/v1/rooms/{room}/members"), None)
        .await;
    assert_eq!(st, 403);
}

#[tokio::test]
async fn direct_and_public_rooms_and_directory() {
    let s = Server::start(&[]).await;
    let (alice, bob) = (s.token("acme", "alice"), s.token("acme", "bob"));
    s.call("POST", &bob, "/v1/auth/register", None).await;
    let (st, v) = s
        .call(
            "POST",
            &alice,
            "/v1/rooms/dm",
            Some(json!({"participant_id": "usr_bob"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let dm = v["data"]["id"].as_str().unwrap().to_string();
    let (_, v) = s
        .call(
            "POST",
            &bob,
            "/v1/rooms/dm",
            Some(json!({"participant_id": "usr_alice"})),
        )
        .await;
    assert_eq!(v["data"]["id"], dm.as_str(), "DM creation is idempotent");
    let (st, v) = s
        .call(
            "POST",
            &alice,
            &format!("/v1/rooms/{dm}/invite"),
            Some(json!({"participant_id": "usr_bob"})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("SW_ROOM_TYPE_INVARIANT"))
    );
    let (st, v) = s
        .call(
            "POST",
            &alice,
            "/v1/rooms/dm",
            Some(json!({"participant_id": "usr_nobody"})),
        )
        .await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = s
        .call(
            "POST",
            &alice,
            "/v1/rooms",
            Some(json!({"room_type": "group"})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("SW_INVALID_REQUEST"))
    );
    let public = s.create_room(&alice, "lobby").await;
    s.join(&bob, &public).await;
    let (_, v) = s
        .call("GET", &bob, "/v1/directory/rooms?room_type=public", None)
        .await;
    assert_eq!(v["meta"]["total"], 1);
    assert_eq!(v["data"][0]["id"], public.as_str());
    let (_, v) = s.call("GET", &bob, "/v1/directory/rooms", None).await;
    assert_eq!(v["meta"]["total"], 2);
}

#[tokio::test]
async fn messages_edits_redactions_reactions_threads_limits() {
    let s = Server::start(&[]).await;
    let (alice, bob) = (s.token("acme", "alice"), s.token("acme", "bob"));
    let room = s.create_room(&alice, "r").await;
    s.join(&bob, &room).await;
    let (mut ws_bob, _) = connect_hello(&s.ws_url(&bob)).await;
    // Idempotent send.
    let body = json!({"content": {"msgtype": "swp.text", "body": "hi @bob", "mentions": ["usr_bob"]}, "event_uuid": "k-1"});
    let (_, v1) = s
        .call(
            "POST",
            &alice,
            &format!("/v1/rooms/{room}/send"),
            Some(body.clone()),
        )
        .await;
    let (_, v2) = s
        .call(
            "POST",
            &alice,
            &format!("/v1/rooms/{room}/send"),
            Some(body),
        )
        .await;
    assert_eq!(v1["data"]["id"], v2["data"]["id"]);
    let msg = v1["data"]["id"].as_str().unwrap().to_string();
    // Reply in a thread; a reply to nothing is refused.
    let (st, _) = s
        .call(
            "POST",
            &bob,
            &format!("/v1/rooms/{room}/send"),
            Some(json!({"content": {"body": "re", "reply_to_event_id": msg}})),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .call(
            "POST",
            &bob,
            &format!("/v1/rooms/{room}/send"),
            Some(json!({"content": {"body": "re", "reply_to_event_id": "evt-missing"}})),
        )
        .await;
    assert_eq!(st, 404);
    let (st, v) = s
        .call(
            "POST",
            &bob,
            &format!("/v1/rooms/{room}/send"),
            Some(json!({"content": {"body": "x", "mentions": "bob"}})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("SW_INVALID_REQUEST"))
    );
    // Content limit.
    let (st, v) = s
        .call(
            "POST",
            &alice,
            &format!("/v1/rooms/{room}/send"),
            Some(json!({"content": {"body": "x".repeat(70 * 1024)}})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (413, Some("SW_CONTENT_TOO_LARGE"))
    );
    let (st, _) = s
        .call(
            "POST",
            &alice,
            &format!("/v1/rooms/{room}/send"),
            Some(json!({"content": "not an object"})),
        )
        .await;
    assert_eq!(st, 400);
    // Edit by the sender keeps the original; others may not edit.
    let (st, v) = s
        .call(
            "POST",
            &alice,
            &format!("/v1/rooms/{room}/events/{msg}/edit"),
            Some(json!({"content": {"body": "hi (edited)"}})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["content"]["body"], "hi (edited)");
    assert_eq!(v["data"]["original_content"]["body"], "hi @bob");
    assert!(v["data"]["edited_at"].is_string());
    let (st, _) = s
        .call(
            "POST",
            &bob,
            &format!("/v1/rooms/{room}/events/{msg}/edit"),
            Some(json!({"content": {"body": "hijack"}})),
        )
        .await;
    assert_eq!(st, 403);
    // Reactions: duplicate is a no-op; removal works; the WS sees add and remove.
    let (st, _) = s
        .call(
            "POST",
            &bob,
            &format!("/v1/rooms/{room}/events/{msg}/reaction"),
            Some(json!({"emoji": "👍"})),
        )
        .await;
    assert_eq!(st, 200);
    let (_, v) = s
        .call(
            "POST",
            &bob,
            &format!("/v1/rooms/{room}/events/{msg}/reaction"),
            Some(json!({"emoji": "👍"})),
        )
        .await;
    assert_eq!(v["data"]["duplicate"], true);
    let (st, _) = s
        .call(
            "DELETE",
            &bob,
            &format!("/v1/rooms/{room}/events/{msg}/reaction?emoji=%F0%9F%91%8D"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    let mut kinds = Vec::new();
    while kinds.len() < 5 {
        let ev = next_event(&mut ws_bob).await;
        kinds.push(format!(
            "{}:{}",
            ev["type"].as_str().unwrap(),
            ev["action"].as_str().unwrap_or("")
        ));
    }
    assert_eq!(
        kinds[kinds.len() - 3..],
        [
            "swp.room.edit:".to_string(),
            "swp.room.reaction:add".into(),
            "swp.room.reaction:remove".into()
        ]
    );
    let reactions: Vec<_> = s
        .sync_all(&bob, 0)
        .await
        .into_iter()
        .filter(|e| e["type"] == "swp.room.reaction")
        .collect();
    assert_eq!(
        reactions.len(),
        2,
        "the duplicate reaction never entered the stream"
    );
    // Redaction: bob (power 0) may not redact alice's message; alice may.
    let (st, v) = s
        .call(
            "POST",
            &bob,
            &format!("/v1/rooms/{room}/events/{msg}/redact"),
            Some(json!({"reason": "no"})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("SW_REDACT_FORBIDDEN"))
    );
    let (st, v) = s
        .call(
            "POST",
            &alice,
            &format!("/v1/rooms/{room}/events/{msg}/redact"),
            Some(json!({"reason": "oops"})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        (v["data"]["event_id"].as_str(), v["data"]["reason"].as_str()),
        (Some(msg.as_str()), Some("oops"))
    );
    let (_, v) = s
        .call("GET", &bob, &format!("/v1/rooms/{room}/events/{msg}"), None)
        .await;
    assert_eq!(v["data"]["content"], json!({}));
    assert!(v["data"]["redacted_at"].is_string());
    // Unknown event.
    let (st, v) = s
        .call(
            "POST",
            &alice,
            &format!("/v1/rooms/{room}/events/evt-nope/edit"),
            Some(json!({"content": {}})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("SW_EVENT_NOT_FOUND"))
    );
}

#[tokio::test]
async fn edit_window_is_enforced() {
    let s = Server::start(&[("SCAIWAVE_EDIT_WINDOW", "0ms".into())]).await;
    let alice = s.token("acme", "alice");
    let room = s.create_room(&alice, "r").await;
    let m = s.send(&alice, &room, "old").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (st, v) = s
        .call(
            "POST",
            &alice,
            &format!("/v1/rooms/{room}/events/{}/edit", m["id"].as_str().unwrap()),
            Some(json!({"content": {"body": "new"}})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("SW_EVENT_TOO_OLD_TO_EDIT"))
    );
}

#[tokio::test]
async fn history_pages_both_directions() {
    let s = Server::start(&[]).await;
    let alice = s.token("acme", "alice");
    let room = s.create_room(&alice, "r").await;
    let mut sent = Vec::new();
    for i in 0..7 {
        sent.push(
            s.send(&alice, &room, &format!("m{i}")).await["stream_position"]
                .as_u64()
                .unwrap(),
        );
    }
    // Backwards from the newest, 3 at a time.
    let mut got = Vec::new();
    let mut from = String::new();
    loop {
        let (st, v) = s
            .call(
                "GET",
                &alice,
                &format!("/v1/rooms/{room}/messages?limit=3&from={from}"),
                None,
            )
            .await;
        assert_eq!(st, 200);
        for e in v["data"].as_array().unwrap() {
            got.push(e["stream_position"].as_u64().unwrap());
        }
        if !v["meta"]["has_more"].as_bool().unwrap() {
            break;
        }
        from = v["meta"]["next_cursor"].as_str().unwrap().to_string();
    }
    let mut expected: Vec<u64> = (1..=8).rev().collect(); // 7 messages + the creator's join
    assert_eq!(got, expected);
    // Forwards from the first message.
    let (_, v) = s
        .call(
            "GET",
            &alice,
            &format!(
                "/v1/rooms/{room}/messages?direction=forward&from={}&limit=200",
                sent[0]
            ),
            None,
        )
        .await;
    let fwd: Vec<u64> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream_position"].as_u64().unwrap())
        .collect();
    expected.reverse();
    assert_eq!(fwd, expected[2..].to_vec());
    assert_eq!(v["meta"]["has_more"], false);
    let (st, v) = s
        .call(
            "GET",
            &alice,
            &format!("/v1/rooms/{room}/messages?limit=201"),
            None,
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("SW_INVALID_REQUEST"))
    );
    let (st, _) = s
        .call(
            "GET",
            &alice,
            &format!("/v1/rooms/{room}/messages?direction=sideways"),
            None,
        )
        .await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn typing_expires_presence_and_private_read_markers() {
    let s = Server::start(&[("SCAIWAVE_TYPING_TTL", "300ms".into())]).await;
    let (alice, bob) = (s.token("acme", "alice"), s.token("acme", "bob"));
    let room = s.create_room(&alice, "r").await;
    s.join(&bob, &room).await;
    let (mut ws_bob, _) = connect_hello(&s.ws_url(&bob)).await;
    let (mut ws_alice, _) = connect_hello(&s.ws_url(&alice)).await;
    let (st, _) = s
        .call(
            "PUT",
            &alice,
            "/v1/typing",
            Some(json!({"room_id": room, "typing": true})),
        )
        .await;
    assert_eq!(st, 200);
    let mut typing = Vec::new();
    while typing.len() < 2 {
        let f = next_json(&mut ws_bob).await;
        if f["type"] == "typing" {
            assert_eq!(
                (f["room_id"].as_str(), f["participant_id"].as_str()),
                (Some(room.as_str()), Some("usr_alice"))
            );
            assert!(f.get("stream_position").is_none(), "typing is ephemeral");
            typing.push(f["typing"].as_bool().unwrap());
        }
    }
    assert_eq!(
        typing,
        vec![true, false],
        "typing clears itself after the TTL"
    );
    // Presence snapshot.
    let (_, v) = s
        .call("GET", &alice, "/v1/presence?ids=usr_bob,usr_zed", None)
        .await;
    assert_eq!(
        v["data"],
        json!({"usr_bob": "online", "usr_zed": "offline"})
    );
    let (st, _) = s
        .call("PUT", &bob, "/v1/presence", Some(json!({"status": "busy"})))
        .await;
    assert_eq!(st, 200);
    let (_, v) = s
        .call("GET", &alice, "/v1/presence?ids=usr_bob", None)
        .await;
    assert_eq!(v["data"]["usr_bob"], "busy");
    // Read markers go to the author's own sessions only.
    let m = s.send(&bob, &room, "read me").await;
    let (st, _) = s
        .call(
            "POST",
            &alice,
            &format!("/v1/rooms/{room}/read_marker"),
            Some(json!({"event_id": m["id"]})),
        )
        .await;
    assert_eq!(st, 200);
    let marker_done = s.send(&alice, &room, "after marker").await;
    loop {
        let ev = next_event(&mut ws_alice).await;
        if ev["type"] == "swp.room.read_marker" {
            assert_eq!(ev["event_id"], m["id"]);
            break;
        }
    }
    loop {
        let ev = next_event(&mut ws_bob).await;
        assert_ne!(
            ev["type"], "swp.room.read_marker",
            "bob saw alice's read marker"
        );
        if ev["id"] == marker_done["id"] {
            break;
        }
    }
    assert!(s
        .sync_all(&bob, 0)
        .await
        .iter()
        .all(|e| e["type"] != "swp.room.read_marker"));
}

#[tokio::test]
async fn health_is_public_and_metrics_are_exported() {
    let s = Server::start(&[]).await;
    let v: serde_json::Value = reqwest::get(format!("{}/health", s.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["checks"]["database"], "ok");
    let t = s.token("acme", "alice");
    let (_ws, _) = connect_hello(&s.ws_url(&t)).await;
    s.call("GET", &t, "/v1/sync?timeout=0", None).await;
    let m = s.metrics().await;
    assert!(
        m.contains("scaiwave_ws_connections{tenant=\"tnt_acme\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("scaiwave_http_requests_total{method=\"GET\",path=\"/v1/sync\",status=\"200\"}"),
        "{m}"
    );
    assert!(m.contains("scaiwave_http_request_duration_seconds"), "{m}");
    let (st, v) = s.call("GET", "", "/v1/rooms/x", None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("SW_AUTH_INVALID_TOKEN"))
    );
}
