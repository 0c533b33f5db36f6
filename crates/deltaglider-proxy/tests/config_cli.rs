//! The operator CLI of the real binary: `config lint` exit codes (0 ok, 3 I/O, 4 parse,
//! 6 validation) and messages, `config migrate` (flat YAML and TOML → sectioned YAML),
//! `config schema` / `config defaults`, `admission trace` offline on a config file, and
//! `config apply --url` against a running proxy (login with DGP_BOOTSTRAP_PASSWORD).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// Runs the binary with `args` in `cwd` (no config file is found there by the search order).
fn run(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(proxy_bin());
    c.args(args)
        .current_dir(cwd)
        .env_remove("DGP_CONFIG")
        .env_remove("DGP_BOOTSTRAP_PASSWORD")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run the proxy binary")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn lint_exit_codes_and_messages() {
    let d = tempfile::tempdir().unwrap();
    let w = |name: &str, text: &str| {
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let good = w(
        "good.yaml",
        "admission:\n  blocks:\n    - name: no-bad\n      match: {source_ip_list: [\"10.0.0.0/8\"]}\n      action: deny\nstorage:\n  buckets:\n    r: {public_prefixes: [\"a/\"]}\n",
    );
    // Runs the CLI, checks its exit code, returns its stderr.
    let exits = |args: &[&str], code: i32| {
        let o = run(d.path(), args, &[]);
        assert_eq!(o.status.code(), Some(code), "{}", err(&o));
        err(&o)
    };
    let e = exits(&["config", "lint", &good], 0);
    assert!(e.contains("ok"), "{e}");

    let e = exits(&["config", "lint", "/nonexistent/dgp.yaml"], 3);
    assert!(e.contains("/nonexistent/dgp.yaml"));

    let bad_syntax = w("syntax.yaml", "storage: [unclosed\n");
    let e = exits(&["config", "lint", &bad_syntax], 4);
    assert!(e.contains("parse error"), "{e}");

    let mixed = w("mixed.yaml", "listen_addr: 127.0.0.1:1\nstorage: {}\n");
    let e = exits(&["config", "lint", &mixed], 4);
    assert!(e.contains("mixing"), "{e}");

    let reserved = w(
        "reserved.yaml",
        "admission:\n  blocks:\n    - name: \"public-prefix:r\"\n      action: deny\n",
    );
    let e = exits(&["config", "lint", &reserved], 6);
    assert!(e.contains("'public-prefix:r'"), "{e}");

    let bad_cidr = w(
        "cidr.yaml",
        "admission:\n  blocks:\n    - name: office\n      match: {source_ip: 10.0.0.0/40}\n      action: continue\n",
    );
    let e = exits(&["config", "lint", &bad_cidr], 6);
    assert!(e.contains("'office'"), "{e}");

    let both = w(
        "both.yaml",
        "storage:\n  buckets:\n    r: {public: true, public_prefixes: [a/]}\n",
    );
    exits(&["config", "lint", &both], 6);

    // Exactly one form of the singleton backend.
    let two_forms = w(
        "two-forms.yaml",
        "storage:\n  filesystem: /tmp/a\n  s3: http://127.0.0.1:1\n",
    );
    let e = exits(&["config", "lint", &two_forms], 6);
    assert!(
        e.contains("exactly one of s3, filesystem or backend"),
        "{e}"
    );
    let mode = w("mode.yaml", "access:\n  iam_mode: weird\n");
    let e = exits(&["config", "lint", &mode], 6);
    assert!(e.contains("iam_mode must be gui or declarative"), "{e}");

    // No argument: DGP_CONFIG (here via --config) is the file.
    exits(&["--config", &bad_syntax, "config", "lint"], 4);
    let o = run(d.path(), &["config", "lint"], &[]);
    assert_eq!(o.status.code(), Some(3), "no file anywhere: {}", err(&o));
}

#[test]
fn migrate_schema_and_defaults() {
    let d = tempfile::tempdir().unwrap();
    let flat = d.path().join("flat.yaml");
    std::fs::write(
        &flat,
        "listen_addr: 127.0.0.1:9100\nmax_delta_ratio: 0.5\naccess_key_id: AK1\nsecret_access_key: SK1\nbuckets:\n  rel: {public_prefixes: [\"b/\"]}\n",
    )
    .unwrap();
    // Runs the CLI, checks it exits 0, returns its stdout.
    let succeeds = |args: &[&str]| {
        let o = run(d.path(), args, &[]);
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        out(&o)
    };
    let text = succeeds(&["config", "migrate", flat.to_str().unwrap()]);
    let y: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(y["advanced"]["listen_addr"], "127.0.0.1:9100", "{text}");
    assert_eq!(y["advanced"]["max_delta_ratio"], 0.5);
    assert_eq!(y["access"]["access_key_id"], "AK1");
    assert_eq!(
        y["access"]["secret_access_key"], "SK1",
        "migrate keeps secrets"
    );
    assert_eq!(y["storage"]["buckets"]["rel"]["public_prefixes"][0], "b/");
    assert!(y.get("listen_addr").is_none());
    // The migrated text lints clean.
    let migrated = d.path().join("migrated.yaml");
    std::fs::write(&migrated, &text).unwrap();
    succeeds(&["config", "lint", migrated.to_str().unwrap()]);

    let toml = d.path().join("old.toml");
    std::fs::write(
        &toml,
        "[advanced]\ncache_size_mb = 2048\n\n[storage.buckets.pub]\npublic = true\n",
    )
    .unwrap();
    let text = succeeds(&["config", "migrate", toml.to_str().unwrap()]);
    let y: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(y["advanced"]["cache_size_mb"], 2048, "{text}");
    assert_eq!(y["storage"]["buckets"]["pub"]["public"], true);
    let o = run(d.path(), &["config", "migrate", "/nonexistent.toml"], &[]);
    assert_eq!(o.status.code(), Some(3));

    let s: serde_json::Value = serde_json::from_str(&succeeds(&["config", "schema"])).unwrap();
    for sec in ["admission", "access", "storage", "advanced"] {
        assert!(s["properties"][sec]["properties"].is_object(), "{sec}: {s}");
    }
    let o = run(d.path(), &["config", "schema", "--section", "storage"], &[]);
    let s: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert!(s["properties"]["buckets"].is_object(), "{s}");
    let o = run(d.path(), &["config", "schema", "--section", "nope"], &[]);
    assert_ne!(o.status.code(), Some(0));

    let text = succeeds(&["config", "defaults"]);
    let y: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(y["advanced"]["max_delta_ratio"], 0.75, "{text}");
    assert_eq!(y["advanced"]["max_object_size"], 104857600);
    assert_eq!(y["access"]["iam_mode"], "gui");
}

#[test]
fn admission_trace_offline() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("c.yaml");
    std::fs::write(
        &cfg,
        "admission:\n  blocks:\n    - name: lan-only\n      match: {bucket: internal, source_ip_list: [\"10.0.0.0/8\"]}\n      action: continue\n    - name: internal-closed\n      match: {bucket: internal}\n      action: {type: reject, status: 404, message: nothing here}\nstorage:\n  buckets:\n    rel: {public_prefixes: [\"builds/\"]}\n",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let trace = |args: &[&str]| {
        let mut a = vec!["admission", "trace", "--config", c];
        a.extend_from_slice(args);
        let o = run(d.path(), &a, &[]);
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        serde_json::from_str::<serde_json::Value>(&out(&o)).unwrap()
    };
    let v = trace(&[
        "--method",
        "GET",
        "--path",
        "/internal/x",
        "--source-ip",
        "10.2.3.4",
    ]);
    assert_eq!(
        (v["decision"].as_str(), v["matched_block"].as_str()),
        (Some("continue"), Some("lan-only")),
        "{v}"
    );
    let v = trace(&[
        "--method",
        "GET",
        "--path",
        "/internal/x",
        "--source-ip",
        "192.0.2.1",
    ]);
    assert_eq!(
        (v["decision"].as_str(), v["matched_block"].as_str()),
        (Some("reject"), Some("internal-closed")),
        "{v}"
    );
    let v = trace(&["--method", "HEAD", "--path", "/rel/builds/a.zip"]);
    assert_eq!(
        (v["decision"].as_str(), v["matched_block"].as_str()),
        (Some("allow-anonymous"), Some("public-prefix:rel")),
        "{v}"
    );
    let v = trace(&["--method", "PUT", "--path", "/rel/builds/a.zip"]);
    assert_eq!(v["decision"], "continue", "{v}");
    assert!(v["matched_block"].is_null(), "{v}");
    let o = run(
        d.path(),
        &[
            "admission",
            "trace",
            "--config",
            "/nonexistent.yaml",
            "--method",
            "GET",
            "--path",
            "/a/b",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
}

#[tokio::test]
async fn config_apply_against_a_running_proxy() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("live.yaml");
    std::fs::write(&cfg, "advanced:\n  max_delta_ratio: 0.75\n").unwrap();
    let hash = bcrypt::hash("apply-pw", 4).unwrap();
    let p = start_proxy(
        None,
        &[
            ("DGP_CONFIG", cfg.to_str().unwrap().into()),
            ("DGP_BOOTSTRAP_PASSWORD_HASH", hash),
            ("DGP_SECURE_COOKIES", "false".into()),
        ],
    )
    .await;
    let c = p.client();
    c.create_bucket().bucket("site").send().await.unwrap();
    put_bytes(&c, "site", "docs/index.html", b"hello").await;
    let anon = format!("{}/site/docs/index.html", p.url());
    assert_eq!(reqwest::get(&anon).await.unwrap().status(), 403);

    let newcfg = d.path().join("new.yaml");
    std::fs::write(
        &newcfg,
        "admission:\n  blocks:\n    - name: site-docs\n      match: {bucket: site, path_glob: \"docs/*\"}\n      action: allow-anonymous\n",
    )
    .unwrap();
    let url = p.url();
    let args = [
        "config",
        "apply",
        newcfg.to_str().unwrap(),
        "--url",
        url.as_str(),
    ];
    let o = run(d.path(), &args, &[("DGP_BOOTSTRAP_PASSWORD", "wrong")]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("login"), "{}", err(&o));
    let o = run(d.path(), &args, &[("DGP_BOOTSTRAP_PASSWORD", "apply-pw")]);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert!(
        v["applied"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("admission.blocks")),
        "{v}"
    );
    assert_eq!(v["persisted"], true, "{v}");
    let r = reqwest::get(&anon).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello");
    assert!(std::fs::read_to_string(&cfg).unwrap().contains("site-docs"));

    // An invalid file is refused by the server (exit 6) and changes nothing.
    std::fs::write(
        &newcfg,
        "admission:\n  blocks:\n    - name: \"public-prefix:site\"\n      action: deny\n",
    )
    .unwrap();
    let o = run(d.path(), &args, &[("DGP_BOOTSTRAP_PASSWORD", "apply-pw")]);
    assert_eq!(o.status.code(), Some(6), "{}{}", out(&o), err(&o));
    assert!(out(&o).contains("public-prefix:site"), "{}", out(&o));
    assert_eq!(reqwest::get(&anon).await.unwrap().status(), 200);
}
