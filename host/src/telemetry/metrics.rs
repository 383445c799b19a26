//! Prometheus metrics: one registry per [`crate::Gateway`] (tests run many
//! gateways in one process), scraped from the admin listener's `/metrics`.
//!
//! The request path never looks a label set up: when a snapshot is built,
//! each route gets a [`RouteMetrics`] and each (route, plugin) pair a
//! [`PluginMetrics`] holding the counters and histograms it updates (each
//! one an `Arc` to an atomic). Gauges that describe the snapshot itself
//! (plugin versions, idle instances) are refreshed at scrape time.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

mod custom;

pub use custom::{
    CounterError, MAX_LABEL_VALUE, MAX_LABELS, MAX_NAME, MAX_SERIES_PER_PLUGIN, PluginCounters,
};
use custom::{CustomCounters, PluginReason};

use crate::error::GatewayError;
use crate::plugin::PluginErrorKind;
use crate::snapshot::Snapshot;
use crate::upstream::{Target, Upstream};

/// The `route` label of requests that matched no route.
pub const NO_ROUTE: &str = "-";

const REQUEST_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
// Hook calls are microseconds on a reused instance, tens of them on a fresh one.
const PLUGIN_BUCKETS: [f64; 14] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
    0.5, 1.0,
];

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}
fn plugin_histogram() -> Histogram {
    Histogram::new(PLUGIN_BUCKETS)
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteClass {
    route: String,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    upstream: String,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetError {
    upstream: String,
    target: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginHook {
    plugin: String,
    route: String,
    hook: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginStatus {
    plugin: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginFailure {
    plugin: String,
    route: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginRoute {
    plugin: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginInfo {
    plugin: String,
    sha256: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadResult {
    result: &'static str,
}

/// The metrics of one gateway.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteClass, Counter>,
    request_duration: Histograms<RouteLabels>,
    upstream_duration: Histograms<TargetLabels>,
    upstream_errors: Family<TargetError, Counter>,
    upstream_up: Family<TargetLabels, Gauge>,
    plugin_calls: Family<PluginHook, Counter>,
    plugin_duration: Histograms<PluginHook>,
    plugin_short_circuits: Family<PluginStatus, Counter>,
    plugin_failures: Family<PluginFailure, Counter>,
    plugin_info: Family<PluginInfo, Gauge>,
    plugin_idle: Family<PluginRoute, Gauge>,
    counter_drops: Family<PluginReason, Counter>,
    reloads: Family<ReloadResult, Counter>,
    last_reload: Gauge<f64, AtomicU64>,
    connections_open: Gauge,
    connections: Counter,
    custom: Arc<CustomCounters>,
    unrouted: RouteMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every weir metric registered.
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let requests = Family::<RouteClass, Counter>::default();
        r.register(
            "weir_requests",
            "Requests answered, by route (\"-\" when none matched) and status class",
            requests.clone(),
        );
        let request_duration = Histograms::new_with_constructor(request_histogram as fn() -> _);
        r.register_with_unit(
            "weir_request_duration",
            "Time from the request head to the response head, by route",
            Unit::Seconds,
            request_duration.clone(),
        );
        let upstream_duration = Histograms::new_with_constructor(request_histogram as fn() -> _);
        r.register_with_unit(
            "weir_upstream_duration",
            "Time from sending a request upstream to its response head, by target",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let upstream_errors = Family::<TargetError, Counter>::default();
        r.register(
            "weir_upstream_errors",
            "Upstream exchanges that failed, by target and kind (unavailable, timeout)",
            upstream_errors.clone(),
        );
        let upstream_up = Family::<TargetLabels, Gauge>::default();
        r.register(
            "weir_upstream_up",
            "Passive health: 1 if the last exchange with the target got a response, 0 if it failed",
            upstream_up.clone(),
        );
        let plugin_calls = Family::<PluginHook, Counter>::default();
        r.register(
            "weir_plugin_invocations",
            "Plugin hook calls, by plugin, route and hook (request, response)",
            plugin_calls.clone(),
        );
        let plugin_duration = Histograms::new_with_constructor(plugin_histogram as fn() -> _);
        r.register_with_unit(
            "weir_plugin_duration",
            "Time in a plugin hook call, instance checkout included",
            Unit::Seconds,
            plugin_duration.clone(),
        );
        let plugin_short_circuits = Family::<PluginStatus, Counter>::default();
        r.register(
            "weir_plugin_short_circuits",
            "Requests a plugin answered itself (skipping the upstream), by status",
            plugin_short_circuits.clone(),
        );
        let plugin_failures = Family::<PluginFailure, Counter>::default();
        r.register(
            "weir_plugin_failures",
            "Plugin calls that failed, by kind (trap, timeout, memory, instantiate, bad_reply, config, state_quota)",
            plugin_failures.clone(),
        );
        let plugin_info = Family::<PluginInfo, Gauge>::default();
        r.register(
            "weir_plugin_info",
            "The plugin versions loaded now (sha256 of the .wasm); always 1",
            plugin_info.clone(),
        );
        let plugin_idle = Family::<PluginRoute, Gauge>::default();
        r.register(
            "weir_plugin_idle_instances",
            "Initialised instances waiting in each (route, plugin) pool",
            plugin_idle.clone(),
        );
        let counter_drops = Family::<PluginReason, Counter>::default();
        r.register(
            "weir_plugin_counter_drops",
            "counter-add calls refused: invalid name or labels, or over the series limit",
            counter_drops.clone(),
        );
        let reloads = Family::<ReloadResult, Counter>::default();
        r.register(
            "weir_reloads",
            "Reloads, by result (ok, refused: the old snapshot kept serving)",
            reloads.clone(),
        );
        // Both results exist from the start so `rate()` and alerts see zeros.
        for result in ["ok", "refused"] {
            let _ = reloads.get_or_create(&ReloadResult { result });
        }
        let last_reload = Gauge::<f64, AtomicU64>::default();
        r.register(
            "weir_last_reload_success_timestamp_seconds",
            "When the serving snapshot was loaded (start or reload), Unix time",
            last_reload.clone(),
        );
        let connections_open = Gauge::default();
        r.register(
            "weir_connections_open",
            "Downstream connections open now",
            connections_open.clone(),
        );
        let connections = Counter::default();
        r.register(
            "weir_connections",
            "Downstream connections accepted",
            connections.clone(),
        );
        let custom = Arc::new(CustomCounters::default());
        r.register_collector(Box::new(custom.clone()));

        let mut m = Metrics {
            registry: r,
            requests,
            request_duration,
            upstream_duration,
            upstream_errors,
            upstream_up,
            plugin_calls,
            plugin_duration,
            plugin_short_circuits,
            plugin_failures,
            plugin_info,
            plugin_idle,
            counter_drops,
            reloads,
            last_reload,
            connections_open,
            connections,
            custom,
            unrouted: RouteMetrics::placeholder(),
        };
        m.unrouted = m.route(NO_ROUTE, None);
        m
    }

    /// Handles for one route (and its upstream's targets).
    pub fn route(&self, route: &str, upstream: Option<&Upstream>) -> RouteMetrics {
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|status_class| {
            self.requests.get_or_create_owned(&RouteClass {
                route: route.into(),
                status_class,
            })
        });
        let duration = self.request_duration.get_or_create_owned(&RouteLabels {
            route: route.into(),
        });
        let targets = upstream
            .map(|u| {
                u.targets()
                    .iter()
                    .map(|t| self.target(&u.name, t))
                    .collect()
            })
            .unwrap_or_default();
        RouteMetrics {
            classes,
            duration,
            targets,
        }
    }

    fn target(&self, upstream: &str, target: &Target) -> TargetMetrics {
        let target = target_label(target);
        let labels = TargetLabels {
            upstream: upstream.into(),
            target: target.clone(),
        };
        let error = |kind| {
            self.upstream_errors.get_or_create_owned(&TargetError {
                upstream: upstream.into(),
                target: target.clone(),
                kind,
            })
        };
        TargetMetrics {
            duration: self.upstream_duration.get_or_create_owned(&labels),
            unavailable: error("unavailable"),
            timeout: error("timeout"),
            up: self.upstream_up.get_or_create_owned(&labels),
            label: target.into(),
        }
    }

    /// Handles for requests that matched no route.
    pub fn unrouted(&self) -> &RouteMetrics {
        &self.unrouted
    }

    /// Handles for one plugin on one route.
    pub fn plugin(&self, plugin: &str, route: &str) -> PluginMetrics {
        let hook = |hook| PluginHook {
            plugin: plugin.into(),
            route: route.into(),
            hook,
        };
        let failures = FailureKind::ALL.map(|k| {
            self.plugin_failures.get_or_create_owned(&PluginFailure {
                plugin: plugin.into(),
                route: route.into(),
                kind: k.label(),
            })
        });
        PluginMetrics {
            plugin: plugin.into(),
            route: route.into(),
            request_calls: self.plugin_calls.get_or_create_owned(&hook("request")),
            response_calls: self.plugin_calls.get_or_create_owned(&hook("response")),
            request_duration: self.plugin_duration.get_or_create_owned(&hook("request")),
            response_duration: self.plugin_duration.get_or_create_owned(&hook("response")),
            failures,
            short_circuits: self.plugin_short_circuits.clone(),
            counters: self.custom.for_plugin(plugin, &self.counter_drops),
        }
    }

    /// Counts a reload; a successful one also stamps the time.
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.reloads.get_or_create(&ReloadResult { result }).inc();
        if ok {
            self.loaded();
        }
    }

    /// Stamps the time the serving snapshot was loaded.
    pub fn loaded(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_reload.set(now.as_secs_f64());
    }

    /// Counts a downstream connection until the guard is dropped.
    pub fn connection(&self) -> ConnectionGuard {
        self.connections.inc();
        self.connections_open.inc();
        ConnectionGuard(self.connections_open.clone())
    }

    /// The OpenMetrics text exposition, with the snapshot gauges refreshed from `snap`.
    pub fn encode(&self, snap: Option<&Snapshot>) -> String {
        if let Some(snap) = snap {
            self.refresh(snap);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn refresh(&self, snap: &Snapshot) {
        // Cleared first so plugins and routes removed by a reload disappear.
        self.plugin_info.clear();
        for p in snap.plugins.values() {
            self.plugin_info
                .get_or_create(&PluginInfo {
                    plugin: p.name.to_string(),
                    sha256: p.sha256.clone(),
                })
                .set(1);
        }
        self.plugin_idle.clear();
        for route in &snap.routes {
            for cp in &route.chain {
                self.plugin_idle
                    .get_or_create(&PluginRoute {
                        plugin: cp.name().to_string(),
                        route: route.id.to_string(),
                    })
                    .set(cp.idle_instances() as i64);
            }
        }
    }
}

/// Decrements the open-connection gauge when dropped.
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How a target is named in labels and logs.
pub fn target_label(t: &Target) -> String {
    t.to_string()
}

/// A route's metric handles.
pub struct RouteMetrics {
    classes: [Counter; 5],
    duration: Histogram,
    targets: Vec<TargetMetrics>,
}

impl RouteMetrics {
    fn placeholder() -> RouteMetrics {
        RouteMetrics {
            classes: Default::default(),
            duration: request_histogram(),
            targets: Vec::new(),
        }
    }

    /// Counts one answered request.
    pub fn answered(&self, status: StatusCode, elapsed: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.classes[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// The handles of the upstream target at `index` (see [`Upstream::targets`]).
    pub fn target(&self, index: usize) -> Option<&TargetMetrics> {
        self.targets.get(index)
    }
}

/// One upstream target's metric handles.
pub struct TargetMetrics {
    duration: Histogram,
    unavailable: Counter,
    timeout: Counter,
    up: Gauge,
    /// The target as shown in labels and the access log.
    pub label: Arc<str>,
}

impl TargetMetrics {
    /// Records one exchange: its time to the response head, or how it failed.
    pub fn exchanged(&self, result: Result<(), &GatewayError>, elapsed: Duration) {
        match result {
            Ok(()) => {
                self.duration.observe(elapsed.as_secs_f64());
                self.up.set(1);
            }
            Err(GatewayError::UpstreamTimeout(_)) => {
                self.timeout.inc();
                self.up.set(0);
            }
            Err(GatewayError::UpstreamConnect(_) | GatewayError::UpstreamUnavailable(_)) => {
                self.unavailable.inc();
                self.up.set(0);
            }
            // The client's fault (e.g. body too large): says nothing about the target.
            Err(_) => {}
        }
    }
}

/// Which hook a plugin call ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `on-request`.
    Request,
    /// `on-response`.
    Response,
}

/// How a plugin call failed, as counted in `weir_plugin_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A trap (panic, out-of-bounds access...).
    Trap,
    /// The CPU deadline passed.
    Timeout,
    /// The instance hit its memory limit.
    Memory,
    /// No instance could be created.
    Instantiate,
    /// The plugin returned an invalid reply.
    BadReply,
    /// A fresh instance rejected its config.
    Config,
    /// A new key would pass the plugin's host-state quota.
    StateQuota,
}

impl FailureKind {
    const ALL: [FailureKind; 7] = [
        FailureKind::Trap,
        FailureKind::Timeout,
        FailureKind::Memory,
        FailureKind::Instantiate,
        FailureKind::BadReply,
        FailureKind::Config,
        FailureKind::StateQuota,
    ];

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::Memory => "memory",
            FailureKind::Instantiate => "instantiate",
            FailureKind::BadReply => "bad_reply",
            FailureKind::Config => "config",
            FailureKind::StateQuota => "state_quota",
        }
    }

    /// Classifies a plugin error.
    pub fn of(kind: &PluginErrorKind) -> FailureKind {
        match kind {
            PluginErrorKind::Config(_) => FailureKind::Config,
            PluginErrorKind::Instantiate(_) => FailureKind::Instantiate,
            PluginErrorKind::MemoryLimit(_) => FailureKind::Memory,
            // Some memory-limit hits surface as a trap whose root cause says so.
            PluginErrorKind::Trap(msg) if msg.contains("growing memory") => FailureKind::Memory,
            PluginErrorKind::Trap(_) => FailureKind::Trap,
            PluginErrorKind::CpuDeadline(_)
            | PluginErrorKind::CallTimeout(_)
            | PluginErrorKind::HostCallLimit(_) => FailureKind::Timeout,
            PluginErrorKind::TransferLimit(_) | PluginErrorKind::BadReply(_) => {
                FailureKind::BadReply
            }
            PluginErrorKind::StateQuota(_) => FailureKind::StateQuota,
        }
    }
}

/// One plugin's metric handles on one route.
pub struct PluginMetrics {
    plugin: String,
    route: String,
    request_calls: Counter,
    response_calls: Counter,
    request_duration: Histogram,
    response_duration: Histogram,
    failures: [Counter; FailureKind::ALL.len()],
    short_circuits: Family<PluginStatus, Counter>,
    /// The plugin's own counters (`weir:plugin/metrics`).
    pub counters: Arc<PluginCounters>,
}

impl std::fmt::Debug for PluginMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginMetrics")
            .field("plugin", &self.plugin)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl PluginMetrics {
    /// Counts one hook call and its time.
    pub fn called(&self, hook: Hook, elapsed: Duration) {
        let (calls, duration) = match hook {
            Hook::Request => (&self.request_calls, &self.request_duration),
            Hook::Response => (&self.response_calls, &self.response_duration),
        };
        calls.inc();
        duration.observe(elapsed.as_secs_f64());
    }

    /// Counts an early answer with `status`.
    pub fn short_circuited(&self, status: u16) {
        // Looked up by label: statuses are few, and this is the rarer path.
        self.short_circuits
            .get_or_create(&PluginStatus {
                plugin: self.plugin.clone(),
                route: self.route.clone(),
                status,
            })
            .inc();
    }

    /// Counts a failed call.
    pub fn failed(&self, kind: &PluginErrorKind) {
        let k = FailureKind::of(kind);
        let i = FailureKind::ALL.iter().position(|x| *x == k).unwrap_or(0);
        self.failures[i].inc();
    }
}
