//! Readiness checks: each dependency is probed concurrently with a timeout, and the result
//! is a map of name -> ok, which products render in their own readiness body.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub type CheckFuture = Pin<Box<dyn Future<Output = bool> + Send>>;

/// One named dependency probe.
pub struct Check {
    pub name: &'static str,
    pub probe: CheckFuture,
}

impl Check {
    pub fn new(name: &'static str, probe: impl Future<Output = bool> + Send + 'static) -> Self {
        Check {
            name,
            probe: Box::pin(probe),
        }
    }
}

/// Run all checks concurrently; a check that does not answer within `timeout` counts as down.
/// Returns whether all passed and the per-check results.
pub async fn run(checks: Vec<Check>, timeout: Duration) -> (bool, BTreeMap<&'static str, bool>) {
    let futs = checks.into_iter().map(|c| async move {
        let ok = tokio::time::timeout(timeout, c.probe)
            .await
            .unwrap_or(false);
        (c.name, ok)
    });
    let results: BTreeMap<_, _> = futures::future::join_all(futs).await.into_iter().collect();
    let all = results.values().all(|ok| *ok);
    (all, results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slow_check_is_down() {
        let (all, r) = run(
            vec![
                Check::new("fast", async { true }),
                Check::new("slow", async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    true
                }),
            ],
            Duration::from_millis(50),
        )
        .await;
        assert!(!all);
        assert!(r["fast"]);
        assert!(!r["slow"]);
    }
}
