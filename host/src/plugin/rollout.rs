//! A plugin rolled out in several versions: which version a request runs,
//! each version's budget, and taking a canary out of rotation.
//!
//! - **Versions.** The first is the stable one; the others are canaries.
//!   Each has a weight; a request runs the version whose range of
//!   `0..total weight` holds its point. The stable version's range comes
//!   first, so widening a canary from 1 to 10 keeps the users it had.
//! - **Stickiness.** The point is a hash of the sticky key ([`Sticky`]) and
//!   the plugin's name: one user keeps one version (across restarts and
//!   gateways too: the hash is fixed), and each plugin draws its canary
//!   users independently. A request runs one version of a plugin for every
//!   hook and every place the plugin has in its chain.
//! - **Budget.** Every hook call of every version is counted in that
//!   version's sliding [`Window`]. A canary whose failure rate or p99 breaks
//!   its [`Budget`] once it has `min_calls` calls in the window is taken out
//!   of rotation at once: its share goes to the stable version, and it is
//!   logged with its figures and counted in `/metrics`. The stable version is
//!   counted and shown, never taken out.
//! - **By hand.** [`Rollout::promote`] sends every request to one version;
//!   [`Rollout::rollback`] takes every canary out; [`Rollout::reset`] goes
//!   back to the manifest's weights. None of this rewrites the manifest.

mod window;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::HeaderName;

pub use window::{Figures, Window};

use super::LoadedPlugin;
use crate::telemetry::metrics::RolloutMetrics;

/// How often (in calls of a slot) a version's latency is judged; failures are judged at once.
const JUDGE_EVERY: u64 = 16;
/// `promoted` when no version is.
const NONE: usize = usize::MAX;

/// What keeps a user on one version (`[plugins.NAME.rollout] sticky`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Sticky {
    /// The client's address (the forwarded one behind trusted proxies).
    #[default]
    ClientIp,
    /// A request header (the client's address when it is absent).
    Header(HeaderName),
    /// Nothing: each request is drawn at random.
    None,
}

impl Sticky {
    /// Parses `"client_ip"`, `"header:NAME"` or `"none"`.
    pub fn parse(text: &str) -> Option<Sticky> {
        match text {
            "client_ip" => Some(Sticky::ClientIp),
            "none" => Some(Sticky::None),
            _ => text
                .strip_prefix("header:")
                .and_then(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                .map(Sticky::Header),
        }
    }
}

impl std::fmt::Display for Sticky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sticky::ClientIp => f.write_str("client_ip"),
            Sticky::Header(h) => write!(f, "header:{h}"),
            Sticky::None => f.write_str("none"),
        }
    }
}

/// A canary's budget (`[plugins.NAME.rollout]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Budget {
    /// `window`: how far back calls are counted.
    #[serde(serialize_with = "millis")]
    pub window: Duration,
    /// `min_calls`: calls in the window before a verdict.
    pub min_calls: u32,
    /// `max_failure_rate`: failed calls as a share of calls.
    pub max_failure_rate: f64,
    /// `max_p99`: longest p99 of its hook calls; `None`: no latency budget.
    #[serde(serialize_with = "opt_millis")]
    pub max_p99: Option<Duration>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            window: Duration::from_secs(60),
            min_calls: 100,
            max_failure_rate: 0.01,
            max_p99: None,
        }
    }
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

fn opt_millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_millis() as u64)),
        None => s.serialize_none(),
    }
}

/// Why a version left rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Its failure rate broke `max_failure_rate`.
    FailureRate,
    /// Its p99 broke `max_p99`.
    Latency,
    /// `POST /plugins/NAME/rollback` (or `weir ctl rollback`).
    Manual,
}

impl Cause {
    /// Every label, in declaration order.
    pub const LABELS: [&'static str; 3] = ["failure_rate", "latency", "manual"];

    /// The label for logs and metrics.
    pub fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// A version taken out of rotation: why, when, and its figures then.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Removal {
    /// Why.
    pub cause: Cause,
    /// When, in seconds since the Unix epoch.
    pub at: u64,
    /// Its window then.
    pub figures: Figures,
}

/// One version of a rolled-out plugin.
pub struct Version {
    /// Its name in metrics, logs and the admin API (`label`, or the file stem).
    pub label: String,
    /// The compiled plugin.
    pub plugin: Arc<LoadedPlugin>,
    /// Its weight in the manifest.
    pub weight: u32,
    window: Window,
    out: AtomicBool,
    removal: Mutex<Option<Removal>>,
}

impl Version {
    /// A version with an empty window of `window`.
    pub fn new(label: String, plugin: Arc<LoadedPlugin>, weight: u32, window: Duration) -> Self {
        Version {
            label,
            plugin,
            weight,
            window: Window::new(window),
            out: AtomicBool::new(false),
            removal: Mutex::new(None),
        }
    }

