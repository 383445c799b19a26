//! Counters plugins emit through `weir:plugin/metrics`: validated, capped
//! per plugin, and exported as `weir_custom_<name>_total` with `plugin` and
//! `route` labels added by the host.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::telemetry::logging::LogRate;

/// Most distinct series (name + labels + route) one plugin may create with `counter-add`.
pub const MAX_SERIES_PER_PLUGIN: usize = 1000;
/// Most labels on one plugin counter (besides `plugin` and `route`).
pub const MAX_LABELS: usize = 8;
/// Longest counter name, label name or label value a plugin may use.
pub const MAX_NAME: usize = 64;
/// Longest label value a plugin may use.
pub const MAX_LABEL_VALUE: usize = 128;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct PluginLabel {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct PluginReason {
    plugin: String,
    reason: &'static str,
}

/// Why a plugin's `counter-add` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    /// The counter name is not `[a-zA-Z_][a-zA-Z0-9_]*` of at most 64 bytes.
    #[error("invalid counter name {0:?}")]
    Name(String),
    /// A label name is invalid, reserved (`plugin`, `route`, `__*`) or repeated, or a value is too long.
    #[error("invalid label {0:?}")]
    Label(String),
    /// The plugin already has [`MAX_SERIES_PER_PLUGIN`] series.
    #[error("more than {MAX_SERIES_PER_PLUGIN} series")]
    TooManySeries,
}

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord)]
struct SeriesKey {
    name: String,
    route: String,
    labels: Vec<(String, String)>,
}

/// The counters one plugin created through `weir:plugin/metrics`, on every route.
#[derive(Debug)]
pub struct PluginCounters {
    plugin: String,
    series: Mutex<HashMap<SeriesKey, u64>>,
    invalid: Counter,
    over_limit: Counter,
    /// The plugin's log budget (`max_log_rate`), shared by its instances on every route.
    pub log_rate: LogRate,
    log_dropped: Counter,
}

fn is_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    s.len() <= MAX_NAME
        && b.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

impl PluginCounters {
    /// Counts log records (or stdio lines) of this plugin that were dropped.
    pub fn log_dropped(&self) {
        self.log_dropped.inc();
    }

    /// Adds `delta` to the counter `name{labels}` of this plugin on `route`.
    pub fn add(
        &self,
        route: &str,
        name: &str,
        mut labels: Vec<(String, String)>,
        delta: u64,
    ) -> Result<(), CounterError> {
        let result = self.try_add(route, name, &mut labels, delta);
        match &result {
            Ok(()) => {}
            Err(CounterError::TooManySeries) => {
                self.over_limit.inc();
            }
            Err(_) => {
                self.invalid.inc();
            }
        }
        result
    }

    fn try_add(
        &self,
        route: &str,
        name: &str,
        labels: &mut Vec<(String, String)>,
        delta: u64,
    ) -> Result<(), CounterError> {
        // `_total` is added on export; `x_total` would read `x_total_total`.
        if !is_metric_name(name) || name.ends_with("_total") {
            return Err(CounterError::Name(name.into()));
        }
        if labels.len() > MAX_LABELS {
            return Err(CounterError::Label(format!(
                "{} labels, at most {MAX_LABELS}",
                labels.len()
            )));
        }
        labels.sort();
        for (i, (k, v)) in labels.iter().enumerate() {
            let reserved = k == "plugin" || k == "route" || k.starts_with("__");
            let repeated = i > 0 && labels[i - 1].0 == *k;
            if !is_metric_name(k) || reserved || repeated || v.len() > MAX_LABEL_VALUE {
                return Err(CounterError::Label(k.clone()));
            }
        }
        let key = SeriesKey {
            name: name.into(),
            route: route.into(),
            labels: std::mem::take(labels),
        };
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let len = series.len();
        match series.get_mut(&key) {
            Some(v) => *v = v.saturating_add(delta),
            None if len >= MAX_SERIES_PER_PLUGIN => return Err(CounterError::TooManySeries),
            None => {
                series.insert(key, delta);
            }
        }
        Ok(())
    }
}

/// Every plugin's own counters; exported as `weir_custom_<name>_total`.
#[derive(Debug, Default)]
pub(super) struct CustomCounters {
    plugins: Mutex<BTreeMap<String, Arc<PluginCounters>>>,
}

impl CustomCounters {
    pub(super) fn for_plugin(
        &self,
        plugin: &str,
        drops: &Family<PluginReason, Counter>,
        log_drops: &Family<PluginLabel, Counter>,
    ) -> Arc<PluginCounters> {
        let mut plugins = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        plugins
            .entry(plugin.to_string())
            .or_insert_with(|| {
                let reason = |reason| {
                    drops.get_or_create_owned(&PluginReason {
                        plugin: plugin.into(),
                        reason,
                    })
                };
                Arc::new(PluginCounters {
                    plugin: plugin.into(),
                    series: Mutex::default(),
                    invalid: reason("invalid"),
                    over_limit: reason("series_limit"),
                    log_rate: LogRate::default(),
                    log_dropped: log_drops.get_or_create_owned(&PluginLabel {
                        plugin: plugin.into(),
                    }),
                })
            })
            .clone()
    }
}

