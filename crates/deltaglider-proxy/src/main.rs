//! `deltaglider-proxy` binary: `serve` (default) runs the proxy from `DGP_*` env vars and the
//! optional YAML file; `bench` measures codecs and the S3 path on a corpus of artifacts;
//! `config …` and `admission trace` are the operator tools (logic in `cli.rs`).

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "deltaglider-proxy",
    version,
    about = "S3-compatible delta-compressing proxy"
)]
struct Cli {
    /// Config file (same as DGP_CONFIG).
    #[arg(long, global = true)]
    config: Option<String>,
    /// Listen address (same as DGP_LISTEN_ADDR).
    #[arg(long, global = true)]
    listen: Option<String>,
    /// Read a new bootstrap (admin) password from stdin, store its bcrypt hash in
    /// `$DGP_DATA_DIR/.deltaglider_bootstrap_hash`, wipe the config store, and exit.
    #[arg(long)]
    set_bootstrap_password: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy (default).
    Serve,
    /// Benchmark: stored/original and throughput per codec on a corpus directory.
    Bench(deltaglider_proxy::bench::BenchArgs),
    /// Config tools: lint, migrate, schema, defaults, apply.
    #[command(subcommand)]
    Config(deltaglider_proxy::cli::ConfigCmd),
    /// Admission chain tools: trace.
    #[command(subcommand)]
    Admission(deltaglider_proxy::cli::AdmissionCmd),
}

fn main() {
    let cli = Cli::parse();
    // CLI flags win over env vars, which win over the file.
    if let Some(c) = &cli.config {
        std::env::set_var("DGP_CONFIG", c);
    }
    if let Some(l) = &cli.listen {
        std::env::set_var("DGP_LISTEN_ADDR", l);
    }
    // The operator tools print their result on stdout, which logs would corrupt.
    let tool = matches!(cli.cmd, Some(Cmd::Config(_)) | Some(Cmd::Admission(_)));
    if cli.set_bootstrap_password {
        let data_dir = std::env::var("DGP_DATA_DIR").unwrap_or_else(|_| "./data".into());
        match deltaglider_proxy::bootstrap::set_from_stdin(std::path::Path::new(&data_dir)) {
            Ok(msg) => {
                eprintln!("deltaglider-proxy: {msg}");
                return;
            }
            Err(e) => {
                eprintln!("deltaglider-proxy: {e}");
                std::process::exit(1);
            }
        }
    }
    // The bench prints a table on stdout: keep logs to warnings there.
    let default_level = if matches!(cli.cmd, Some(Cmd::Bench(_))) {
        "warn"
    } else {
        "deltaglider_proxy=debug,tower_http=debug,info"
    };
    let level = std::env::var("DGP_LOG_LEVEL").unwrap_or_else(|_| default_level.into());
    if !tool {
        scai_core::telemetry::init(&level);
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    // The pool is sized before the runtime exists, so `serve` reads the file here for
    // `advanced.blocking_threads` (a file that does not load is reported by `serve`); the
    // operator tools and the bench do not need a sized pool.
    let serving = matches!(cli.cmd, None | Some(Cmd::Serve));
    let blocking = std::env::var("DGP_BLOCKING_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .or_else(|| {
            if !serving {
                return None;
            }
            let path = deltaglider_proxy::config::find_config_file()?;
            deltaglider_proxy::config::load_file(&path)
                .ok()?
                .advanced
                .blocking_threads
        });
    if let Some(n) = blocking {
        rt.max_blocking_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd.unwrap_or(Cmd::Serve) {
            Cmd::Serve => {
                let cfg = deltaglider_proxy::config::Config::from_env()?;
                deltaglider_proxy::serve(cfg).await
            }
            Cmd::Bench(args) => deltaglider_proxy::bench::run(args).await,
            Cmd::Config(c) => std::process::exit(deltaglider_proxy::cli::run_config(c).await),
            Cmd::Admission(c) => std::process::exit(deltaglider_proxy::cli::run_admission(c).await),
        }
    });
    if let Err(e) = result {
        tracing::error!(error = %e, "deltaglider-proxy stopped");
        eprintln!("deltaglider-proxy: {e}");
        std::process::exit(1);
    }
}
