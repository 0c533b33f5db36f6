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

use bytes::Bytes;

use crate::backend::s3::S3BackendConfig;
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
    /// Modes to run: any of xdelta3, zstd, passthrough, each optionally suffixed `-s3`
    /// (the proxy on an upstream-S3 backend: a real s3s-fs on loopback, with a direct-S3
    /// baseline) and/or `-unsigned` (the client sends UNSIGNED-PAYLOAD), e.g.
    /// `passthrough-s3-unsigned`.
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
    /// The s3s-fs binary for the `-s3` modes (default: `s3s-fs` on PATH or in
    /// ~/.cargo/bin; `cargo install s3s-fs@0.14.1 --features binary --locked`).
    #[arg(long)]
    pub s3s_fs: Option<PathBuf>,
}

const AK: &str = "BENCHAK";
const SK: &str = "BENCHSECRET";
const BUCKET: &str = "bench";
/// The direct-S3 baseline's bucket on s3s-fs (beside the proxy's `bench`).
const DIRECT: &str = "direct";
const S3_AK: &str = "benchs3ak";
const S3_SK: &str = "benchs3secret";

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

fn client(url: &str, ak: &str, sk: &str) -> aws_sdk_s3::Client {
    let upstream = S3BackendConfig {
        endpoint: url.into(),
        region: "us-east-1".into(),
        path_style: true,
        access_key_id: ak.into(),
        secret_access_key: sk.into(),
    };
    aws_sdk_s3::Client::from_conf(upstream.sdk_config("bench").build())
}

/// Original bytes of the whole corpus.
fn corpus_size(files: &[(String, Bytes)]) -> u64 {
    files.iter().map(|(_, d)| d.len() as u64).sum()
}

fn e<E: std::fmt::Debug>(x: E) -> ProxyError {
    ProxyError::Internal(format!("{x:?}"))
}

