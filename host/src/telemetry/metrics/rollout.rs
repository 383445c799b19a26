//! Metrics of plugin rollouts and of the compile cache:
//!
//! - `weir_plugin_rollbacks_total{plugin,version,cause}`: versions taken out
//!   of rotation (`failure_rate`, `latency`, `manual`);
//! - `weir_plugin_version_share{plugin,version,sha256}`: each version's
//!   share of requests now, in per cent (set at scrape time);
//! - `weir_plugin_version_window_calls` and `..._failures{plugin,version}`:
//!   what its budget window holds (set at scrape time);
//! - `weir_plugin_loads_total{source}`: plugin loads by where the compiled
//!   code came from (`memory`, `disk`, `compiled`).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RollbackLabels {
    plugin: String,
    version: String,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShareLabels {
    plugin: String,
    version: String,
    sha256: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    plugin: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

/// The rollout families of one registry.
pub(super) struct Families {
    rollbacks: Family<RollbackLabels, Counter>,
    share: Family<ShareLabels, Gauge<f64, AtomicU64>>,
    window_calls: Family<VersionLabels, Gauge>,
    window_failures: Family<VersionLabels, Gauge>,
    loads: Family<SourceLabel, Counter>,
}

/// One version as the scraper sees it.
pub struct VersionGauges<'a> {
    /// Plugin name.
    pub plugin: &'a str,
    /// Version label.
    pub version: &'a str,
    /// Its sha256.
    pub sha256: &'a str,
    /// Its share of requests, per cent.
    pub share: f64,
    /// Calls in its budget window.
    pub calls: u64,
    /// Failed calls in its budget window.
    pub failures: u64,
}

impl Families {
    pub(super) fn register(r: &mut Registry) -> Families {
        let f = Families {
            rollbacks: Family::default(),
            share: Family::default(),
            window_calls: Family::default(),
            window_failures: Family::default(),
            loads: Family::default(),
        };
        r.register(
            "weir_plugin_rollbacks",
            "Plugin versions taken out of rotation, by plugin, version and cause (failure_rate, latency, manual)",
            f.rollbacks.clone(),
        );
        r.register(
            "weir_plugin_version_share",
            "Share of requests each version of a rolled-out plugin gets now, in per cent",
            f.share.clone(),
        );
        r.register(
            "weir_plugin_version_window_calls",
            "Hook calls in each plugin version's budget window",
            f.window_calls.clone(),
        );
        r.register(
            "weir_plugin_version_window_failures",
            "Failed hook calls in each plugin version's budget window",
            f.window_failures.clone(),
        );
        r.register(
            "weir_plugin_loads",
            "Plugin loads by where the compiled code came from (memory, disk, compiled)",
            f.loads.clone(),
        );
        f
    }

    pub(super) fn for_plugin(&self, plugin: &str) -> RolloutMetrics {
        RolloutMetrics {
            plugin: plugin.to_string(),
            rollbacks: self.rollbacks.clone(),
        }
    }

    pub(super) fn loaded(&self, source: &'static str) {
        self.loads.get_or_create(&SourceLabel { source }).inc();
    }

    pub(super) fn set<'a>(&self, versions: impl IntoIterator<Item = VersionGauges<'a>>) {
        self.share.clear();
        self.window_calls.clear();
        self.window_failures.clear();
        for v in versions {
            self.share
                .get_or_create(&ShareLabels {
                    plugin: v.plugin.into(),
                    version: v.version.into(),
                    sha256: v.sha256.into(),
                })
                .set(v.share);
            let labels = VersionLabels {
                plugin: v.plugin.into(),
                version: v.version.into(),
            };
            self.window_calls
                .get_or_create(&labels)
                .set(i64::try_from(v.calls).unwrap_or(i64::MAX));
            self.window_failures
                .get_or_create(&labels)
                .set(i64::try_from(v.failures).unwrap_or(i64::MAX));
        }
    }
}

/// The rollback counter of one plugin.
#[derive(Clone, Debug)]
pub struct RolloutMetrics {
    plugin: String,
    rollbacks: Family<RollbackLabels, Counter>,
}

impl RolloutMetrics {
    /// Handles registered nowhere (for rollouts built outside a gateway).
    pub fn detached(plugin: &str) -> RolloutMetrics {
        RolloutMetrics {
            plugin: plugin.to_string(),
            rollbacks: Family::default(),
        }
    }

    /// Counts a version taken out of rotation.
    pub fn rolled_back(&self, version: &str, cause: &'static str) {
        self.rollbacks
            .get_or_create(&RollbackLabels {
                plugin: self.plugin.clone(),
                version: version.to_string(),
                cause,
            })
            .inc();
    }
}
