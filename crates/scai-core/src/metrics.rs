//! Prometheus metrics: one process-wide recorder from `metrics-exporter-prometheus`, rendered
//! by each product's `/metrics` handler, plus an HTTP middleware that counts requests and
//! times them under the product's own metric names.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Histogram buckets for request and codec durations, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Install the global recorder (idempotent) and return the handle that renders it.
/// Every metric whose name ends in `_seconds` is a histogram with [`DURATION_BUCKETS`].
pub fn install() -> PrometheusHandle {
    install_with_buckets(&[])
}

/// [`install`], with buckets of the product's own for the named metrics (a full name wins
/// over the `_seconds` default; any other named metric becomes a histogram rather than a
/// summary). Only the first install in a process counts, so a product calls this at start.
pub fn install_with_buckets(named: &[(&str, &[f64])]) -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let mut b = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
                .expect("static buckets are valid");
            for (name, buckets) in named {
                b = b
                    .set_buckets_for_metric(Matcher::Full((*name).into()), buckets)
                    .expect("static buckets are valid");
            }
            let recorder = b.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed by an embedding program; then ours
            // renders nothing, which is better than refusing to start.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The Prometheus text exposition of every metric recorded so far.
pub fn render() -> String {
    install().render()
}

/// A `/metrics` handler body with the right content type.
pub async fn metrics_handler() -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(),
    )
        .into_response()
}

/// Names of the two HTTP metrics a product exports.
#[derive(Clone, Copy, Debug)]
pub struct HttpMetricNames {
    /// Counter with labels `method`, `path`, `status`.
    pub requests_total: &'static str,
    /// Histogram with labels `method`, `path`.
    pub duration_seconds: &'static str,
}

/// Axum middleware recording the request counter and duration histogram. The `path` label is
/// the matched route template (`/api/v1/files/{file_id}`), never the raw path, so label
/// cardinality stays bounded.
pub async fn http_layer(names: HttpMetricNames, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_string();
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(names.requests_total, "method" => method.clone(), "path" => path.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(names.duration_seconds, "method" => method, "path" => path)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// The standard `process_*` gauges (Prometheus client conventions), read from `/proc/self`
/// at scrape time: CPU seconds, resident and virtual memory, open and max file descriptors,
/// threads. A no-op where `/proc` is absent.
pub fn record_process_metrics() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    if let Some(v) = kib("VmRSS:") {
        metrics::gauge!("process_resident_memory_bytes").set(v * 1024.0);
    }
    if let Some(v) = kib("VmSize:") {
        metrics::gauge!("process_virtual_memory_bytes").set(v * 1024.0);
    }
    if let Some(v) = kib("Threads:") {
        metrics::gauge!("process_threads").set(v);
    }
    // utime and stime are fields 14 and 15 of /proc/self/stat, in clock ticks (USER_HZ,
    // 100 on every Linux ABI); the command name before them may contain spaces.
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if let (Some(u), Some(s)) = (
                f.get(11).and_then(|v| v.parse::<f64>().ok()),
                f.get(12).and_then(|v| v.parse::<f64>().ok()),
            ) {
                metrics::gauge!("process_cpu_seconds_total").set((u + s) / 100.0);
            }
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(fds.count() as f64);
    }
    if let Some(max) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<f64>().ok())
        })
    {
        metrics::gauge!("process_max_fds").set(max);
    }
}
