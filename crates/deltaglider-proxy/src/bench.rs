//! The `bench` subcommand: on a corpus of successive artifacts (sorted by file name), for
//! each codec (and passthrough) it runs the real proxy in-process on a loopback port and
//! measures through the S3 API with one serial aws-sdk-s3 client: stored/original bytes,
//! PUT MB/s, cold GET MB/s (fresh process state, empty reference cache) and warm GET MB/s.
//! Baselines measured in the same run on the same disk: the `xdelta3` CLI on the same pairs
//! (each version against the first, like the engine) and plain file writes / reads. The
//! plain writes follow the proxy's durability floor for an acknowledged object (write a
//! temp file, fsync it, rename it into place, fsync the directory), so the comparison is
//! like for like.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

use crate::config::{BucketPolicy, Config};
use crate::error::ProxyError;
use crate::meta::Codec;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Directory with successive artifacts (sorted by name = version order), e.g. botocore
    /// wheels renamed `.zip`.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Scratch directory on the disk to measure (wiped per run).
    #[arg(long, default_value = "/tmp/dgp-bench")]
    pub work: PathBuf,
    /// Modes to run: any of xdelta3, zstd, passthrough.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "xdelta3,zstd,passthrough"
    )]
    pub modes: Vec<String>,
    /// Rounds; each runs the plain-disk baseline and every mode once, interleaved, and the
    /// median of each figure is reported (the disk and the CPUs are shared: single runs
    /// vary by ±30% here).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Only the PUTs of the modes (no baselines, no GETs): for profiling the PUT path.
    #[arg(long)]
    pub put_only: bool,
}

const AK: &str = "BENCHAK";
const SK: &str = "BENCHSECRET";
const BUCKET: &str = "bench";

fn median(v: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1_048_576.0 / secs.max(1e-9)
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                total += dir_size(&path);
            } else if let Ok(m) = e.metadata() {
                total += m.len();
            }
        }
    }
    total
}