async fn get_all(
    c: &aws_sdk_s3::Client,
    bucket: &str,
    files: &[(String, Bytes)],
) -> Result<f64, ProxyError> {
    let t = Instant::now();
    for (name, data) in files {
        let out = c
            .get_object()
            .bucket(bucket)
            .key(format!("corpus/{name}"))
            .send()
            .await
            .map_err(e)?;
        let got = out.body.collect().await.map_err(e)?.into_bytes();
        if got != data {
            return Err(ProxyError::Integrity(format!(
                "bench: {name} came back different"
            )));
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

/// PUTs every file (serially, one client), signed or with UNSIGNED-PAYLOAD; seconds.
async fn put_all(
    c: &aws_sdk_s3::Client,
    bucket: &str,
    files: &[(String, Bytes)],
    unsigned: bool,
) -> Result<f64, ProxyError> {
    let t = Instant::now();
    for (name, data) in files {
        let put = c
            .put_object()
            .bucket(bucket)
            .key(format!("corpus/{name}"))
            .body(data.clone().into());
        if unsigned {
            // UNSIGNED-PAYLOAD, as the AWS CLI and boto3 send over HTTPS: no payload hash
            // before the first byte; the server hashes the body as it arrives.
            put.customize().disable_payload_signing().send().await
        } else {
            put.send().await
        }
        .map_err(e)?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// A real S3 server (s3s-fs, objects as files under `root/<bucket>/`) on a loopback port,
/// for the `-s3` modes and the direct-S3 baseline; killed on drop.
struct S3sFs {
    child: std::process::Child,
    url: String,
    root: PathBuf,
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_s3s_fs(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")))
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
}

fn start_s3s_fs(bin: &Path, work: &Path) -> Result<S3sFs, ProxyError> {
    let root = work.join("s3s-fs");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = std::process::Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", S3_AK, "--secret-key", S3_SK])
        .arg(&root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|x| ProxyError::Config(format!("{}: {x}", bin.display())))?;
    let s = S3sFs {
        child,
        url: format!("http://127.0.0.1:{port}"),
        root,
    };
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed().as_secs() > 20 {
            return Err(ProxyError::Internal(
                "s3s-fs did not start listening".into(),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    Ok(s)
}

/// The same client writing the corpus straight to the same s3s-fs (signed payload, as
/// the proxy's default client), and reading it back: what the proxy in front costs.
async fn direct_s3_baseline(
    s3: &S3sFs,
    files: &[(String, Bytes)],
    put_only: bool,
) -> Result<(f64, f64), ProxyError> {
    let _ = std::fs::remove_dir_all(s3.root.join(DIRECT));
    let c = client(&s3.url, S3_AK, S3_SK);
    c.create_bucket().bucket(DIRECT).send().await.map_err(e)?;
    let total = corpus_size(files);
    let put = put_all(&c, DIRECT, files, false).await?;
    let get = if put_only {
        f64::NAN
    } else {
        get_all(&c, DIRECT, files).await?
    };
    Ok((mb_s(total, put), mb_s(total, get)))
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
    files: &[(String, Bytes)],
    work: &Path,
    put_only: bool,
    s3: Option<&S3sFs>,
) -> Result<Row, ProxyError> {
    let data_dir = work.join(mode);
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir)?;
    let mut cfg = Config::with_defaults(data_dir.clone(), AK, SK);
    // A fixed admin hash: otherwise every fresh bench proxy generates a password (a cost-12
    // bcrypt and a warning) that nothing here uses.
    cfg.bootstrap_password_hash = bcrypt::hash("bench", 4).ok();
    let upstream = if mode.contains("-s3") {
        let s3 = s3.ok_or_else(|| ProxyError::Config(format!("{mode}: no s3s-fs")))?;
        // The proxy creates the upstream bucket through its CreateBucket.
        let _ = std::fs::remove_dir_all(s3.root.join(BUCKET));
        let st = &mut cfg.file.storage;
        st.s3 = Some(s3.url.clone());
        st.access_key_id = Some(S3_AK.into());
        st.secret_access_key = Some(S3_SK.into());
        st.force_path_style = Some(true);
        Some(s3.root.join(BUCKET))
    } else {
        None
    };
    match mode.split('-').next().unwrap_or_default() {
        "zstd" => cfg.codec = Codec::Zstd,
        "xdelta3" => {}
        "passthrough" => {
            cfg.file.storage.buckets.insert(
                BUCKET.into(),
                BucketPolicy {
                    compression: Some(false),
                    ..Default::default()
                },
            );
        }
        other => return Err(ProxyError::Config(format!("unknown bench mode {other:?}"))),
    }
    let total = corpus_size(files);
    let r = start(cfg.clone()).await?;
    let c = client(&r.url, AK, SK);
    c.create_bucket().bucket(BUCKET).send().await.map_err(e)?;
    // What the client's signer spends on the payload SHA-256 before each PUT can send a
    // byte (serial here: one client). Timed apart so the report can say how much of a PUT
    // is the client's; the server still verifies that hash on the body it receives.
    let unsigned = mode.ends_with("-unsigned");
    let t = Instant::now();
    for (_, b) in files.iter().filter(|_| !unsigned) {
        use sha2::Digest as _;
        std::hint::black_box(sha2::Sha256::digest(b));
    }
    let client_hash = t.elapsed().as_secs_f64();
    let put = put_all(&c, BUCKET, files, unsigned).await?;
    r.task.abort();
    let stored = match &upstream {
        Some(dir) => dir_size(dir),
        None => dir_size(&data_dir.join("deltaspaces").join(BUCKET)),
    };
    let (cold, warm) = if put_only {
        (f64::NAN, f64::NAN)
    } else {
        // Cold: a fresh proxy on the same data (empty reference cache).
        let r = start(cfg).await?;
        let c = client(&r.url, AK, SK);
        let cold = get_all(&c, BUCKET, files).await?;
        let warm = get_all(&c, BUCKET, files).await?;
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
fn xdelta3_baseline(files: &[(String, Bytes)], work: &Path) -> Result<(f64, f64, f64), ProxyError> {
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
    let total = corpus_size(files);
    Ok((
        stored as f64 / total as f64,
        mb_s(enc_bytes, enc_secs),
        mb_s(enc_bytes, dec_secs),
    ))
}

/// Plain writes with the proxy's durability floor (temp file, write, fsync, rename, fsync
/// of the directory) and reads, on the same disk.
fn disk_baseline(files: &[(String, Bytes)], work: &Path) -> Result<(f64, f64), ProxyError> {
    use std::io::Write;
    let dir = work.join("plain");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let total = corpus_size(files);
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

/// The ETag every S3 PUT must return is the body's MD5, a serial hash: computing it over the
/// corpus alone (with the proxy's own MD5) is the floor under any passthrough PUT, whatever
/// the disk does in parallel.
fn md5_baseline(files: &[(String, Bytes)]) -> f64 {
    let t = Instant::now();
    for (_, data) in files {
        let mut h = crate::delta::ingest::FastMd5::new();
        h.update(data);
        std::hint::black_box(h.finalize_hex());
    }
    mb_s(corpus_size(files), t.elapsed().as_secs_f64())
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
    // Shared buffers: the client sends them without a copy per PUT.
    let files: Vec<(String, Bytes)> = names
        .iter()
        .map(|p| {
            Ok((
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string(),
                Bytes::from(std::fs::read(p)?),
            ))
        })
        .collect::<Result<_, std::io::Error>>()?;
    let total = corpus_size(&files);
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
    let s3 = if args.modes.iter().any(|m| m.contains("-s3")) {
        let bin = find_s3s_fs(args.s3s_fs.as_deref()).ok_or_else(|| {
            ProxyError::Config(
                "the -s3 modes need s3s-fs: cargo install s3s-fs@0.14.1 --features binary --locked, or --s3s-fs PATH".into(),
            )
        })?;
        Some(start_s3s_fs(&bin, &args.work)?)
    } else {
        None
    };
    let mut direct: Vec<(f64, f64)> = Vec::new();
    let mut disk: Vec<(f64, f64)> = Vec::new();
    let mut md5: Vec<f64> = Vec::new();
    let mut runs: Vec<Vec<Row>> = args.modes.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.rounds.max(1) {
        if !args.put_only {
            disk.push(disk_baseline(&files, &args.work)?);
            md5.push(md5_baseline(&files));
        }
        if let Some(s3) = &s3 {
            direct.push(direct_s3_baseline(s3, &files, args.put_only).await?);
        }
        for (i, m) in args.modes.iter().enumerate() {
            runs[i].push(run_mode(m, &files, &args.work, args.put_only, s3.as_ref()).await?);
        }
    }
    let d_w = median(disk.iter().map(|d| d.0));
    let d_r = median(disk.iter().map(|d| d.1));
    let m5 = median(md5.iter().copied());
    println!("baseline xdelta3 CLI : stored/original {x_ratio:.3}  encode {x_enc:.1} MB/s  decode {x_dec:.1} MB/s");
    println!(
        "baseline plain disk  : write+fsync+rename+fsync(dir) {d_w:.1} MB/s  read {d_r:.1} MB/s"
    );
    if !md5.is_empty() {
        println!("baseline ETag MD5    : {m5:.1} MB/s (serial; the floor under any S3 PUT)");
    }
    let direct_put = median(direct.iter().map(|d| d.0));
    if !direct.is_empty() {
        let puts: Vec<String> = direct.iter().map(|d| format!("{:.0}", d.0)).collect();
        println!(
            "baseline direct S3   : s3s-fs on loopback, same client  PUT {direct_put:.1} MB/s  GET {:.1} MB/s   (PUT per round: {})",
            median(direct.iter().map(|d| d.1)),
            puts.join(", ")
        );
    }
    println!(
        "{:<24} {:>16} {:>10} {:>14} {:>14}",
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
            "{:<24} {:>16.3} {:>10.1} {:>14.1} {:>14.1}   (PUT per round: {})",
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
        if r.mode.contains("-s3") {
            println!(
                "{}: PUT is {:.0}% of a direct PUT to the same s3s-fs",
                r.mode,
                100.0 * r.put / direct_put
            );
        }
        if r.mode.contains("-s3") && r.mode.starts_with("passthrough") {
            continue;
        }
        if !r.mode.starts_with("passthrough") {
            println!(
                "{}: stored/original is {:.2}x the xdelta3 CLI's",
                r.mode,
                r.ratio / x_ratio
            );
        } else {
            println!(
                "{} PUT is {:.0}% of plain write+fsync+rename+fsync(dir); without the client's payload SHA-256 (timed apart) {:.1} MB/s, {:.0}%",
                r.mode,
                100.0 * r.put / d_w,
                r.put_server,
                100.0 * r.put_server / d_w
            );
            if !md5.is_empty() {
                println!(
                    "{} PUT is {:.0}% of the slower of plain write and ETag MD5 ({:.1} MB/s)",
                    r.mode,
                    100.0 * r.put / d_w.min(m5),
                    d_w.min(m5)
                );
            }
        }
    }
    Ok(())
}
