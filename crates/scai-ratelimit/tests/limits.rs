//! The limiter's behaviour over both backends: the in-process one and the real Redis at
//! 127.0.0.1:6379 (`SCAI_TEST_REDIS_URL`), each test under its own key prefix. Clocks are
//! given explicitly (`check_at`) so window arithmetic is exact and tests never sleep.

use std::time::Duration;

use scai_ratelimit::{
    CostClass, Dimension, Limiter, LimiterConfig, RedisOptions, COST_SEMANTIC,
    DEFAULT_TENANT_LIMIT, DEFAULT_TOKEN_LIMIT, DEFAULT_USER_LIMIT,
};

const W: u64 = 60_000;
/// A window-aligned instant (ms): 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000;

fn config() -> LimiterConfig {
    LimiterConfig {
        window: Duration::from_millis(W),
        metric_prefix: "test".into(),
    }
}

fn prefix(test: &str) -> String {
    format!("scai-rl-test:{test}:{}", ulid::Ulid::new())
}

fn redis_limiter(test: &str) -> Limiter {
    redis_limiter_at(&scai_testkit::services::redis_url(), &prefix(test))
}

fn redis_limiter_at(url: &str, key_prefix: &str) -> Limiter {
    let options = RedisOptions {
        key_prefix: key_prefix.to_string(),
        ..RedisOptions::default()
    };
    Limiter::redis(url, options, config()).expect("valid redis url")
}

/// Both backends, unless services are skipped (then only the in-process one).
fn limiters(test: &str) -> Vec<Limiter> {
    let mut v = vec![Limiter::in_memory(config())];
    if !scai_testkit::services::skip(test) {
        v.push(redis_limiter(test));
    }
    v
}

#[test]
fn defaults_and_costs_are_the_documented_ones() {
    assert_eq!(DEFAULT_TOKEN_LIMIT, 1000);
    assert_eq!(DEFAULT_USER_LIMIT, 5000);
    assert_eq!(DEFAULT_TENANT_LIMIT, 50_000);
    assert_eq!(Dimension::User.default_limit_per_minute(), 5000);
    let costs: Vec<u32> = [
        CostClass::Metadata,
        CostClass::List,
        CostClass::Write,
        CostClass::Transfer,
        CostClass::Search,
        CostClass::Semantic,
    ]
    .iter()
    .map(|c| c.cost())
    .collect();
    assert_eq!(costs, vec![1, 2, 2, 5, 10, 20]);
    assert_eq!(COST_SEMANTIC, 20);
    let names: Vec<&str> = Dimension::ALL.iter().map(|d| d.as_str()).collect();
    assert_eq!(names, vec!["token", "user", "tenant"]);
}

#[tokio::test]
async fn cost_is_accounted_per_request() {
    for l in limiters("cost_is_accounted_per_request") {
        let c = [(Dimension::Token, "tok", 10)];
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let d = l.check_at(&c, 3, T0 + 10).await;
            assert!(d.allowed, "{}: {d:?}", l.backend_name());
            assert!(!d.degraded);
            remaining.push(d.remaining);
        }
        assert_eq!(remaining, vec![7, 4, 1], "{}", l.backend_name());
        // 9 used: a 3-unit request no longer fits, a 1-unit one does.
        let d = l.check_at(&c, 3, T0 + 20).await;
        assert!(!d.allowed);
        assert_eq!(d.dimension_hit, Some(Dimension::Token));
        assert_eq!((d.limit, d.remaining), (10, 1));
        assert!(d.retry_after_secs >= 1);
        assert_eq!(d.reset_unix, (T0 + W) / 1000);
        let d = l.check_at(&c, 1, T0 + 30).await;
        assert!(d.allowed, "{}: {d:?}", l.backend_name());
        assert_eq!(d.remaining, 0);
    }
}

#[tokio::test]
async fn a_deny_in_one_dimension_consumes_nothing_in_the_others() {
    for l in limiters("cross_dimension_atomicity") {
        let checks = |user: &'static str| {
            [
                (Dimension::Token, "tok", 100),
                (Dimension::User, user, 5),
                (Dimension::Tenant, "ten", 1000),
            ]
        };
        let d = l.check_at(&checks("alice"), 5, T0).await;
        assert!(d.allowed);
        // The user dimension is full: denied, and neither token nor tenant is charged.
        for _ in 0..10 {
            let d = l.check_at(&checks("alice"), 5, T0 + 1).await;
            assert!(!d.allowed);
            assert_eq!(
                d.dimension_hit,
                Some(Dimension::User),
                "{}",
                l.backend_name()
            );
            assert_eq!(d.dimension, Some(Dimension::User));
            assert_eq!((d.limit, d.remaining), (5, 0));
        }
        let d = l.check_at(&checks("bob"), 5, T0 + 2).await;
        assert!(d.allowed, "{}: {d:?}", l.backend_name());
        let tok = d
            .per_dimension
            .iter()
            .find(|s| s.dimension == Dimension::Token)
            .unwrap();
        let ten = d
            .per_dimension
            .iter()
            .find(|s| s.dimension == Dimension::Tenant)
            .unwrap();
        assert_eq!(
            tok.remaining,
            90,
            "{}: token charged by denied requests",
            l.backend_name()
        );
        assert_eq!(
            ten.remaining,
            990,
            "{}: tenant charged by denied requests",
            l.backend_name()
        );
        // Headers show the most constrained dimension: bob's user bucket (0 of 5 left).
        assert_eq!(d.dimension, Some(Dimension::User));
        assert_eq!((d.limit, d.remaining), (5, 0));
    }
}

