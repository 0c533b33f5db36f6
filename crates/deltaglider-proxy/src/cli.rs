//! The operator CLI next to `serve`: `config lint|migrate|schema|defaults|apply` and
//! `admission trace`. Each command returns the process exit code; results go to stdout,
//! diagnostics to stderr.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::config::FileConfig;

/// Exit codes of `config lint` (and the other commands where they apply).
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_IO: i32 = 3;
pub const EXIT_PARSE: i32 = 4;
pub const EXIT_INVALID: i32 = 6;

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Check a config file. Exit 0 ok, 3 I/O error, 4 parse error, 6 validation error.
    Lint {
        /// The file (default: --config / DGP_CONFIG, then the search order).
        file: Option<PathBuf>,
    },
    /// Print a flat-shaped or TOML config as canonical sectioned YAML.
    Migrate { file: Option<PathBuf> },
    /// Print the JSON Schema of the config (or of one section).
    Schema {
        #[arg(long)]
        section: Option<String>,
    },
    /// Print the default configuration as sectioned YAML.
    Defaults,
    /// Apply FILE to a running proxy (logs in with DGP_BOOTSTRAP_PASSWORD).
    Apply {
        file: PathBuf,
        /// Base URL of the proxy, e.g. http://127.0.0.1:9000.
        #[arg(long)]
        url: String,
    },
}

#[derive(Subcommand)]
pub enum AdmissionCmd {
    /// Run a synthetic request through the admission chain of a config file (offline), or
    /// of a running proxy with --url.
    Trace(TraceArgs),
}

#[derive(Args)]
pub struct TraceArgs {
    #[arg(long)]
    pub method: String,
    /// `/bucket/key` (a `?prefix=` query makes a bucket GET a LIST).
    #[arg(long)]
    pub path: String,
    #[arg(long)]
    pub source_ip: Option<String>,
    /// Trace as a signed (SigV4) request.
    #[arg(long)]
    pub authenticated: bool,
    /// Ask a running proxy instead of reading the config file.
    #[arg(long)]
    pub url: Option<String>,
}

/// The file a command works on: the argument, else `DGP_CONFIG` / the search order.
fn config_file(arg: Option<PathBuf>) -> Result<PathBuf, String> {
    arg.or_else(crate::config::find_config_file)
        .ok_or_else(|| "no config file given and none found (use --config or DGP_CONFIG)".into())
}

fn is_toml(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
}

/// Reads and parses a file: `Err((exit code, message))` on I/O or parse errors.
fn read_config(path: &Path) -> Result<(String, FileConfig, Vec<String>), (i32, String)> {
    let text =
        std::fs::read_to_string(path).map_err(|e| (EXIT_IO, format!("{}: {e}", path.display())))?;
    let (fc, warnings) = crate::config_doc::parse(&text, is_toml(path))
        .map_err(|e| (EXIT_PARSE, format!("{}: parse error: {e}", path.display())))?;
    Ok((text, fc, warnings))
}

pub async fn run_config(cmd: ConfigCmd) -> i32 {
    match cmd {
        ConfigCmd::Lint { file } => lint(file),
        ConfigCmd::Migrate { file } => migrate(file),
        ConfigCmd::Schema { section } => match crate::config_doc::schema(section.as_deref()) {
            Some(s) => {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                EXIT_OK
            }
            None => {
                eprintln!("unknown section (admission, access, storage or advanced)");
                EXIT_FAILURE
            }
        },
        ConfigCmd::Defaults => {
            print!(
                "{}",
                serde_yaml::to_string(&crate::config_doc::defaults()).unwrap_or_default()
            );
            EXIT_OK
        }
        ConfigCmd::Apply { file, url } => apply(&file, &url).await,
    }
}

fn lint(file: Option<PathBuf>) -> i32 {
    let path = match config_file(file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_IO;
        }
    };
    let (_, fc, mut warnings) = match read_config(&path) {
        Ok(x) => x,
        Err((code, msg)) => {
            eprintln!("{msg}");
            return code;
        }
    };
    if let Err(e) = crate::config::validate_file(&fc) {
        eprintln!("{}: invalid: {e}", path.display());
        return EXIT_INVALID;
    }
    warnings.extend(crate::config::lint_file(&fc));
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    eprintln!("{}: ok", path.display());
    EXIT_OK
}

fn migrate(file: Option<PathBuf>) -> i32 {
    let path = match config_file(file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_IO;
        }
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return EXIT_IO;
        }
    };
    let tree =
        crate::config_doc::parse_tree(&text, is_toml(&path)).and_then(crate::config_doc::normalize);
    let (tree, warnings) = match tree {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: parse error: {e}", path.display());
            return EXIT_PARSE;
        }
    };
    // The result must load: a value of the wrong type is reported, not silently written.
    if let Err(e) = serde_json::from_value::<FileConfig>(tree.clone()) {
        eprintln!("{}: parse error: {e}", path.display());
        return EXIT_PARSE;
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    print!("{}", crate::config_doc::canonical_yaml(&tree));
    EXIT_OK
}

/// A minimal HTTP/1.1 JSON client for the admin API (plain `http://` only): the binary
/// carries no HTTP client crate, and these calls are one request per connection.
struct Reply {
    status: u16,
    set_cookies: Vec<String>,
    body: serde_json::Value,
}

