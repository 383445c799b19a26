//! The manifest as written: raw TOML structs, parsed with unknown keys
//! rejected. [`crate::snapshot`] resolves it into the runtime form.
//!
//! ```toml
//! [server]
//! listen = ["127.0.0.1:8080"]
//!
//! [upstreams.api]
//! targets = ["http://127.0.0.1:9000"]
//!
//! [plugins.key-auth]
//! path = "plugins/key_auth.wasm"
//!
//! [state]
//! backend = "redis://127.0.0.1:6379/0"
//!
//! [[routes]]
//! id = "api"
//! prefix = "/api"
//! upstream = "api"
//! [[routes.plugins]]
//! name = "key-auth"
//! config = { keys = [{ key = "k1", consumer = "alice" }] }
//! ```

mod diag;
mod duration;
pub mod field;
mod rollout;
mod size;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use crate::upstream::Settings;

/// `[log] format` (defined beside the logger, which config may import).
pub use crate::telemetry::logging::LogFormat;
pub use diag::{ConfigError, Location};
pub use duration::Duration;
pub use rollout::{CompileCache, PluginVersion, Rollout};
pub use size::ByteSize;

/// A parsed manifest plus where it came from, for error messages.
#[derive(Debug)]
pub struct Manifest {
    /// The manifest's path as given.
    pub path: PathBuf,
    /// The TOML source, kept to turn byte spans into line and column.
    pub source: String,
    /// The parsed content.
    pub doc: Document,
}

/// The top-level TOML document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// `[server]`: listeners and connection limits.
    #[serde(default)]
    pub server: Server,
    /// `[upstreams.NAME]`: named groups of targets.
    #[serde(default)]
    pub upstreams: BTreeMap<Spanned<Name>, Upstream>,
    /// `[plugins.NAME]`: the WebAssembly filters routes may use.
    #[serde(default)]
    pub plugins: BTreeMap<Spanned<Name>, Plugin>,
    /// `[[routes]]`: matched by host and path, longest match wins.
    #[serde(default)]
    pub routes: Vec<Spanned<Route>>,
    /// `[log]`: log format and level, applied at start.
    #[serde(default)]
    pub log: Log,
    /// `[admin]`: the admin listener (health, metrics, reload); none when absent.
    pub admin: Option<Spanned<Admin>>,
    /// `[tracing]`: OpenTelemetry trace export over OTLP; off when absent.
    pub tracing: Option<Spanned<Tracing>>,
    /// `[state]`: where plugins' host state lives; in memory when absent.
    pub state: Option<Spanned<State>>,
    /// `[compile_cache]`: compiled plugins kept in memory and on disk.
    pub compile_cache: Option<Spanned<CompileCache>>,
}

/// `[tracing]`: spans of sampled requests sent to an OTLP collector.
/// Defaults are [`crate::telemetry::otlp::TracingSettings`]'s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// `endpoint`: the collector's OTLP/HTTP URL; `/v1/traces` is appended
    /// when it has no path (`"http://127.0.0.1:4318"`).
    pub endpoint: Spanned<String>,
    /// `protocol`: `"http/protobuf"`, the only one built in.
    pub protocol: Option<Spanned<String>>,
    /// `headers_env`: an environment variable holding export headers as
    /// `name=value,name2=value2` (read at load; credentials stay out of the manifest).
    pub headers_env: Option<Spanned<String>>,
    /// `sampling`: share of new traces sampled, 0.0 to 1.0 (default 1.0); a
    /// caller's `traceparent` sampled flag decides for the traces it continues.
    pub sampling: Option<Spanned<f64>>,
    /// `service_name`: the resource's `service.name` (default `"weir"`).
    pub service_name: Option<Spanned<String>>,
    /// `resource`: more resource attributes, e.g. `{ "service.instance.id" = "gw-1" }`.
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// `queue`: requests whose spans may wait for export (default 2048); more are dropped and counted.
    pub queue: Option<Spanned<usize>>,
    /// `timeout`: time allowed for one export (default 10s).
    pub timeout: Option<Duration>,
}

