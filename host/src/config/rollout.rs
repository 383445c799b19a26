//! The raw form of a plugin rolled out in versions: `versions` and
//! `[plugins.NAME.rollout]`, and `[compile_cache]`.
//!
//! ```toml
//! [plugins.auth]
//! versions = [
//!     { path = "auth-1.4.wasm", weight = 99 },                     # the first is the stable version
//!     { path = "auth-1.5.wasm", weight = 1, sha256 = "9f2c…" },    # canaries after it
//! ]
//! [plugins.auth.rollout]
//! sticky = "header:x-user-id"   # or "client_ip" (default), or "none"
//! window = "60s"                # the budget's sliding window
//! min_calls = 100               # no verdict on fewer hook calls than this
//! max_failure_rate = 0.01       # traps, deadlines, limits: above 1 % → rolled back
//! max_p99 = "20ms"              # p99 of its hook calls (no latency budget when absent)
//!
//! [compile_cache]
//! dir = "/var/cache/weir"       # compiled plugins on disk; in memory only when absent
//! entries = 16                  # compiled plugins kept in memory
//! ```

use std::path::PathBuf;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::Duration;

/// One entry of `versions = [...]` in `[plugins.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginVersion {
    /// `path`: the component `.wasm`, relative to the manifest.
    pub path: Spanned<PathBuf>,
    /// `weight`: its share of requests relative to the other versions
    /// (0 to 10000, default 1); 0 keeps it loaded but sends it nothing.
    #[serde(default = "one")]
    pub weight: Spanned<u32>,
    /// `sha256`: hex digest this version's file must have.
    pub sha256: Option<Spanned<String>>,
    /// `label`: how metrics, logs, `/plugins` and `weir ctl` name it
    /// (default: the file name without `.wasm`).
    pub label: Option<Spanned<String>>,
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

/// `[plugins.NAME.rollout]`: how requests are spread over the versions and
/// the budget each canary (every version but the first) must keep.
/// Defaults are [`crate::plugin::rollout::Budget`]'s.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// `sticky`: what keeps a user on one version: `"client_ip"` (default),
    /// `"header:NAME"` (the client address when the header is absent), or
    /// `"none"` (each request drawn at random).
    pub sticky: Option<Spanned<String>>,
    /// `window`: the sliding window failures and latency are counted over.
    pub window: Option<Spanned<Duration>>,
    /// `min_calls`: hook calls a version must have in the window before its budget is judged.
    pub min_calls: Option<Spanned<u32>>,
    /// `max_failure_rate`: failed hook calls (traps, deadlines, limits) as a
    /// share of its calls, 0.0 to 1.0.
    pub max_failure_rate: Option<Spanned<f64>>,
    /// `max_p99`: the longest p99 of its hook calls; no latency budget when absent.
    pub max_p99: Option<Spanned<Duration>>,
}

/// `[compile_cache]`: where compiled plugins are kept, so going back to a
/// version seen before, or restarting with the same plugins, compiles nothing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompileCache {
    /// `dir`: a directory for compiled plugins (relative to the manifest),
    /// created if missing; it must not be writable by other users.
    pub dir: Option<Spanned<PathBuf>>,
    /// `entries`: compiled plugins kept in memory (default 16).
    pub entries: Option<Spanned<usize>>,
}
