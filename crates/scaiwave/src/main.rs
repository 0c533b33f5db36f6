//! The `scaiwave` binary: `serve` (everything, embedded defaults), `api` and `migrate`
//! (production), `token` (mint a token the embedded server accepts), `client` (reference
//! client), `bench` (benchmark).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use scai_auth::{EmbeddedIssuer, MintOptions};
use scaiwave::config::{Config, Mode};

#[derive(Parser)]
#[command(name = "scaiwave", version, about = "ScaiWave messaging server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run everything in one process on embedded defaults (SQLite, in-process broker).
    Serve,
    /// Run the API role against SCAIWAVE_DATABASE_URL (MariaDB) and SCAIWAVE_NATS_URL.
    Api,
    /// Apply the database schema to SCAIWAVE_DATABASE_URL and exit.
    Migrate,
    /// Print a token the embedded issuer in SCAIWAVE_DATA_DIR signs.
    Token {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        user: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        email: Option<String>,
    },
    /// Reference client: prints every event as a JSON line, reconnects with backoff,
    /// catches up with /v1/sync and persists last_stream_position in --state.
    Client {
        #[arg(long)]
        server: String,
        #[arg(long)]
        token: String,
        #[arg(long)]
        state: PathBuf,
        /// Exit after this many events (for scripts and tests).
        #[arg(long)]
        max_events: Option<u64>,
    },
    /// Benchmark against an in-process embedded server (not a test).
    Bench {
        #[arg(long, default_value_t = 1000)]
        members: usize,
        #[arg(long, default_value_t = 1000)]
        rooms: usize,
        #[arg(long, default_value_t = 10000)]
        idle: usize,
        #[arg(long, default_value_t = 100000)]
        backlog: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scaiwave: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve | Cmd::Api | Cmd::Migrate => {
                let mode = if matches!(cli.cmd, Cmd::Serve) {
                    Mode::Embedded
                } else {
                    Mode::Production
                };
                let cfg = Config::from_env(mode)?;
                scai_core::telemetry::init(&format!(
                    "scaiwave={lvl},scai_stream={lvl},scai_auth={lvl},warn",
                    lvl = scai_core::telemetry::level_directive(&cfg.log_level)
                ));
                if matches!(cli.cmd, Cmd::Migrate) {
                    let db = scaiwave::db::Db::connect(&cfg.database_url).await?;
                    db.migrate().await?;
                    println!("schema applied");
                    Ok(())
                } else {
                    scaiwave::app::serve(cfg).await
                }
            }
            Cmd::Token {
                tenant,
                user,
                ttl,
                name,
                email,
            } => {
                let cfg = Config::from_env(Mode::Embedded)?;
                std::fs::create_dir_all(&cfg.data_dir)?;
                let issuer = EmbeddedIssuer::load_or_create(
                    &cfg.data_dir,
                    &format!("scaiwave-embedded:{}", cfg.server_name),
                )?;
                let mut o = MintOptions::new(&tenant, &user);
                o.ttl = Duration::from_secs(ttl);
                o.name = name;
                o.email = email;
                println!("{}", issuer.mint(&o));
                Ok(())
            }
            Cmd::Client {
                server,
                token,
                state,
                max_events,
            } => scaiwave::client::run(&server, &token, &state, max_events).await,
            Cmd::Bench {
                members,
                rooms,
                idle,
                backlog,
            } => scaiwave::bench::run(members, rooms, idle, backlog).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scaiwave: {e:#}");
            ExitCode::FAILURE
        }
    }
}