/// `[state]`: the backend of the `weir:plugin/state` interface, shared by
/// every plugin unless one says `state = "memory"`.
///
/// ```toml
/// [state]
/// backend = "redis://10.0.0.5:6379/0"   # or "rediss://..." (TLS), or "memory"
/// password_env = "WEIR_REDIS_PASSWORD"  # the password, never in the URL
/// timeout = "50ms"                      # one round trip, then the failure policy
/// prefix = "weir"                       # keys are `prefix:plugin:key`
/// ca = "redis-ca.pem"                   # rediss:// only: trusted CAs (system roots by default)
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// `backend`: `"memory"` (default) or a `redis://` / `rediss://` URL with an optional `/db`.
    pub backend: Spanned<String>,
    /// `password_env`: the environment variable holding the Redis password, read at load.
    pub password_env: Option<Spanned<String>>,
    /// `timeout`: longest wait for one Redis round trip (default `"50ms"`).
    pub timeout: Option<Spanned<Duration>>,
    /// `prefix`: the first part of every key (default `"weir"`), so gateways
    /// that must not share limits can share one Redis.
    pub prefix: Option<Spanned<String>>,
    /// `ca`: PEM file of CA certificates trusted for a `rediss://` backend
    /// (relative to the manifest); the system's roots when absent.
    pub ca: Option<Spanned<PathBuf>>,
}

/// `[plugins.NAME] state`: which backend holds the plugin's host state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// `[state] backend` (in memory when there is no `[state]`).
    #[default]
    Shared,
    /// This gateway's memory, whatever `[state]` says.
    Memory,
}

/// `[plugins.NAME] state_failure`: what a state call does while the shared
/// backend is unreachable or slower than `[state] timeout`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateFailure {
    /// Count in this gateway's memory until the backend is back (limits
    /// then hold per gateway, not across them).
    #[default]
    Open,
    /// Trap: the hook fails and the route's `fail` policy answers.
    Closed,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// `format`: `"human"` (default) or `"json"`; `--log-format` wins over it.
    #[serde(default)]
    pub format: LogFormat,
    /// `level`: a filter such as `"info"` or `"info,weir::access=off"`; `RUST_LOG` wins over it.
    pub level: Option<Spanned<String>>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `listen`: the admin listener's address (default `127.0.0.1:9901`).
    #[serde(default = "default_admin_listen")]
    pub listen: Spanned<String>,
    /// `token`: a bearer token required on every admin endpoint but `/healthz` and `/readyz`.
    pub token: Option<Spanned<String>>,
    /// `token_env`: the environment variable holding that token, read at start.
    pub token_env: Option<Spanned<String>>,
}

fn default_admin_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9901".to_string())
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// `listen`: addresses to serve HTTP/1.1 and h2c on.
    #[serde(default = "default_listen")]
    pub listen: Vec<Spanned<String>>,
    /// `header_read_timeout`: time a client has to send the request head.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Duration,
    /// `max_header_bytes`: cap on the request head (HTTP/1) or header list (HTTP/2).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// `max_body_bytes`: cap on a request body; larger bodies get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// `max_headers`: most header fields in a request head (HTTP/1); more get 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// `max_uri_bytes`: longest request target; longer ones get 414.
    #[serde(default = "default_max_uri_bytes")]
    pub max_uri_bytes: usize,
    /// `body_read_timeout`: longest wait for the next piece of a request body (408).
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout: Duration,
    /// `idle_timeout`: a connection with no request in flight this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// `max_connections`: open client connections; more wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// `shutdown_timeout`: how long SIGTERM waits for in-flight requests before closing.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Duration,
    /// `trusted_proxies`: peers (`IP` or `IP/prefix`) whose `X-Forwarded-For` is kept and extended.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// `allow_underscore_headers`: keep header names with `_` (dropped by default).
    #[serde(default)]
    pub allow_underscore_headers: bool,
    /// `allow_encoded_slashes`: pass `%2F`/`%5C` in paths on (refused with 400 by default).
    #[serde(default)]
    pub allow_encoded_slashes: bool,
    /// `[server.tls]`: HTTPS listeners and their certificates; none when absent.
    pub tls: Option<Spanned<Tls>>,
    /// `workers`: threads serving client connections, each with a
    /// single-threaded runtime and its own listening socket (`SO_REUSEPORT`);
    /// 0 (the default) serves them on one shared multi-threaded runtime.
    /// Opt-in: it saves ~1.1k instructions per request (BENCHMARKS.md), but
    /// without work stealing a long plugin call stalls its worker's other
    /// connections, and upstream pools are still shared across workers.
    /// Read at start.
    #[serde(default)]
    pub workers: Option<usize>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: default_listen(),
            header_read_timeout: default_header_read_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_body_bytes: default_max_body_bytes(),
            max_headers: default_max_headers(),
            max_uri_bytes: default_max_uri_bytes(),
            body_read_timeout: default_body_read_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
            shutdown_timeout: default_shutdown_timeout(),
            trusted_proxies: Vec::new(),
            allow_underscore_headers: false,
            allow_encoded_slashes: false,
            tls: None,
            workers: None,
        }
    }
}

