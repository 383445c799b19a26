//! Prometheus metrics: one registry per [`crate::Gateway`] (tests run many
//! gateways in one process), scraped from the admin listener's `/metrics`.
//!
//! The request path never looks a label set up: when a snapshot is built,
//! each route gets a [`RouteMetrics`] and each (route, plugin) pair a
//! [`PluginMetrics`] holding the counters and histograms it updates (each
//! one an `Arc` to an atomic). Gauges that describe the snapshot itself
//! (plugin versions, idle instances) are set by the scraper from the serving
//! snapshot ([`Metrics::set_snapshot_gauges`]). Labels come in as plain
//! strings: this module knows nothing of the snapshot, upstreams or errors.

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
mod rollout;

pub use custom::{
    CounterError, MAX_LABEL_VALUE, MAX_LABELS, MAX_NAME, MAX_SERIES_PER_PLUGIN, PluginCounters,
};
use custom::{CustomCounters, PluginLabel, PluginReason};
pub use rollout::{RolloutMetrics, VersionGauges};

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

// A Redis round trip is a fraction of a millisecond nearby, up to the `[state] timeout`.
const STATE_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

fn state_histogram() -> Histogram {
    Histogram::new(STATE_BUCKETS)
}
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
    reason: &'static str,
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
struct DropReason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateBackendLabel {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateBackendError {
    backend: String,
    kind: &'static str,
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
    log_drops: Family<PluginLabel, Counter>,
    state_duration: Histograms<StateBackendLabel>,
    state_errors: Family<StateBackendError, Counter>,
    state_up: Family<StateBackendLabel, Gauge>,
    state_fallbacks: Family<StateBackendLabel, Counter>,
    reloads: Family<ReloadResult, Counter>,
    last_reload: Gauge<f64, AtomicU64>,
    connections_open: Gauge,
    connections: Counter,
    spans_exported: Counter,
    spans_dropped: Family<DropReason, Counter>,
    custom: Arc<CustomCounters>,
    rollout: rollout::Families,
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
    #[expect(
        clippy::too_many_lines,
        reason = "one registration per metric family, in exposition order"
    )]
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
            "Plugin calls that failed, by reason (the `reason` of the gateway's log line)",
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
        let log_drops = Family::<PluginLabel, Counter>::default();
        r.register(
            "weir_plugin_log_dropped",
            "Plugin log records and output lines dropped: over max_log_rate or the per-call caps",
            log_drops.clone(),
        );
        let state_duration = Histograms::new_with_constructor(state_histogram as fn() -> _);
        r.register_with_unit(
            "weir_state_backend_duration",
            "Round trips to the shared state backend (`[state]`), answered or not",
            Unit::Seconds,
            state_duration.clone(),
        );
        let state_errors = Family::<StateBackendError, Counter>::default();
        r.register(
            "weir_state_backend_errors",
            "Round trips to the shared state backend that failed, by kind (timeout, error)",
            state_errors.clone(),
        );
        let state_up = Family::<StateBackendLabel, Gauge>::default();
        r.register(
            "weir_state_backend_up",
            "1 while the shared state backend answers, 0 while plugins fall back or fail",
            state_up.clone(),
        );
        let state_fallbacks = Family::<StateBackendLabel, Counter>::default();
        r.register(
            "weir_state_backend_fallbacks",
            "State calls of fail-open plugins served from local memory while the backend was down",
            state_fallbacks.clone(),
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
        let spans_exported = Counter::default();
        r.register(
            "weir_trace_spans_exported",
            "Spans the OTLP collector accepted ([tracing])",
            spans_exported.clone(),
        );
        let spans_dropped = Family::<DropReason, Counter>::default();
        r.register(
            "weir_trace_spans_dropped",
            "Spans not exported, by reason (queue_full, export_failed); requests are never held for them",
            spans_dropped.clone(),
        );
        for reason in SpanDrops::REASONS {
            let _ = spans_dropped.get_or_create(&DropReason { reason });
        }
        let custom = Arc::new(CustomCounters::default());
        r.register_collector(Box::new(custom.clone()));

        let rollout = rollout::Families::register(&mut r);
        let mut m = Metrics {
            rollout,
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
            log_drops,
            state_duration,
            state_errors,
            state_up,
            state_fallbacks,
            reloads,
            last_reload,
            connections_open,
            connections,
            spans_exported,
            spans_dropped,
            custom,
            unrouted: RouteMetrics::placeholder(),
        };
        m.unrouted = m.route(NO_ROUTE, "", &[]);
        m
    }

    /// Handles for the shared state backend at `backend` (its URL).
    pub fn state_backend(&self, backend: &str) -> StateBackendMetrics {
        let label = StateBackendLabel {
            backend: backend.to_string(),
        };
        let error = |kind| {
            self.state_errors.get_or_create_owned(&StateBackendError {
                backend: backend.to_string(),
                kind,
            })
        };
        StateBackendMetrics {
            duration: self.state_duration.get_or_create_owned(&label),
            timeouts: error("timeout"),
            errors: error("error"),
            up: self.state_up.get_or_create_owned(&label),
            fallbacks: self.state_fallbacks.get_or_create_owned(&label),
        }
    }

    /// Handles for one route, and for each of its upstream's `targets`
    /// (labelled as given, in that order; see [`RouteMetrics::target`]).
    pub fn route(&self, route: &str, upstream: &str, targets: &[String]) -> RouteMetrics {
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|status_class| {
            self.requests.get_or_create_owned(&RouteClass {
                route: route.into(),
                status_class,
            })
        });
        let duration = self.request_duration.get_or_create_owned(&RouteLabels {
            route: route.into(),
        });
        let targets = targets.iter().map(|t| self.target(upstream, t)).collect();
        RouteMetrics {
            classes,
            duration,
            targets,
        }
    }

    fn target(&self, upstream: &str, target: &str) -> TargetMetrics {
        let labels = TargetLabels {
            upstream: upstream.into(),
            target: target.into(),
        };
        let error = |kind| {
            self.upstream_errors.get_or_create_owned(&TargetError {
                upstream: upstream.into(),
                target: target.into(),
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

    /// Handles for one plugin on one route; `reasons` are the failure labels
    /// the plugin runtime reports, counted by their index.
    pub fn plugin(&self, plugin: &str, route: &str, reasons: &[&'static str]) -> PluginMetrics {
        let hook = |hook| PluginHook {
            plugin: plugin.into(),
            route: route.into(),
            hook,
        };
        let failures = reasons
            .iter()
            .map(|&reason| {
                self.plugin_failures.get_or_create_owned(&PluginFailure {
                    plugin: plugin.into(),
                    route: route.into(),
                    reason,
                })
            })
            .collect();
        PluginMetrics {
            plugin: plugin.into(),
            route: route.into(),
            request_calls: self.plugin_calls.get_or_create_owned(&hook("request")),
            response_calls: self.plugin_calls.get_or_create_owned(&hook("response")),
            request_duration: self.plugin_duration.get_or_create_owned(&hook("request")),
            response_duration: self.plugin_duration.get_or_create_owned(&hook("response")),
            failures,
            short_circuits: self.plugin_short_circuits.clone(),
            counters: self
                .custom
                .for_plugin(plugin, &self.counter_drops, &self.log_drops),
        }
    }

    /// The rollback counter of a rolled-out plugin.
    pub fn rollout(&self, plugin: &str) -> RolloutMetrics {
        self.rollout.for_plugin(plugin)
    }

    /// Counts a plugin load by where its compiled code came from
    /// (`memory`, `disk`, `compiled`).
    pub fn plugin_loaded(&self, source: &'static str) {
        self.rollout.loaded(source);
    }

    /// Replaces the per-version gauges of rolled-out plugins (set at scrape
    /// time from the serving snapshot, like [`Metrics::set_snapshot_gauges`]).
    pub fn set_version_gauges<'a>(&self, versions: impl IntoIterator<Item = VersionGauges<'a>>) {
        self.rollout.set(versions);
    }

    /// The span export counters ([`crate::telemetry::otlp`]).
    pub fn span_export(&self) -> SpanDrops {
        let drop = |reason| {
            self.spans_dropped
                .get_or_create_owned(&DropReason { reason })
        };
        SpanDrops {
            exported: self.spans_exported.clone(),
            queue_full: drop("queue_full"),
            export_failed: drop("export_failed"),
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

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Replaces the gauges that describe the serving snapshot (the caller
    /// reads them from it just before a scrape): `weir_plugin_info`, one
    /// series per loaded `(plugin, sha256)`, and `weir_plugin_idle_instances`
    /// per `(plugin, route, idle)`. Series not given again disappear, as
    /// after a reload that removed a plugin or a route.
    pub fn set_snapshot_gauges<'a>(
        &self,
        plugins: impl IntoIterator<Item = (&'a str, &'a str)>,
        idle: impl IntoIterator<Item = (&'a str, &'a str, usize)>,
    ) {
        self.plugin_info.clear();
        for (plugin, sha256) in plugins {
            self.plugin_info
                .get_or_create(&PluginInfo {
                    plugin: plugin.to_string(),
                    sha256: sha256.to_string(),
                })
                .set(1);
        }
        self.plugin_idle.clear();
        for (plugin, route, idle) in idle {
            self.plugin_idle
                .get_or_create(&PluginRoute {
                    plugin: plugin.to_string(),
                    route: route.to_string(),
                })
                .set(idle as i64);
        }
    }
}

/// What became of the spans handed to the exporter.
#[derive(Clone, Debug)]
pub struct SpanDrops {
    /// Accepted by the collector.
    pub exported: Counter,
    /// Refused because the export queue was full.
    pub queue_full: Counter,
    /// Lost in an export that failed (collector down, refused, timed out).
    pub export_failed: Counter,
}

impl SpanDrops {
    /// The `reason` labels of `weir_trace_spans_dropped`.
    pub const REASONS: [&'static str; 2] = ["queue_full", "export_failed"];
}

/// Decrements the open-connection gauge when dropped.
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
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

    /// The handles of the upstream target at `index` in the `targets` given
    /// to [`Metrics::route`].
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
    pub fn exchanged(&self, outcome: Exchange, elapsed: Duration) {
        match outcome {
            Exchange::Answered => {
                self.duration.observe(elapsed.as_secs_f64());
                self.up.set(1);
            }
            Exchange::TimedOut => {
                self.timeout.inc();
                self.up.set(0);
            }
            Exchange::Unavailable => {
                self.unavailable.inc();
                self.up.set(0);
            }
            Exchange::NotTheTarget => {}
        }
    }
}

/// How an exchange with an upstream target ended, as its metrics count it
/// (the proxy derives it from the request's outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// A response head arrived: observed in `weir_upstream_duration`, `weir_upstream_up` 1.
    Answered,
    /// The target did not answer in time: `kind="timeout"`, `weir_upstream_up` 0.
    TimedOut,
    /// No connection, or the exchange broke: `kind="unavailable"`, `weir_upstream_up` 0.
    Unavailable,
    /// Failed for a reason that says nothing about the target (e.g. the
    /// client's body was too large): not counted.
    NotTheTarget,
}

/// Which hook a plugin call ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `on-request`.
    Request,
    /// `on-response`.
    Response,
}

/// The shared state backend's metric handles.
#[derive(Clone)]
pub struct StateBackendMetrics {
    duration: Histogram,
    timeouts: Counter,
    errors: Counter,
    up: Gauge,
    fallbacks: Counter,
}

impl StateBackendMetrics {
    /// Records one round trip's time.
    pub fn round_trip(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a failed round trip: `"timeout"` or `"error"`.
    pub fn error(&self, kind: &'static str) {
        match kind {
            "timeout" => self.timeouts.inc(),
            _ => self.errors.inc(),
        };
    }

    /// Sets the `up` gauge.
    pub fn set_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }

    /// Counts a call served from local state.
    pub fn fell_back(&self) {
        self.fallbacks.inc();
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
    failures: Vec<Counter>,
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

    /// Counts a failed call, by the index of its reason in the list given to [`Metrics::plugin`].
    pub fn failed(&self, reason: usize) {
        if let Some(c) = self.failures.get(reason) {
            c.inc();
        }
    }
}
