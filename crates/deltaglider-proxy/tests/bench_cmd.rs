//! The `bench` subcommand on a tiny corpus of successive "versions": it must run every kind
//! of mode (delta, passthrough, unsigned payload, upstream-S3 with its direct-S3 baseline),
//! read every object back byte for byte (the bench fails on a mismatch) and report a delta
//! ratio well under 1. No timing is asserted: figures on a shared machine are not a test.

mod common;

use std::process::Command;

use common::*;

#[test]
fn bench_runs_every_mode_and_reports_real_ratios() {
    let skip = scai_testkit::services::skip("bench_runs_every_mode_and_reports_real_ratios");
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let mut v = bytes(7, 600_000);
    for i in 0..4u64 {
        std::fs::write(corpus.join(format!("artifact-1.{i}.zip")), &v).unwrap();
        v = mutate(&v, 100 + i);
    }
    // The -s3 modes need s3s-fs (and the xdelta3 baseline its CLI): both come with .ci/run.
    let modes = if skip {
        "zstd,passthrough,passthrough-unsigned"
    } else {
        "zstd,passthrough,passthrough-unsigned,zstd-s3,passthrough-s3-unsigned"
    };
    if skip {
        eprintln!("bench test: services skipped, running without the -s3 modes");
    }
    let out = Command::new(proxy_bin())
        .args(["bench", "--rounds", "1", "--modes", modes, "--corpus"])
        .arg(&corpus)
        .arg("--work")
        .arg(dir.path().join("work"))
        .output()
        .expect("spawn the proxy binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed:\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |mode: &str| -> Vec<f64> {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(mode))
            .unwrap_or_else(|| panic!("no row for {mode} in:\n{stdout}"));
        line.split_whitespace()
            .skip(1)
            .take(4)
            .map(|x| x.parse().unwrap())
            .collect()
    };
    for mode in modes.split(',') {
        let r = row(mode);
        assert!(r.iter().all(|x| x.is_finite() && *x > 0.0), "{mode}: {r:?}");
        if mode.starts_with("zstd") {
            // Four versions, three stored as small deltas: well under half of the bytes.
            assert!(r[0] < 0.5, "{mode} stored/original {}", r[0]);
        } else {
            assert!(r[0] >= 1.0 && r[0] < 1.1, "{mode} stored/original {}", r[0]);
        }
    }
    assert!(stdout.contains("baseline plain disk"), "{stdout}");
    if !skip {
        assert!(stdout.contains("baseline direct S3"), "{stdout}");
        assert!(
            stdout.contains("passthrough-s3-unsigned: PUT is"),
            "{stdout}"
        );
    }
}