impl Collector for CustomCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Grouped by name: two plugins may use the same counter name.
        let mut families: BTreeMap<String, Vec<(Labels, u64)>> = BTreeMap::new();
        let plugins: Vec<Arc<PluginCounters>> = self
            .plugins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for p in plugins {
            let series = p.series.lock().unwrap_or_else(|e| e.into_inner());
            for (key, value) in series.iter() {
                let mut labels = vec![
                    ("plugin".to_string(), p.plugin.clone()),
                    ("route".to_string(), key.route.clone()),
                ];
                labels.extend(key.labels.iter().cloned());
                families
                    .entry(key.name.clone())
                    .or_default()
                    .push((labels, *value));
            }
        }
        for (name, mut series) in families {
            series.sort();
            let full_name = format!("weir_custom_{name}");
            let mut family = encoder.encode_descriptor(
                &full_name,
                "A counter a plugin emits through weir:plugin/metrics",
                None,
                MetricType::Counter,
            )?;
            for (labels, value) in &series {
                family
                    .encode_family(labels)?
                    .encode_counter::<NoLabelSet, _, u64>(value, None)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Metrics;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plugin_counters_are_exported_with_plugin_and_route_labels() {
        let m = Metrics::new();
        let p = m.plugin("auth", "api", &[]);
        p.counters
            .add(
                "api",
                "rejected",
                labels(&[("reason", "a \"quoted\"\nvalue")]),
                2,
            )
            .unwrap();
        // Label order does not make a new series.
        p.counters
            .add("api", "hits", labels(&[("b", "2"), ("a", "1")]), 1)
            .unwrap();
        p.counters
            .add("api", "hits", labels(&[("a", "1"), ("b", "2")]), 1)
            .unwrap();
        let text = m.encode();
        assert!(
            text.contains(
                "weir_custom_rejected_total{plugin=\"auth\",route=\"api\",reason=\"a \\\"quoted\\\"\\nvalue\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "weir_custom_hits_total{plugin=\"auth\",route=\"api\",a=\"1\",b=\"2\"} 2\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn invalid_counter_calls_are_refused_and_counted() {
        let m = Metrics::new();
        let c = m.plugin("auth", "api", &[]).counters;
        let long = "x".repeat(MAX_NAME + 1);
        for name in [
            "",
            "1abc",
            "with-dash",
            "x_total",
            "has space",
            long.as_str(),
        ] {
            assert!(
                matches!(c.add("api", name, vec![], 1), Err(CounterError::Name(_))),
                "{name:?}"
            );
        }
        for bad in [
            labels(&[("plugin", "x")]),
            labels(&[("route", "x")]),
            labels(&[("__name__", "x")]),
            labels(&[("a", "1"), ("a", "2")]),
            labels(&[("bad-name", "1")]),
            labels(&[("a", &"v".repeat(MAX_LABEL_VALUE + 1))]),
            (0..=MAX_LABELS)
                .map(|i| (format!("l{i}"), "v".into()))
                .collect(),
        ] {
            assert!(
                matches!(
                    c.add("api", "ok", bad.clone(), 1),
                    Err(CounterError::Label(_))
                ),
                "{bad:?}"
            );
        }
        let text = m.encode();
        assert!(
            text.contains(
                "weir_plugin_counter_drops_total{plugin=\"auth\",reason=\"invalid\"} 13\n"
            ),
            "{text}"
        );
        assert!(!text.contains("weir_custom_"), "{text}");
    }

    #[test]
    fn series_are_capped_per_plugin_across_routes_and_existing_ones_keep_counting() {
        let m = Metrics::new();
        let a = m.plugin("p", "a", &[]).counters;
        let b = m.plugin("p", "b", &[]).counters;
        for i in 0..MAX_SERIES_PER_PLUGIN {
            let (c, route) = if i % 2 == 0 { (&a, "a") } else { (&b, "b") };
            c.add(route, "n", labels(&[("i", &i.to_string())]), 1)
                .unwrap();
        }
        assert_eq!(
            b.add("b", "n", labels(&[("i", "new")]), 1),
            Err(CounterError::TooManySeries)
        );
        a.add("a", "n", labels(&[("i", "0")]), 5).unwrap();
        // Another plugin has its own budget.
        m.plugin("q", "a", &[])
            .counters
            .add("a", "n", vec![], 1)
            .unwrap();
        let text = m.encode();
        assert!(
            text.contains("weir_custom_n_total{plugin=\"p\",route=\"a\",i=\"0\"} 6\n"),
            "{text}"
        );
        assert!(
            text.contains("weir_custom_n_total{plugin=\"q\",route=\"a\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "weir_plugin_counter_drops_total{plugin=\"p\",reason=\"series_limit\"} 1\n"
            ),
            "{text}"
        );
    }
}