#[tokio::test]
async fn the_window_slides() {
    for l in limiters("the_window_slides") {
        let c = [(Dimension::Tenant, "ten", 10)];
        assert!(l.check_at(&c, 10, T0 + 1000).await.allowed);
        assert!(!l.check_at(&c, 1, T0 + 2000).await.allowed);
        // A fixed window would reset here; the sliding window still counts all 10 units.
        let d = l.check_at(&c, 1, T0 + W).await;
        assert!(!d.allowed, "{}: {d:?}", l.backend_name());
        // Half a window later, half of them have slid out.
        let half = T0 + W + W / 2;
        let d = l.check_at(&c, 5, half).await;
        assert!(d.allowed, "{}: {d:?}", l.backend_name());
        assert_eq!(d.remaining, 0);
        let d = l.check_at(&c, 1, half).await;
        assert!(!d.allowed);
        // The retry-after it announces is enough: at that moment the request fits.
        let at = half + d.retry_after_secs * 1000;
        assert!(l.check_at(&c, 1, at).await.allowed, "{}", l.backend_name());
        // Two windows after the last use everything is free again.
        let d = l.check_at(&c, 10, T0 + 4 * W).await;
        assert!(d.allowed, "{}: {d:?}", l.backend_name());
    }
}

#[tokio::test]
async fn two_replicas_share_counters() {
    if scai_testkit::services::skip("two_replicas_share_counters") {
        return;
    }
    let p = prefix("two_replicas");
    let url = scai_testkit::services::redis_url();
    let a = redis_limiter_at(&url, &p);
    let b = redis_limiter_at(&url, &p);
    let c = [(Dimension::Token, "shared", 20)];
    let mut admitted = 0;
    for i in 0..30 {
        let l = if i % 2 == 0 { &a } else { &b };
        if l.check_at(&c, 1, T0 + 5).await.allowed {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 20);
    // A third replica with another prefix has its own counters.
    let other = redis_limiter("two_replicas_other");
    assert!(other.check_at(&c, 1, T0 + 5).await.allowed);
}

#[tokio::test]
async fn concurrent_requests_never_overspend() {
    for l in limiters("concurrent_requests_never_overspend") {
        let mut tasks = Vec::new();
        for i in 0..200 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                let checks = [
                    (Dimension::Token, if i % 2 == 0 { "t1" } else { "t2" }, 1000),
                    (Dimension::Tenant, "ten", 50),
                ];
                l.check_at(&checks, 1, T0 + 7).await.allowed
            }));
        }
        let mut admitted = 0;
        for t in tasks {
            if t.await.unwrap() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 50, "{}", l.backend_name());
    }
}

#[tokio::test]
async fn the_server_clock_is_used_by_default() {
    for l in limiters("server_clock") {
        let c = [(Dimension::User, "u", 3)];
        for _ in 0..3 {
            assert!(l.check(&c, 1).await.allowed);
        }
        let d = l.check(&c, 1).await;
        assert!(!d.allowed);
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(d.reset_unix > now_s.saturating_sub(5) && d.reset_unix <= now_s + 65);
    }
}

#[tokio::test]
async fn redis_unreachable_fails_open_then_works_against_a_live_redis() {
    if scai_testkit::services::skip("redis_fail_open") {
        return;
    }
    let dead = format!("redis://127.0.0.1:{}", scai_testkit::free_port());
    let l = redis_limiter_at(&dead, &prefix("fail_open"));
    let c = [(Dimension::Token, "tok", 1)];
    for _ in 0..3 {
        let d = l.check_at(&c, 1, T0).await;
        assert!(d.allowed && d.degraded, "{d:?}");
        assert_eq!((d.limit, d.remaining), (1, 1));
    }
    let live = redis_limiter("fail_open_live");
    let d = live.check_at(&c, 1, T0).await;
    assert!(d.allowed && !d.degraded);
    let d = live.check_at(&c, 1, T0).await;
    assert!(!d.allowed && !d.degraded);
}