    /// Whether it is out of rotation.
    pub fn is_out(&self) -> bool {
        self.out.load(Ordering::Relaxed)
    }

    /// Why it is out of rotation, if it is.
    pub fn removal(&self) -> Option<Removal> {
        self.removal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Its calls, failures and p99 over the window now.
    pub fn figures(&self) -> Figures {
        self.window.figures()
    }
}

/// The versions of one plugin and how requests are spread over them.
pub struct Rollout {
    /// The plugin's name.
    pub plugin: Arc<str>,
    /// Its versions, the stable one first.
    pub versions: Vec<Version>,
    /// What keeps a user on one version.
    pub sticky: Sticky,
    /// Each canary's budget.
    pub budget: Budget,
    promoted: AtomicUsize,
    /// Identifies the manifest's versions, weights, stickiness and budget: a
    /// reload that changes none of them keeps this rollout and its state.
    pub fingerprint: String,
    metrics: RolloutMetrics,
}

/// Why a promote or rollback was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No version has that label.
    #[error("plugin `{plugin}` has no version `{label}` (versions: {known})")]
    NoSuchVersion {
        /// The plugin.
        plugin: String,
        /// The label asked for.
        label: String,
        /// The labels it has.
        known: String,
    },
    /// Promote needs a version when there are several canaries.
    #[error("plugin `{plugin}` has several canaries ({known}): say which with `?version=LABEL`")]
    Ambiguous {
        /// The plugin.
        plugin: String,
        /// The canaries' labels.
        known: String,
    },
}

impl std::fmt::Debug for Rollout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollout")
            .field("plugin", &self.plugin)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Rollout {
    /// A rollout of `versions` (stable first) with every version in rotation.
    pub fn new(
        plugin: Arc<str>,
        versions: Vec<Version>,
        sticky: Sticky,
        budget: Budget,
        metrics: RolloutMetrics,
    ) -> Rollout {
        let fingerprint = fingerprint(&versions, &sticky, &budget);
        Rollout {
            plugin,
            versions,
            sticky,
            budget,
            promoted: AtomicUsize::new(NONE),
            fingerprint,
            metrics,
        }
    }

    /// The version a request whose sticky key hashes to `key` runs (`None`:
    /// no key, drawn at random).
    pub fn pick(&self, key: Option<u64>) -> usize {
        let promoted = self.promoted.load(Ordering::Relaxed);
        if promoted != NONE && !self.versions[promoted].is_out() {
            return promoted;
        }
        let weight = |v: &Version| if v.is_out() { 0 } else { u64::from(v.weight) };
        let total: u64 = self.versions.iter().map(weight).sum();
        if total == 0 {
            return 0;
        }
        let key = key.unwrap_or_else(|| fastrand::u64(..));
        // A point in 0..total that moves little as weights change.
        let mut point = (key % 1_000_000) * total / 1_000_000;
        for (i, v) in self.versions.iter().enumerate() {
            let w = weight(v);
            if point < w {
                return i;
            }
            point -= w;
        }
        0
    }

    /// The hash of a sticky key for this plugin.
    pub fn key_hash(&self, key: &[u8]) -> u64 {
        // FNV-1a, then a SplitMix64 finish: fixed, so stickiness survives restarts.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.plugin.as_bytes().iter().chain(&[0xff]).chain(key) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    }

    /// Counts one hook call of version `i`; a canary that now breaks its
    /// budget is taken out of rotation.
    pub fn observe(&self, i: usize, took: Duration, failed: bool) {
        let Some(v) = self.versions.get(i) else {
            return;
        };
        let in_slot = v.window.record(took, failed);
        if i == 0 || v.is_out() || !(failed || in_slot.is_multiple_of(JUDGE_EVERY)) {
            return;
        }
        let f = v.window.figures();
        if f.calls < u64::from(self.budget.min_calls) {
            return;
        }
        let cause = if f.failure_rate > self.budget.max_failure_rate {
            Cause::FailureRate
        } else if let (Some(max), Some(p99)) = (self.budget.max_p99, f.p99)
            && p99 > max
        {
            Cause::Latency
        } else {
            return;
        };
        self.take_out(i, cause, f);
    }

    fn take_out(&self, i: usize, cause: Cause, figures: Figures) -> bool {
        let v = &self.versions[i];
        if v.out.swap(true, Ordering::Relaxed) {
            return false;
        }
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        *v.removal.lock().unwrap_or_else(|p| p.into_inner()) = Some(Removal { cause, at, figures });
        if self.promoted.load(Ordering::Relaxed) == i {
            self.promoted.store(NONE, Ordering::Relaxed);
        }
        self.metrics.rolled_back(&v.label, cause.label());
        let budget = &self.budget;
        tracing::warn!(
            plugin = %self.plugin,
            version = %v.label,
            sha256 = %v.plugin.sha256,
            cause = cause.label(),
            calls = figures.calls,
            failures = figures.failures,
            failure_rate = figures.failure_rate,
            max_failure_rate = budget.max_failure_rate,
            p99_us = figures.p99.map(|d| d.as_micros() as u64),
            max_p99_us = budget.max_p99.map(|d| d.as_micros() as u64),
            window_s = budget.window.as_secs_f64(),
            stable = %self.versions[0].label,
            "plugin version rolled back: out of rotation, its share goes to the stable version"
        );
        true
    }

    /// Sends every request to version `label` (the only canary when
    /// `None`), putting it back in rotation if it was out.
    pub fn promote(&self, label: Option<&str>) -> Result<&Version, ControlError> {
        let i = match label {
            Some(l) => self.find(l)?,
            None if self.versions.len() == 2 => 1,
            None => {
                return Err(ControlError::Ambiguous {
                    plugin: self.plugin.to_string(),
                    known: self.labels(1),
                });
            }
        };
        let v = &self.versions[i];
        v.out.store(false, Ordering::Relaxed);
        *v.removal.lock().unwrap_or_else(|p| p.into_inner()) = None;
        v.window.clear();
        self.promoted.store(i, Ordering::Relaxed);
        tracing::warn!(plugin = %self.plugin, version = %v.label, sha256 = %v.plugin.sha256, "plugin version promoted by hand: it serves every request");
        Ok(v)
    }

    /// Takes every canary out of rotation: the stable version serves every request.
    pub fn rollback(&self) {
        self.promoted.store(NONE, Ordering::Relaxed);
        for (i, v) in self.versions.iter().enumerate().skip(1) {
            self.take_out(i, Cause::Manual, v.window.figures());
        }
    }

    /// Back to the manifest's weights, every version in rotation, windows empty.
    pub fn reset(&self) {
        self.promoted.store(NONE, Ordering::Relaxed);
        for v in &self.versions {
            v.out.store(false, Ordering::Relaxed);
            *v.removal.lock().unwrap_or_else(|p| p.into_inner()) = None;
            v.window.clear();
        }
        tracing::info!(plugin = %self.plugin, "plugin rollout reset to the manifest's weights");
    }

    /// The version promoted by hand, if one is.
    pub fn promoted(&self) -> Option<&Version> {
        self.versions.get(self.promoted.load(Ordering::Relaxed))
    }

    /// Each version's share of requests now, in per cent.
    pub fn shares(&self) -> Vec<f64> {
        let promoted = self.promoted.load(Ordering::Relaxed);
        if promoted != NONE && !self.versions[promoted].is_out() {
            return (0..self.versions.len())
                .map(|i| if i == promoted { 100.0 } else { 0.0 })
                .collect();
        }
        let weights: Vec<u64> = self
            .versions
            .iter()
            .map(|v| if v.is_out() { 0 } else { u64::from(v.weight) })
            .collect();
        let total: u64 = weights.iter().sum();
        if total == 0 {
            let mut s = vec![0.0; weights.len()];
            s[0] = 100.0;
            return s;
        }
        weights
            .iter()
            .map(|w| *w as f64 * 100.0 / total as f64)
            .collect()
    }

    fn find(&self, label: &str) -> Result<usize, ControlError> {
        self.versions
            .iter()
            .position(|v| v.label == label || v.plugin.sha256.starts_with(label))
            .ok_or_else(|| ControlError::NoSuchVersion {
                plugin: self.plugin.to_string(),
                label: label.to_string(),
                known: self.labels(0),
            })
    }

    fn labels(&self, skip: usize) -> String {
        self.versions
            .iter()
            .skip(skip)
            .map(|v| v.label.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn fingerprint(versions: &[Version], sticky: &Sticky, budget: &Budget) -> String {
    let mut s = format!("{sticky} {budget:?}");
    for v in versions {
        s.push_str(&format!(" {}={}@{}", v.label, v.plugin.sha256, v.weight));
    }
    s
}