struct Running {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

async fn start(cfg: Config) -> Result<Running, ProxyError> {
    let state = crate::build_state(cfg).await?;
    let app = crate::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    Ok(Running {
        url: format!("http://{addr}"),
        task,
    })
}

fn client(url: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .credentials_provider(Credentials::new(AK, SK, None, None, "bench"))
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn e<E: std::fmt::Debug>(x: E) -> ProxyError {
    ProxyError::Internal(format!("{x:?}"))
}

async fn get_all(c: &aws_sdk_s3::Client, files: &[(String, Vec<u8>)]) -> Result<f64, ProxyError> {
    let t = Instant::now();
    for (name, data) in files {
        let out = c
            .get_object()
            .bucket(BUCKET)
            .key(format!("corpus/{name}"))
            .send()
            .await
            .map_err(e)?;
        let got = out.body.collect().await.map_err(e)?.into_bytes();
        if got.as_ref() != data.as_slice() {
            return Err(ProxyError::Integrity(format!(
                "bench: {name} came back different"
            )));
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

struct Row {
    mode: String,
    ratio: f64,
    put: f64,
    /// PUT MB/s with the client's own SigV4 payload hashing (timed apart) taken out.
    put_server: f64,
    cold: f64,
    warm: f64,
}

async fn run_mode(
    mode: &str,
    files: &[(String, Vec<u8>)],
    work: &Path,
    put_only: bool,
) -> Result<Row, ProxyError> {
    let data_dir = work.join(mode);
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir)?;
    let mut cfg = Config::with_defaults(data_dir.clone(), AK, SK);
    // A fixed admin hash: otherwise every fresh bench proxy generates a password (a cost-12
    // bcrypt and a warning) that nothing here uses.
    cfg.bootstrap_password_hash = bcrypt::hash("bench", 4).ok();
    match mode {
        "zstd" => cfg.codec = Codec::Zstd,
        "passthrough" => {
            cfg.file.storage.buckets.insert(
                BUCKET.into(),
                BucketPolicy {
                    compression: Some(false),
                    ..Default::default()
                },
            );
        }
        _ => {}
    }
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    let r = start(cfg.clone()).await?;
    let c = client(&r.url);
    c.create_bucket().bucket(BUCKET).send().await.map_err(e)?;
    // Shared buffers: the client sends them without a copy per PUT.
    let bodies: Vec<bytes::Bytes> = files
        .iter()
        .map(|(_, d)| bytes::Bytes::copy_from_slice(d))
        .collect();
    // What the client's signer spends on the payload SHA-256 before each PUT can send a
    // byte (serial here: one client). Timed apart so the report can say how much of a PUT
    // is the client's; the server still verifies that hash on the body it receives.
    let t = Instant::now();
    for b in &bodies {
        use sha2::Digest as _;
        std::hint::black_box(sha2::Sha256::digest(b));
    }
    let client_hash = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for ((name, _), data) in files.iter().zip(&bodies) {
        c.put_object()
            .bucket(BUCKET)
            .key(format!("corpus/{name}"))
            .body(data.clone().into())
            .send()
            .await
            .map_err(e)?;
    }
    let put = t.elapsed().as_secs_f64();
    r.task.abort();
    let stored = dir_size(&data_dir.join("deltaspaces").join(BUCKET));
    let (cold, warm) = if put_only {
        (f64::NAN, f64::NAN)
    } else {
        // Cold: a fresh proxy on the same data (empty reference cache).
        let r = start(cfg).await?;
        let c = client(&r.url);
        let cold = get_all(&c, files).await?;
        let warm = get_all(&c, files).await?;
        r.task.abort();
        (cold, warm)
    };
    Ok(Row {
        mode: mode.into(),
        ratio: stored as f64 / total as f64,
        put: mb_s(total, put),
        put_server: mb_s(total, put - client_hash),
        cold: mb_s(total, cold),
        warm: mb_s(total, warm),
    })
}

/// xdelta3 CLI on the same pairs (each version against the first), with the reference
/// counted in full, as the engine stores it.
fn xdelta3_baseline(
    files: &[(String, Vec<u8>)],
    work: &Path,
) -> Result<(f64, f64, f64), ProxyError> {
    let dir = work.join("xdelta3-cli");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut paths = Vec::new();
    for (name, data) in files {
        let p = dir.join(name);
        std::fs::write(&p, data)?;
        paths.push(p);
    }
    let mut stored = files[0].1.len() as u64;
    let mut enc_bytes = 0u64;
    let mut enc_secs = 0.0;
    let mut dec_secs = 0.0;
    for (i, p) in paths.iter().enumerate().skip(1) {
        let out = dir.join(format!("{i}.vcdiff"));
        let t = Instant::now();
        let st = std::process::Command::new("xdelta3")
            .arg("-e")
            .arg("-f")
            .arg("-s")
            .arg(&paths[0])
            .arg(p)
            .arg(&out)
            .status()?;
        enc_secs += t.elapsed().as_secs_f64();
        if !st.success() {
            return Err(ProxyError::Codec("xdelta3 CLI failed".into()));
        }
        enc_bytes += files[i].1.len() as u64;
        stored += std::fs::metadata(&out)?.len();
        let back = dir.join(format!("{i}.out"));
        let t = Instant::now();
        std::process::Command::new("xdelta3")
            .arg("-d")
            .arg("-f")
            .arg("-s")
            .arg(&paths[0])
            .arg(&out)
            .arg(&back)
            .status()?;
        dec_secs += t.elapsed().as_secs_f64();
    }
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    Ok((
        stored as f64 / total as f64,
        mb_s(enc_bytes, enc_secs),
        mb_s(enc_bytes, dec_secs),
    ))
}

/// Plain writes with the proxy's durability floor (temp file, write, fsync, rename, fsync
/// of the directory) and reads, on the same disk.
fn disk_baseline(files: &[(String, Vec<u8>)], work: &Path) -> Result<(f64, f64), ProxyError> {
    use std::io::Write;
    let dir = work.join("plain");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    let t = Instant::now();
    for (name, data) in files {
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
        std::fs::File::open(&dir)?.sync_all()?;
    }
    let w = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for (name, _) in files {
        let _ = std::fs::read(dir.join(name))?;
    }
    let r = t.elapsed().as_secs_f64();
    Ok((mb_s(total, w), mb_s(total, r)))
}

pub async fn run(args: BenchArgs) -> Result<(), ProxyError> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(&args.corpus)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    if names.len() < 2 {
        return Err(ProxyError::Config(format!(
            "{}: need at least two artifacts",
            args.corpus.display()
        )));
    }
    let files: Vec<(String, Vec<u8>)> = names
        .iter()
        .map(|p| {
            Ok((
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string(),
                std::fs::read(p)?,
            ))
        })
        .collect::<Result<_, std::io::Error>>()?;
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    std::fs::create_dir_all(&args.work)?;
    println!(
        "corpus: {} files, {:.1} MB total ({}), median of {} rounds",
        files.len(),
        total as f64 / 1_048_576.0,
        args.corpus.display(),
        args.rounds.max(1)
    );
    let (x_ratio, x_enc, x_dec) = if args.put_only {
        (f64::NAN, f64::NAN, f64::NAN)
    } else {
        xdelta3_baseline(&files, &args.work)?
    };
    let mut disk: Vec<(f64, f64)> = Vec::new();
    let mut runs: Vec<Vec<Row>> = args.modes.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.rounds.max(1) {
        if !args.put_only {
            disk.push(disk_baseline(&files, &args.work)?);
        }
        for (i, m) in args.modes.iter().enumerate() {
            runs[i].push(run_mode(m, &files, &args.work, args.put_only).await?);
        }
    }
    let d_w = median(disk.iter().map(|d| d.0));
    let d_r = median(disk.iter().map(|d| d.1));
    println!("baseline xdelta3 CLI : stored/original {x_ratio:.3}  encode {x_enc:.1} MB/s  decode {x_dec:.1} MB/s");
    println!(
        "baseline plain disk  : write+fsync+rename+fsync(dir) {d_w:.1} MB/s  read {d_r:.1} MB/s"
    );
    println!(
        "{:<12} {:>16} {:>10} {:>14} {:>14}",
        "mode", "stored/original", "PUT MB/s", "cold GET MB/s", "warm GET MB/s"
    );
    let rows: Vec<Row> = args
        .modes
        .iter()
        .zip(&runs)
        .map(|(m, rs)| Row {
            mode: m.clone(),
            ratio: median(rs.iter().map(|r| r.ratio)),
            put: median(rs.iter().map(|r| r.put)),
            put_server: median(rs.iter().map(|r| r.put_server)),
            cold: median(rs.iter().map(|r| r.cold)),
            warm: median(rs.iter().map(|r| r.warm)),
        })
        .collect();
    for (row, rs) in rows.iter().zip(&runs) {
        let puts: Vec<String> = rs.iter().map(|r| format!("{:.0}", r.put)).collect();
        println!(
            "{:<12} {:>16.3} {:>10.1} {:>14.1} {:>14.1}   (PUT per round: {})",
            row.mode,
            row.ratio,
            row.put,
            row.cold,
            row.warm,
            puts.join(", ")
        );
    }
    if !disk.is_empty() {
        let ws: Vec<String> = disk.iter().map(|d| format!("{:.0}", d.0)).collect();
        println!("plain disk write per round: {}", ws.join(", "));
    }
    for r in &rows {
        if r.mode != "passthrough" {
            println!(
                "{}: stored/original is {:.2}x the xdelta3 CLI's",
                r.mode,
                r.ratio / x_ratio
            );
        } else {
            println!(
                "passthrough PUT is {:.0}% of plain write+fsync+rename+fsync(dir); without the client's payload SHA-256 (timed apart) {:.1} MB/s, {:.0}%",
                100.0 * r.put / d_w,
                r.put_server,
                100.0 * r.put_server / d_w
            );
        }
    }
    Ok(())
}
