//! The `scaidrive-sync` binary: `init`, `once`, `run`, `status`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use scaidrive_sync::Engine;

#[derive(Parser)]
#[command(
    name = "scaidrive-sync",
    version,
    about = "Keep a local folder in step with a ScaiDrive share"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Set up DIR for syncing (default share: your personal share).
    Init {
        dir: PathBuf,
        #[arg(long)]
        server: String,
        #[arg(long, env = "SCAIDRIVE_TOKEN")]
        token: String,
        #[arg(long)]
        share: Option<String>,
        #[arg(long)]
        device_name: Option<String>,
    },
    /// One full pass (pull, push, resolve); exit 0 when in step.
    Once { dir: PathBuf },
    /// Keep DIR in step until stopped.
    Run {
        dir: PathBuf,
        /// Full scan interval (besides filesystem events and WebSocket nudges).
        #[arg(long, default_value = "60s")]
        scan_every: String,
    },
    /// Show cursor, pending work and conflicts.
    Status { dir: PathBuf },
    /// Benchmark (not a test): spawns `scaidrive` processes and prints figures with baselines.
    Bench {
        /// The `scaidrive` server binary.
        #[arg(long, default_value = "scaidrive")]
        server_bin: PathBuf,
        #[arg(long, default_value_t = 100_000)]
        backlog: usize,
        #[arg(long, default_value_t = 10_000)]
        sockets: usize,
        #[arg(long, default_value_t = 10_000)]
        files: usize,
        #[arg(long, default_value_t = 1024)]
        big_mib: u64,
        #[arg(long, default_value_t = 200)]
        samples: usize,
        #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
        mariadb_url: String,
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SCAIDRIVE_SYNC_LOG")
                .unwrap_or_else(|_| "scaidrive_sync=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("scaidrive-sync: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("scaidrive-sync: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.cmd {
        Cmd::Init {
            dir,
            server,
            token,
            share,
            device_name,
        } => {
            let e = Engine::init(
                &dir,
                &server,
                &token,
                share.as_deref(),
                device_name.as_deref(),
            )
            .await?;
            println!(
                "initialised {} for share {} as device {}",
                dir.display(),
                e.remote.share_id,
                e.remote.device_id
            );
            Ok(0)
        }
        Cmd::Once { dir } => {
            let e = Engine::open(&dir).await?;
            let r = e.once().await?;
            println!("pulled {} change(s), downloaded {}, uploaded {}, pushed {}, conflicts {}, errors {}", r.pulled, r.downloaded, r.uploaded, r.pushed, r.conflicts, r.errors);
            Ok(if r.errors == 0 { 0 } else { 2 })
        }
        Cmd::Run { dir, scan_every } => {
            let every = parse_duration(&scan_every)
                .ok_or_else(|| anyhow::anyhow!("--scan-every: expected e.g. 30s, 5m"))?;
            let e = Engine::open(&dir).await?;
            scaidrive_sync::run::run(e, every).await?;
            Ok(0)
        }
        Cmd::Bench {
            server_bin,
            backlog,
            sockets,
            files,
            big_mib,
            samples,
            mariadb_url,
            redis_url,
        } => {
            scaidrive_sync::bench::run(scaidrive_sync::bench::Opts {
                server_bin,
                backlog,
                sockets,
                files,
                big_mib,
                samples,
                mariadb_url,
                redis_url,
            })
            .await?;
            Ok(0)
        }
        Cmd::Status { dir } => {
            let e = Engine::open(&dir).await?;
            let cursor = e
                .state
                .get("cursor")
                .await?
                .unwrap_or_else(|| "(none)".into());
            println!("share:            {}", e.remote.share_id);
            println!(
                "device:           {} ({})",
                e.remote.device_id, e.device_name
            );
            println!("cursor:           {cursor}");
            println!("pending local:    {}", e.pending_local().await?);
            println!("pending uploads:  {}", e.state.pending_uploads().await?);
            match e
                .remote
                .get(&format!(
                    "/api/v1/sync/status?share_id={}&device_id={}",
                    e.remote.share_id, e.remote.device_id
                ))
                .await
            {
                Ok(s) => println!("pending remote:   {}", s["pending_changes"]),
                Err(err) => println!("server:           unreachable ({err})"),
            }
            if let Ok(c) = e
                .remote
                .get(&format!(
                    "/api/v1/sync/conflicts?device_id={}&include_resolved=true",
                    e.remote.device_id
                ))
                .await
            {
                let list = c["conflicts"].as_array().cloned().unwrap_or_default();
                println!("conflicts:        {}", list.len());
                for x in list.iter().rev().take(20) {
                    println!(
                        "  {} {} {} -> {}",
                        x["created_at"].as_str().unwrap_or(""),
                        x["type"].as_str().unwrap_or(""),
                        x["path"].as_str().unwrap_or(""),
                        x["resolution"].as_str().unwrap_or("pending")
                    );
                }
            }
            Ok(0)
        }
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}
