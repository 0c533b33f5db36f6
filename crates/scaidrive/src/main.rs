//! The `scaidrive` binary: `serve` (every role in one process, embedded defaults), `api`,
//! `worker`, `migrate`, `token` (mint a token for the embedded issuer) and `bench`.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use scaidrive::config::{Config, Role};

#[derive(Parser)]
#[command(name = "scaidrive", version, about = "ScaiDrive file storage server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// API and worker in one process; migrates the database first (embedded default).
    Serve,
    /// HTTP API only; refuses to start unless the schema is current.
    Api,
    /// Background worker only (session expiry, chunk GC).
    Worker,
    /// Apply database migrations and exit.
    Migrate,
    /// Print a token the server on the same SCAIDRIVE_DATA_DIR accepts.
    Token {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        user: String,
        #[arg(long)]
        admin: bool,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Benchmarks (not tests): `scaidrive bench upload`.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Upload/download throughput vs dd, dedup, complete latency, children page latency.
    Upload {
        /// File size in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Parallel chunk PUTs.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        /// Items in the big folder for the listing benchmark.
        #[arg(long, default_value_t = 100_000)]
        items: usize,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scaidrive: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scaidrive: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn load(role: Role) -> anyhow::Result<Config> {
    let cfg = Config::from_env(role)?;
    scai_core::telemetry::init(&format!(
        "scaidrive={lvl},scai_auth={lvl},scai_core={lvl},warn",
        lvl = scai_core::telemetry::level_directive(&cfg.log_level)
    ));
    scai_core::metrics::install();
    Ok(cfg)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve => {
            let cfg = load(Role::Serve)?;
            let state = scaidrive::build_state(cfg).await?;
            scaidrive::db::migrations::migrate(&state.db)
                .await
                .context("migrating")?;
            // All-in-one: the scheduler and a worker loop run beside the API.
            tokio::spawn(scaidrive::jobs::run_scheduler(state.clone()));
            tokio::spawn(scaidrive::jobs::run_worker(
                state.clone(),
                std::future::pending(),
            ));
            tokio::spawn(scaidrive::sync::run_maintenance(state.clone()));
            scaidrive::serve_http(state).await
        }
        Cmd::Api => {
            let cfg = load(Role::Api)?;
            let state = scaidrive::build_state(cfg).await?;
            scaidrive::require_current_schema(&state.db).await?;
            if state.cfg.redis_url.is_none() {
                // Without Redis the queue is in-process: this API process must run its jobs.
                tokio::spawn(scaidrive::jobs::run_scheduler(state.clone()));
                tokio::spawn(scaidrive::jobs::run_worker(
                    state.clone(),
                    std::future::pending(),
                ));
            }
            scaidrive::serve_http(state).await
        }
        Cmd::Worker => {
            let cfg = load(Role::Worker)?;
            let state = scaidrive::build_state(cfg).await?;
            scaidrive::require_current_schema(&state.db).await?;
            tracing::info!(event = "worker_started", queue_backend = state.jobs.name());
            // Liveness and the queue metrics on SCAIDRIVE_BIND (no API routes).
            let listener = tokio::net::TcpListener::bind(state.cfg.bind)
                .await
                .with_context(|| format!("SCAIDRIVE_BIND: cannot listen on {}", state.cfg.bind))?;
            tokio::spawn(
                async move { axum::serve(listener, scaidrive::jobs::worker_router()).await },
            );
            tokio::spawn(scaidrive::sync::run_maintenance(state.clone()));
            let sched = tokio::spawn(scaidrive::jobs::run_scheduler(state.clone()));
            scaidrive::jobs::run_worker(state, scai_core::shutdown::signal()).await;
            sched.abort();
            Ok(())
        }
        Cmd::Migrate => {
            let cfg = load(Role::Migrate)?;
            let db = scaidrive::db::Db::connect(&cfg.database_url, 2)
                .await
                .context("SCAIDRIVE_DATABASE_URL: cannot connect")?;
            let n = scaidrive::db::migrations::migrate(&db).await?;
            println!(
                "applied {n} migration(s); schema at version {}",
                scaidrive::db::migrations::latest()
            );
            Ok(())
        }
        Cmd::Token {
            tenant,
            user,
            admin,
            ttl,
            email,
            name,
        } => {
            let cfg = Config::from_env(Role::Token)?;
            let ttl: Duration = scai_core::config::parse_duration(&ttl)
                .context("--ttl: expected e.g. 30m, 1h, 7d")?;
            let issuer = scaidrive::embedded_issuer(&cfg)?;
            let mut opts = scai_auth::MintOptions::new(&tenant, &user);
            opts.admin = admin;
            opts.ttl = ttl;
            opts.email = email;
            opts.name = name;
            println!("{}", issuer.mint(&opts));
            Ok(())
        }
        Cmd::Bench {
            what:
                BenchCmd::Upload {
                    size_mib,
                    parallel,
                    items,
                },
        } => scaidrive::bench::upload(size_mib, parallel, items).await,
    }
}
