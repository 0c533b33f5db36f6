//! Config-file formats and build stamp through the real binary: a TOML file is still read
//! (same sections as the YAML) with a deprecation warning that `DGP_SILENCE_TOML_DEPRECATION`
//! silences; `DGP_BUILD_TIME` (compile-time) shows in whoami and `deltaglider_build_info`.

mod common;

use common::*;

const TOML: &str = r#"
[storage.buckets.tomlpub]
public = true
"#;

/// Starts a proxy on a TOML file making `tomlpub` public; returns it after checking that an
/// anonymous GET is admitted (the file was applied) and a signed PUT landed first.
async fn start_with_toml(extra: &[(&str, String)]) -> (Proxy, tempfile::TempDir) {
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("deltaglider_proxy.toml");
    std::fs::write(&cfg, TOML).unwrap();
    let mut env = vec![("DGP_CONFIG", cfg.to_str().unwrap().to_string())];
    env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    let p = start_proxy(None, &env).await;
    let c = p.client();
    c.create_bucket().bucket("tomlpub").send().await.unwrap();
    put_bytes(&c, "tomlpub", "x/readme.txt", b"public bytes").await;
    let r = reqwest::get(format!("{}/tomlpub/x/readme.txt", p.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the TOML bucket policy is applied");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"public bytes");
    (p, cfg_dir)
}

#[tokio::test]
async fn toml_config_is_read_with_a_deprecation_warning_that_can_be_silenced() {
    let (p, _d) = start_with_toml(&[]).await;
    assert!(
        p.proc.logs().contains("TOML configuration is deprecated"),
        "{}",
        p.proc.logs()
    );
    let (q, _d2) = start_with_toml(&[("DGP_SILENCE_TOML_DEPRECATION", "true".into())]).await;
    assert!(
        !q.proc.logs().contains("TOML configuration is deprecated"),
        "{}",
        q.proc.logs()
    );
    // Without the file the bucket is private: the anonymous GET above proved the file.
    let r = start_proxy(None, &[]).await;
    let c = r.client();
    c.create_bucket().bucket("tomlpub").send().await.unwrap();
    put_bytes(&c, "tomlpub", "x/readme.txt", b"private").await;
    let g = reqwest::get(format!("{}/tomlpub/x/readme.txt", r.url()))
        .await
        .unwrap();
    assert_eq!(g.status(), 403);
}

#[tokio::test]
async fn build_time_is_reported_by_whoami_metrics_and_the_start_log() {
    // The value the build stamped (the test is compiled by the same cargo invocation).
    let expected = option_env!("DGP_BUILD_TIME").unwrap_or("unknown");
    let p = start_proxy(None, &[]).await;
    let who: serde_json::Value = reqwest::get(format!("{}/_/api/whoami", p.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["build_time"], expected, "{who}");
    let m = reqwest::get(format!("{}/_/metrics", p.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = m
        .lines()
        .find(|l| l.starts_with("deltaglider_build_info{"))
        .unwrap_or_else(|| panic!("{m}"));
    assert!(
        line.contains(&format!("build_time=\"{expected}\"")),
        "{line}"
    );
    assert!(p.proc.logs().contains("deltaglider-proxy starting"));
}