/// `[server.tls]`: TLS termination. HTTP/2 and HTTP/1.1 are offered by ALPN.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// `listen`: addresses to serve HTTPS on (beside, not instead of, `[server] listen`).
    pub listen: Vec<Spanned<String>>,
    /// `handshake_timeout`: time a client has to complete the TLS handshake (default 10s).
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Duration,
    /// `[[server.tls.certificates]]`: chosen by SNI; the first also serves
    /// clients that send no name or a name no certificate lists.
    #[serde(default)]
    pub certificates: Vec<Spanned<Certificate>>,
}

/// `[[server.tls.certificates]]`: one certificate chain, its key and the names it serves.
/// The files are re-read on every reload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// `cert`: PEM certificate chain, leaf first (relative to the manifest).
    pub cert: Spanned<PathBuf>,
    /// `key`: PEM private key (PKCS#8, PKCS#1 or SEC1), relative to the manifest.
    pub key: Spanned<PathBuf>,
    /// `names`: SNI names served with it: `a.example.com` or `*.example.com`
    /// (one label). Only the first (default) certificate may leave it out.
    #[serde(default)]
    pub names: Vec<Spanned<String>>,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_listen() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "127.0.0.1:8080".to_string())]
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_header_bytes() -> usize {
    32 * 1024
}
fn default_max_body_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_max_uri_bytes() -> usize {
    8 * 1024
}
fn default_body_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `[upstreams.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `targets`: `"http://host:port"`, `"https://host:port"`, `{ url = "...", weight = 3 }`
    /// or `"builtin:echo"`.
    pub targets: Vec<Spanned<TargetSpec>>,
    /// `balance`: `"round_robin"` (default, weighted), `"least_request"` or `"consistent_hash"`.
    #[serde(default)]
    pub balance: Balance,
    /// `hash_on`: the consistent-hash key: `"client_ip"` (default) or `"header:NAME"`.
    pub hash_on: Option<Spanned<String>>,
    /// `connect_timeout`: time to open a connection (TCP and TLS) to a target.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// `request_timeout`: time from sending the request to the response head.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Duration,
    /// `idle_timeout`: how long an unused pooled connection is kept.
    #[serde(default = "default_upstream_idle_timeout")]
    pub idle_timeout: Duration,
    /// `retries`: extra attempts, on another target, for an idempotent request
    /// without a body whose connection failed (default 1).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// `retry_budget`: retries allowed as a share of requests (default 0.2), so
    /// retries cannot multiply load on a failing upstream.
    #[serde(default = "default_retry_budget")]
    pub retry_budget: f64,
    /// `max_requests`: requests in flight to this upstream; more get 503 (default 1024).
    #[serde(default = "default_max_requests")]
    pub max_requests: usize,
    /// `protocol`: `"http1"` (default) or `"h2c"` (HTTP/2 without TLS) for `http://`
    /// targets; `https://` targets negotiate HTTP/2 or HTTP/1.1 by ALPN.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// `ca`: PEM file of CA certificates trusted for `https://` targets
    /// (relative to the manifest); the system's roots when absent.
    pub ca: Option<Spanned<PathBuf>>,
    /// `[upstreams.NAME.health]`: active health checks; none when absent.
    pub health: Option<Spanned<HealthCheck>>,
    /// `[upstreams.NAME.passive]`: ejection after consecutive failures.
    #[serde(default)]
    pub passive: Passive,
}