#[tokio::test]
async fn rediss_urls_are_accepted_and_bad_urls_refused() {
    // No TLS Redis runs here: a rediss:// limiter must build (TLS provider installed) and,
    // with nothing listening, fail open rather than panic.
    let port = scai_testkit::free_port();
    let l = redis_limiter_at(&format!("rediss://127.0.0.1:{port}/0"), "x");
    let d = l.check(&[(Dimension::Token, "t", 5)], 1).await;
    assert!(d.allowed && d.degraded);
    if !scai_testkit::services::skip("rediss_handshake") {
        // A TLS handshake against the plain-text Redis: the rustls client is really built
        // (no crypto-provider panic) and the failed handshake fails open.
        let plain = scai_testkit::services::redis_url();
        let tls = plain.replacen("redis://", "rediss://", 1);
        let l = redis_limiter_at(&tls, "x");
        let d = l.check(&[(Dimension::Token, "t", 5)], 1).await;
        assert!(d.allowed && d.degraded, "{d:?}");
    }
    for bad in ["http://127.0.0.1:6379", "127.0.0.1:6379", ""] {
        assert!(
            Limiter::redis(bad, RedisOptions::default(), config()).is_err(),
            "{bad:?} accepted"
        );
    }
}

#[tokio::test]
async fn recovers_by_itself_when_redis_comes_back() {
    if scai_testkit::services::skip("redis_recovery") {
        return;
    }
    let Some(bin) = scai_testkit::services::program("REDIS_SERVER", "redis-server") else {
        panic!("redis-server not found (set REDIS_SERVER or SCAI_TEST_SKIP_SERVICES=1)");
    };
    // A private Redis on a free port, so the shared one is never restarted.
    let port = scai_testkit::free_port();
    let start = || {
        std::process::Command::new(&bin)
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn redis-server")
    };
    let mut server = start();
    let l = redis_limiter_at(&format!("redis://127.0.0.1:{port}"), "recovery");
    let c = [(Dimension::Token, "tok", 2)];
    let first = wait_not_degraded(&l, &c).await;
    assert!(first.allowed);
    assert!(l.check_at(&c, 1, T0).await.allowed);
    assert!(!l.check_at(&c, 1, T0).await.allowed);

    server.kill().unwrap();
    server.wait().unwrap();
    let d = l.check_at(&c, 1, T0).await;
    assert!(d.allowed && d.degraded, "{d:?}");

    let mut server = start();
    // Counters died with that Redis; once reconnected the limiter counts again.
    let d = wait_not_degraded(&l, &c).await;
    assert!(d.allowed);
    assert!(l.check_at(&c, 1, T0).await.allowed);
    assert!(!l.check_at(&c, 1, T0).await.allowed);
    server.kill().unwrap();
    server.wait().unwrap();
}

/// Check until the backend answers (the server may still be starting or reconnecting).
async fn wait_not_degraded(l: &Limiter, c: &[(Dimension, &str, u64)]) -> scai_ratelimit::Decision {
    for _ in 0..200 {
        let d = l.check_at(c, 1, T0).await;
        if !d.degraded {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("limiter never reconnected");
}

#[tokio::test]
async fn rejections_and_fail_opens_are_counted_and_headers_rendered() {
    scai_core::metrics::install();
    let metric_config = |p: &str| LimiterConfig {
        window: Duration::from_millis(W),
        metric_prefix: p.to_string(),
    };
    let mut limiters = vec![("mem", Limiter::in_memory(metric_config("rlm_mem")))];
    let run_redis = !scai_testkit::services::skip("rate_limit_metrics");
    if run_redis {
        let options = RedisOptions {
            key_prefix: prefix("metrics"),
            ..RedisOptions::default()
        };
        limiters.push((
            "redis",
            Limiter::redis(
                &scai_testkit::services::redis_url(),
                options,
                metric_config("rlm_redis"),
            )
            .unwrap(),
        ));
    }
    for (name, l) in &limiters {
        let checks = [(Dimension::Token, "t", 100), (Dimension::User, "u", 2)];
        let d = l.check_at(&checks, 2, T0).await;
        assert!(d.allowed);
        let h = d.headers();
        assert_eq!(
            h,
            vec![
                ("X-RateLimit-Limit", "2".to_string()),
                ("X-RateLimit-Remaining", "0".to_string()),
                ("X-RateLimit-Reset", ((T0 + W) / 1000).to_string()),
            ],
            "{name}"
        );
        for _ in 0..3 {
            let d = l.check_at(&checks, 1, T0 + 1).await;
            assert!(!d.allowed);
            assert_eq!(d.headers().last().unwrap().0, "Retry-After");
        }
    }
    // Fail-open through a dead Redis is counted under its own metric.
    let dead = Limiter::redis(
        &format!("redis://127.0.0.1:{}", scai_testkit::free_port()),
        RedisOptions::default(),
        metric_config("rlm_dead"),
    )
    .unwrap();
    assert!(dead.check(&[(Dimension::Tenant, "x", 1)], 1).await.degraded);
    assert!(dead.check(&[(Dimension::Tenant, "x", 1)], 1).await.degraded);

    let text = scai_core::metrics::render();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(
        value("rlm_mem_rate_limit_rejections_total{dimension=\"user\"}"),
        3.0
    );
    if run_redis {
        assert_eq!(
            value("rlm_redis_rate_limit_rejections_total{dimension=\"user\"}"),
            3.0
        );
    }
    assert!(!text.contains("rlm_mem_rate_limit_rejections_total{dimension=\"token\"}"));
    assert_eq!(
        value("rlm_dead_rate_limit_backend_errors_total{backend=\"redis\"}"),
        2.0
    );
}
