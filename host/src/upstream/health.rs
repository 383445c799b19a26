//! Active health checks: every `interval`, a GET of `path` on each target;
//! `unhealthy_threshold` failures in a row take a target out of balancing,
//! `healthy_threshold` passes in a row bring it back.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, header};

use super::{Target, Upstream};
use crate::body;

/// `[upstreams.NAME.health]`, resolved.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// Path requested with GET.
    pub path: String,
    /// Time between rounds.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Passes in a row that bring a target back.
    pub healthy_threshold: u32,
    /// Failures in a row that take a target out.
    pub unhealthy_threshold: u32,
}

/// Checks the upstream's targets until it is dropped (a reload replaced it).
pub(super) async fn run(upstream: Weak<Upstream>, check: HealthCheck) {
    // New targets start healthy; the first round comes one interval in.
    let start = tokio::time::Instant::now() + check.interval;
    let mut ticks = tokio::time::interval_at(start, check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(up) = upstream.upgrade() else { return };
        let mut round = tokio::task::JoinSet::new();
        for (i, ep) in up.endpoints.iter().enumerate() {
            if matches!(ep.target, Target::Http { .. }) {
                let up = up.clone();
                let check = check.clone();
                round.spawn(async move {
                    let passed = probe(&up, i, &check).await;
                    record(&up, i, passed, &check);
                });
            }
        }
        drop(up);
        while round.join_next().await.is_some() {}
    }
}

async fn probe(up: &Upstream, i: usize, check: &HealthCheck) -> Result<(), String> {
    let target = &up.endpoints[i].target;
    let Target::Http { authority, .. } = target else {
        return Ok(());
    };
    let req = Request::get(format!("{}{}", target.base_url(), check.path))
        .header(header::HOST, authority.as_str())
        .header(header::USER_AGENT, "weir-health-check")
        .body(body::empty())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(check.timeout, up.client.request(req)).await {
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
        Ok(Err(e)) => Err(crate::error::chain(&e)),
        Ok(Ok(resp)) if resp.status().is_success() || resp.status().is_redirection() => Ok(()),
        Ok(Ok(resp)) => Err(format!("status {}", resp.status().as_u16())),
    }
}

fn record(up: &Upstream, i: usize, passed: Result<(), String>, check: &HealthCheck) {
    let ep = &up.endpoints[i];
    let (passes, failures) = &ep.checks;
    match passed {
        Ok(()) => {
            failures.store(0, Ordering::Relaxed);
            let n = passes.fetch_add(1, Ordering::Relaxed) + 1;
            if !ep.healthy() && n >= check.healthy_threshold {
                ep.healthy.store(true, Ordering::Relaxed);
                // A target that passes checks again also leaves passive ejection.
                ep.ejected_until.store(0, Ordering::Relaxed);
                tracing::info!(upstream = %up.name, target = %ep.target, "target healthy again");
            }
        }
        Err(why) => {
            passes.store(0, Ordering::Relaxed);
            let n = failures.fetch_add(1, Ordering::Relaxed) + 1;
            if ep.healthy() && n >= check.unhealthy_threshold {
                ep.healthy.store(false, Ordering::Relaxed);
                tracing::warn!(upstream = %up.name, target = %ep.target, path = %check.path, reason = %why, failures = n, "target unhealthy: health check failed");
            }
        }
    }
}