/// One entry of `targets`: a URL, or a table with a URL and a weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    /// The URL (or `builtin:echo`).
    pub url: String,
    /// The share of requests it gets relative to the others (1 to 1000).
    pub weight: u32,
}

impl<'de> Deserialize<'de> for TargetSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            url: String,
            #[serde(default = "one")]
            weight: u32,
        }
        fn one() -> u32 {
            1
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = TargetSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a URL string or a table `{ url = \"...\", weight = N }`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TargetSpec, E> {
                Ok(TargetSpec {
                    url: v.to_string(),
                    weight: 1,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<TargetSpec, A::Error> {
                let t = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                if !(1..=1000).contains(&t.weight) {
                    return Err(serde::de::Error::custom(format!(
                        "weight {} is out of range: use 1 to 1000",
                        t.weight
                    )));
                }
                Ok(TargetSpec {
                    url: t.url,
                    weight: t.weight,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// How an upstream picks a target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// In turn, in proportion to the weights.
    #[default]
    RoundRobin,
    /// The less busy of two targets drawn at random (weighted).
    LeastRequest,
    /// The same key goes to the same target while it is healthy.
    ConsistentHash,
}

/// How the gateway speaks to `http://` targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge, without TLS.
    H2c,
}

/// `[upstreams.NAME.health]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `path`: requested with GET; a 2xx or 3xx answer is healthy.
    pub path: Spanned<String>,
    /// `interval`: time between checks of each target (default 5s).
    #[serde(default = "default_health_interval")]
    pub interval: Duration,
    /// `timeout`: time a check may take (default 2s).
    #[serde(default = "default_health_timeout")]
    pub timeout: Duration,
    /// `healthy_threshold`: passes in a row that bring a target back (default 2).
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// `unhealthy_threshold`: failures in a row that take a target out (default 3).
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

/// `[upstreams.NAME.passive]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Passive {
    /// `consecutive_failures`: failed exchanges (connect error, timeout, 502/503/504)
    /// in a row that eject a target; 0 turns ejection off (default 5).
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// `ejection`: how long an ejected target is skipped (default 30s).
    #[serde(default = "default_ejection")]
    pub ejection: Duration,
}

impl Default for Passive {
    fn default() -> Self {
        Passive {
            consecutive_failures: default_consecutive_failures(),
            ejection: default_ejection(),
        }
    }
}

// Upstream defaults are the runtime's own (`upstream::Settings::default`), stated once.
fn default_connect_timeout() -> Duration {
    Duration(Settings::default().connect_timeout)
}
fn default_request_timeout() -> Duration {
    Duration(Settings::default().request_timeout)
}
fn default_upstream_idle_timeout() -> Duration {
    Duration(Settings::default().idle_timeout)
}
fn default_retries() -> u32 {
    Settings::default().retries
}
fn default_retry_budget() -> f64 {
    Settings::default().retry_budget
}
fn default_max_requests() -> usize {
    Settings::default().max_requests
}
fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_consecutive_failures() -> u32 {
    Settings::default().passive.consecutive_failures
}
fn default_ejection() -> Duration {
    Duration(Settings::default().passive.ejection)
}

/// `[plugins.NAME]`: where the component is, what it may use and how much.
///
/// Every limit has a safe default (see [`crate::plugin::Limits`]); the
/// manifest can tighten or loosen each one per plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    /// `path`: the component `.wasm`, relative to the manifest (or `versions`).
    pub path: Option<Spanned<PathBuf>>,
    /// `versions`: several builds sharing the traffic by weight, the first
    /// being the stable one (instead of `path`).
    #[serde(default)]
    pub versions: Vec<Spanned<PluginVersion>>,
    /// `[plugins.NAME.rollout]`: stickiness and each canary's budget (with `versions`).
    pub rollout: Option<Spanned<Rollout>>,
    /// `sha256`: hex digest the file must have; any other file is refused at load.
    pub sha256: Option<Spanned<String>>,
    /// `isolation`: `"pooled"` (reused instances) or `"request"` (fresh per request).
    #[serde(default)]
    pub isolation: Isolation,
    /// `max_memory`: linear memory one instance may grow to (default `"64MiB"`).
    pub max_memory: Option<Spanned<ByteSize>>,
    /// `cpu_deadline`: time one hook call may run wasm code (default `"50ms"`).
    pub cpu_deadline: Option<Spanned<Duration>>,
    /// `call_timeout`: wall time one hook call may take, waits included (default `"1s"`).
    pub call_timeout: Option<Spanned<Duration>>,
    /// `max_host_calls`: calls into `weir:plugin` imports per hook call (default 10000).
    pub max_host_calls: Option<Spanned<u32>>,
    /// `max_handles`: live resource handles per instance (default 1024).
    pub max_handles: Option<Spanned<u32>>,
    /// `max_module_bytes`: largest `.wasm` file accepted (default `"32MiB"`).
    pub max_module_bytes: Option<Spanned<ByteSize>>,
    /// `max_headers`: headers a plugin may leave on a message or put in a reply (default 256).
    pub max_headers: Option<Spanned<u32>>,
    /// `max_header_bytes`: total header bytes (names and values) after a plugin edit (default `"64KiB"`).
    pub max_header_bytes: Option<Spanned<ByteSize>>,
    /// `max_reply_body`: largest body of a plugin's own reply (default `"64KiB"`).
    pub max_reply_body: Option<Spanned<ByteSize>>,
    /// `max_concurrency`: hook calls running at once per route (default: worker threads - 1).
    pub max_concurrency: Option<Spanned<u32>>,
    /// `max_log_rate`: log bytes per second, all instances together (default `"64KiB"`).
    pub max_log_rate: Option<Spanned<ByteSize>>,
    /// `max_state_entries`: keys the plugin may hold in host state, all its
    /// instances and routes together (default 10000).
    pub max_state_entries: Option<Spanned<u32>>,
    /// `max_state_bytes`: host state the plugin may hold, counted as each key's
    /// length plus a fixed cost per entry (default `"1MiB"`, at least `"1KiB"`).
    pub max_state_bytes: Option<Spanned<ByteSize>>,
    /// `max_body_bytes`: largest body the plugin is handed or may set, when it
    /// asks for bodies (default `"1MiB"`; a request over it gets 413, a response 502).
    pub max_body_bytes: Option<Spanned<ByteSize>>,
    /// `max_outbound_calls`: outbound HTTP calls per hook call (default 8).
    pub max_outbound_calls: Option<Spanned<u32>>,
    /// `max_outbound_body`: largest response body of an outbound call (default `"1MiB"`).
    pub max_outbound_body: Option<Spanned<ByteSize>>,
    /// `state`: `"shared"` (default: `[state] backend`) or `"memory"` (this gateway only).
    #[serde(default)]
    pub state: StateBackend,
    /// `state_failure`: `"open"` (default: local state while the shared
    /// backend is down) or `"closed"` (state calls trap).
    #[serde(default)]
    pub state_failure: StateFailure,
    /// `grants`: capabilities beyond the inert default.
    #[serde(default)]
    pub grants: Grants,
}

impl Plugin {
    /// Every file this plugin names: `path`, or each of `versions`.
    pub fn files(&self) -> impl Iterator<Item = &Spanned<PathBuf>> {
        self.path
            .iter()
            .chain(self.versions.iter().map(|v| &v.get_ref().path))
    }

    /// The file of its stable version (`path`, or the first of `versions`).
    pub fn stable_path(&self) -> Option<&Spanned<PathBuf>> {
        self.files().next()
    }
}

/// `grants = { ... }` in `[plugins.NAME]`: what a plugin may reach beyond its
/// `weir:plugin` imports. Everything not granted here is absent or inert.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// `env`: names of the gateway's environment variables the plugin may read.
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
    /// `stdio`: `"discard"` (default) or `"log"` (stdout/stderr lines into the gateway log).
    #[serde(default)]
    pub stdio: Stdio,
    /// `http`: names of `[upstreams.*]` the plugin may call with
    /// `weir:plugin/outbound`. Absent, a plugin importing outbound HTTP is
    /// refused at load; `[]` loads it with every call refused.
    #[serde(default)]
    pub http: Option<Vec<Spanned<String>>>,
}

/// Where a plugin's stdout and stderr go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stdio {
    /// Thrown away.
    #[default]
    Discard,
    /// Each line becomes a `weir::plugin` log record tagged with plugin and route.
    Log,
}

/// How plugin instances are reused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A pool of instances per (route, plugin), each serving one request at a time.
    #[default]
    Pooled,
    /// A fresh instance for every request: nothing outlives a request.
    Request,
}

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `id`: unique name, shown in logs and to plugins.
    pub id: Spanned<Name>,
    /// `host`: exact host (`api.example.com`) or wildcard (`*.example.com`); any host if absent.
    pub host: Option<Spanned<String>>,
    /// `path`: match this path exactly.
    pub path: Option<Spanned<String>>,
    /// `prefix`: match this path and everything below it (segment-wise).
    pub prefix: Option<Spanned<String>>,
    /// `methods`: allowed methods; any if absent.
    pub methods: Option<Vec<Spanned<String>>>,
    /// `upstream`: an `[upstreams]` name, an `http://` URL or `builtin:echo`.
    pub upstream: Spanned<String>,
    /// `[[routes.plugins]]`: the chain, in order.
    #[serde(default)]
    pub plugins: Vec<Spanned<RoutePlugin>>,
}