async fn post_json(
    base: &str,
    path: &str,
    cookie: Option<&str>,
    body: &serde_json::Value,
) -> Result<Reply, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(authority) = base.strip_prefix("http://") else {
        return Err(format!(
            "{base}: only http:// URLs are supported (reach a TLS listener through a local port)"
        ));
    };
    let authority = authority.trim_end_matches('/');
    let payload = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        payload.len()
    );
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    req.push_str("\r\n");
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("{base}: {e}"))?;
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("{base}: {e}"))?;
    stream
        .write_all(&payload)
        .await
        .map_err(|e| format!("{base}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .map_err(|e| format!("{base}: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{base}: malformed HTTP response"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("{base}: malformed HTTP status line"))?;
    let mut set_cookies = vec![];
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("set-cookie") {
                set_cookies.push(v.trim().to_string());
            } else if k.eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            }
        }
    }
    let mut data = raw[split + 4..].to_vec();
    if chunked {
        data = dechunk(&data);
    }
    let body = serde_json::from_slice(&data).unwrap_or(serde_json::Value::Null);
    Ok(Reply {
        status,
        set_cookies,
        body,
    })
}

/// Decodes a chunked transfer-encoded body.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    out
}

/// Logs in with `DGP_BOOTSTRAP_PASSWORD`; the session cookie.
async fn login(base: &str) -> Result<String, String> {
    let pw = std::env::var("DGP_BOOTSTRAP_PASSWORD")
        .map_err(|_| "DGP_BOOTSTRAP_PASSWORD is not set".to_string())?;
    let r = post_json(
        base,
        "/_/api/admin/login",
        None,
        &serde_json::json!({ "password": pw }),
    )
    .await?;
    if !(200..300).contains(&r.status) {
        return Err(format!("login refused: HTTP {}", r.status));
    }
    r.set_cookies
        .iter()
        .map(|v| v.split(';').next().unwrap_or("").to_string())
        .find(|c| c.starts_with("dgp_session="))
        .ok_or_else(|| "login answered without a session cookie".into())
}

async fn apply(file: &Path, url: &str) -> i32 {
    let yaml = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return EXIT_IO;
        }
    };
    let base = url.trim_end_matches('/');
    let cookie = match login(base).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_FAILURE;
        }
    };
    let r = post_json(
        base,
        "/_/api/admin/config/apply",
        Some(&cookie),
        &serde_json::json!({ "yaml": yaml }),
    )
    .await;
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_FAILURE;
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&r.body).unwrap_or_default()
    );
    match r.status {
        200..=299 => EXIT_OK,
        400 | 422 => {
            eprintln!("config apply refused: HTTP {}", r.status);
            EXIT_INVALID
        }
        s => {
            eprintln!("config apply failed: HTTP {s}");
            EXIT_FAILURE
        }
    }
}

pub async fn run_admission(cmd: AdmissionCmd) -> i32 {
    let AdmissionCmd::Trace(t) = cmd;
    let result = match &t.url {
        Some(url) => trace_remote(&t, url).await,
        None => trace_offline(&t),
    };
    match result {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            EXIT_OK
        }
        Err((code, msg)) => {
            eprintln!("{msg}");
            code
        }
    }
}

fn trace_offline(t: &TraceArgs) -> Result<serde_json::Value, (i32, String)> {
    let path = config_file(None).map_err(|e| (EXIT_IO, e))?;
    let (_, fc, _) = read_config(&path)?;
    crate::config::validate_file(&fc)
        .map_err(|e| (EXIT_INVALID, format!("{}: invalid: {e}", path.display())))?;
    let chain = crate::admission::Chain::build(&fc.admission, &fc.storage.buckets)
        .map_err(|e| (EXIT_INVALID, e))?;
    let ip = match t.source_ip.as_deref() {
        Some(s) => Some(s.parse().map_err(|_| {
            (
                EXIT_FAILURE,
                format!("--source-ip {s:?} is not an IP address"),
            )
        })?),
        None => None,
    };
    let (path, query) = match t.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (t.path.as_str(), None),
    };
    let facts = crate::admission::facts_of(&t.method, path, query, ip, t.authenticated);
    serde_json::to_value(chain.evaluate(&facts)).map_err(|e| (EXIT_FAILURE, e.to_string()))
}

async fn trace_remote(t: &TraceArgs, url: &str) -> Result<serde_json::Value, (i32, String)> {
    let base = url.trim_end_matches('/');
    let cookie = login(base).await.map_err(|e| (EXIT_FAILURE, e))?;
    let r = post_json(
        base,
        "/_/api/admin/config/trace",
        Some(&cookie),
        &serde_json::json!({
            "method": t.method, "path": t.path, "source_ip": t.source_ip,
            "authenticated": t.authenticated,
        }),
    )
    .await
    .map_err(|e| (EXIT_FAILURE, e))?;
    if !(200..300).contains(&r.status) {
        return Err((
            EXIT_FAILURE,
            format!("trace failed: HTTP {}: {}", r.status, r.body),
        ));
    }
    Ok(r.body)
}
