//! ScaiKey mode: tokens signed by a real JWKS/discovery server (RS256) are accepted on HTTP
//! and on the stream; tenants and participants are provisioned on first sight; tokens of
//! another issuer are refused (4001 / SW_AUTH_INVALID_TOKEN).

mod common;

use common::*;
use scai_testkit::jwks::JwksServer;
use serde_json::json;

#[tokio::test]
async fn scaikey_tokens_work_on_http_and_stream() {
    let idp = JwksServer::start().await;
    let s = Server::start(&[
        ("SCAIWAVE_SCAIKEY_URL", idp.issuer().to_string()),
        ("SCAIWAVE_EMBEDDED_AUTH", "false".into()),
    ])
    .await;
    let alice = idp.mint_user("tnt_scaikey", "usr_alice", "openid profile");
    let (st, v) = s.call("POST", &alice, "/v1/auth/register", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["data"],
        json!({"participant_id": "usr_alice", "tenant_id": "tnt_scaikey", "display_name": "usr_alice"})
    );
    let room = s.create_room(&alice, "idp").await;
    let (mut ws, hello) = connect_hello(&s.ws_url(&alice)).await;
    assert_eq!(hello["tenant_id"], "tnt_scaikey");
    let sent = s.send(&alice, &room, "signed by scaikey").await;
    assert_eq!(next_event(&mut ws).await["id"], sent["id"]);
    // The embedded issuer is not trusted in this mode.
    let embedded = s.token("scaikey", "alice");
    let (st, v) = s.call("GET", &embedded, "/v1/sync?timeout=0", None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("SW_AUTH_INVALID_TOKEN"))
    );
    let mut ws = connect(&s.ws_url(&embedded)).await;
    assert_eq!(expect_close(&mut ws).await.0, 4001);
    // A token without tenant_id is refused.
    let no_tenant = idp.mint(json!({"sub": "usr_x", "scope": ""}));
    let (st, _) = s.call("GET", &no_tenant, "/v1/sync?timeout=0", None).await;
    assert_eq!(st, 401);
}