/// `[[routes.plugins]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePlugin {
    /// `name`: a `[plugins]` name.
    pub name: Spanned<String>,
    /// `config`: the table handed to the plugin (as JSON) when it loads.
    #[serde(default)]
    pub config: Option<Spanned<toml::Table>>,
    /// `fail`: what a failure of this plugin (trap, timeout, limit) does to the request.
    #[serde(default)]
    pub fail: Fail,
    /// `fail_status`: the status a fail-closed failure answers with (default 503).
    pub fail_status: Option<Spanned<u16>>,
}

/// Failure policy of one plugin in one route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fail {
    /// Answer `fail_status` (503) and never reach the upstream.
    #[default]
    Closed,
    /// Skip the plugin (its changes are dropped) and go on with the chain.
    Open,
}

/// A validated name: letters, digits, `-` and `_`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Name(String);

impl Name {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let mut chars = s.chars();
        let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && s.len() <= 64;
        if ok {
            Ok(Name(s))
        } else {
            Err(format!(
                "invalid name `{s}`: use up to 64 letters, digits, `-` or `_`, starting with a letter"
            ))
        }
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Manifest {
    /// Reads and parses the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path, None, format!("cannot read the manifest: {e}"))
                .help("check the path given to `weir run` / `weir check`")
        })?;
        Self::parse(path, source)
    }

    /// Parses manifest text; `path` is only used in messages and to resolve plugin paths.
    pub fn parse(path: &Path, source: String) -> Result<Manifest, ConfigError> {
        match toml::from_str::<Document>(&source) {
            Ok(doc) => Ok(Manifest {
                path: path.to_path_buf(),
                source,
                doc,
            }),
            Err(e) => {
                let loc = e.span().map(|s| Location::from_offset(&source, s.start));
                let msg = e.message().trim_end().to_string();
                let help = diag::help_for_parse_error(&msg);
                let mut err = ConfigError::new(path, loc, msg);
                if let Some(h) = help {
                    err = err.help(h);
                }
                Err(err)
            }
        }
    }

    /// An error located at `span` in this manifest.
    pub fn error_at(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> ConfigError {
        let loc = (span != (0..0)).then(|| Location::from_offset(&self.source, span.start));
        ConfigError::new(&self.path, loc, message)
    }

    /// The directory plugin paths are relative to.
    pub fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}
