//! What one plugin may consume and reach: [`Limits`] (memory, CPU, wall time,
//! host calls, handles, module size, what it may hand back, host state) and [`Grants`]
//! (capabilities beyond the inert default), resolved from `[plugins.NAME]`.

use std::time::Duration;

use wasmtime::ResourceLimiter;

use crate::config::{StateBackend, StateFailure, Stdio};

/// Largest `max_memory` a manifest may set: the pooling allocator's slot size.
pub const MAX_MEMORY_CEILING: usize = 1 << 30;
/// Shortest `cpu_deadline`: one epoch tick.
pub const MIN_CPU_DEADLINE: Duration = super::EPOCH_TICK;
/// `init` (and instantiation) gets at least this much CPU, since it runs off the request path.
pub const MIN_INIT_DEADLINE: Duration = Duration::from_secs(1);
/// ...and at least this much wall time when loading, so a stuck `init` fails the load instead of hanging it.
pub const MIN_INIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest header value a plugin may set.
pub const MAX_HEADER_VALUE: usize = 16 * 1024;
/// Log records a plugin may emit per hook call; later ones are dropped.
pub const MAX_LOG_RECORDS: u32 = 100;
/// Bytes of stdout/stderr kept per hook call when `stdio = "log"`; the rest is dropped.
pub const MAX_STDIO_BYTES: usize = 16 * 1024;
/// Bytes each host-state entry counts against `max_state_bytes` on top of its
/// key's length: the entry itself (40 bytes) plus 64 for the key's header and
/// the hash table's slot.
pub const STATE_ENTRY_OVERHEAD: usize = 104;
/// Smallest `max_state_bytes`: room for one entry with the longest key.
pub const MIN_STATE_BYTES: usize = 1 << 10;

/// Resource limits of one plugin; [`Limits::default`] holds the documented
/// defaults. `weir audit --json` and the admin `/plugins` serialise this
/// struct as it is (durations in milliseconds), so they cannot disagree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// `max_memory`: bytes of linear memory an instance may grow to.
    pub max_memory: usize,
    /// `cpu_deadline`: time one hook call may spend running wasm, counted in epoch ticks.
    #[serde(rename = "cpu_deadline_ms", serialize_with = "millis")]
    pub cpu_deadline: Duration,
    /// `call_timeout`: wall time one hook call may take, including instantiation
    /// (`isolation = "request"`) and waits in host calls (e.g. a WASI sleep).
    #[serde(rename = "call_timeout_ms", serialize_with = "millis")]
    pub call_timeout: Duration,
    /// `max_host_calls`: calls into `weir:plugin` imports per hook call.
    pub max_host_calls: u32,
    /// `max_handles`: entries in an instance's resource table (WASI streams, pollables...).
    pub max_handles: u32,
    /// `max_module_bytes`: largest `.wasm` accepted, so compile time stays bounded.
    pub max_module_bytes: usize,
    /// `max_headers`: headers a plugin may leave on a request or response, or put in a reply.
    pub max_headers: usize,
    /// `max_header_bytes`: total bytes of header names and values after a plugin's edit.
    pub max_header_bytes: usize,
    /// `max_reply_body`: largest body of a reply a plugin answers with.
    pub max_reply_body: usize,
    /// `max_concurrency`: hook calls of this plugin on one route running at
    /// once; more wait their turn. `None`: every worker thread but one.
    pub max_concurrency: Option<u32>,
    /// `max_log_rate`: bytes per second of log records and output lines the
    /// plugin may emit, all instances and routes together (one second's worth
    /// of burst); the rest is dropped and counted.
    pub max_log_rate: usize,
    /// `max_state_entries`: keys the plugin may hold in host state (`weir:plugin/state`),
    /// all its instances and routes together.
    pub max_state_entries: usize,
    /// `max_state_bytes`: bytes of host state the plugin may hold: each key's
    /// length plus [`STATE_ENTRY_OVERHEAD`] per entry.
    pub max_state_bytes: usize,
    /// `max_body_bytes`: largest request or response body the plugin is
    /// handed (when it asks for bodies) or may set.
    pub max_body_bytes: usize,
    /// `max_outbound_calls`: outbound HTTP calls per hook call.
    pub max_outbound_calls: u32,
    /// `max_outbound_body`: largest response body an outbound call hands back.
    pub max_outbound_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory: 64 << 20,
            cpu_deadline: Duration::from_millis(50),
            call_timeout: Duration::from_secs(1),
            max_host_calls: 10_000,
            max_handles: 1024,
            max_module_bytes: 32 << 20,
            max_headers: 256,
            max_header_bytes: 64 << 10,
            max_reply_body: 64 << 10,
            max_concurrency: None,
            max_log_rate: 64 << 10,
            max_state_entries: 10_000,
            max_state_bytes: 1 << 20,
            max_body_bytes: 1 << 20,
            max_outbound_calls: 8,
            max_outbound_body: 1 << 20,
        }
    }
}

impl Limits {
    /// Bytes a plugin may hand the host in one call (strings and lists lifted
    /// out of its memory, e.g. a reply): 1 MiB, or twice what a maximal reply
    /// or body needs if that is more. Bounds the host memory one call can cost
    /// even when a hand-crafted list points many entries at the same bytes.
    pub fn max_transfer(&self) -> usize {
        let largest = self.max_reply_body.max(self.max_body_bytes);
        (2 * (largest + self.max_header_bytes)).max(1 << 20)
    }

    /// CPU budget of one hook call, in epoch ticks (at least one).
    pub fn hook_ticks(&self) -> u32 {
        ticks(self.cpu_deadline)
    }

    /// CPU budget of instantiation plus `init`, in epoch ticks.
    pub fn init_ticks(&self) -> u32 {
        ticks(self.cpu_deadline.max(MIN_INIT_DEADLINE))
    }
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_millis())
}

fn ticks(d: Duration) -> u32 {
    let t = d.as_millis() / super::EPOCH_TICK.as_millis();
    u32::try_from(t).unwrap_or(u32::MAX).max(1)
}

/// Capabilities granted beyond the `weir:plugin` imports and an inert WASI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Environment variables the plugin sees, with their values when the manifest was loaded.
    /// Names that were not set in the gateway's environment are absent.
    pub env: Vec<(String, String)>,
    /// The names granted, as written (for `weir audit`).
    pub env_names: Vec<String>,
    /// Where stdout and stderr go.
    pub stdio: Stdio,
    /// `http`: the `[upstreams.NAME]` the plugin may call (`weir:plugin/outbound`);
    /// `None` when the manifest does not say (such a plugin may not import it).
    pub http: Option<Vec<String>>,
}

/// Everything the manifest says about one plugin's sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Resource limits.
    pub limits: Limits,
    /// Capability grants.
    pub grants: Grants,
    /// `sha256`: the digest the file must have, lower-case hex.
    pub sha256: Option<String>,
    /// `state`: the shared backend (`[state]`) or this gateway's memory.
    pub state: StateBackend,
    /// `state_failure`: what state calls do while the shared backend is down.
    pub state_failure: StateFailure,
}

/// A hook called `weir:plugin` imports more than `max_host_calls` times.
#[derive(Debug, thiserror::Error)]
#[error("made more than {0} host calls in one hook call (`max_host_calls`)")]
pub(crate) struct HostCallLimit(pub u32);

/// A new key in a plugin's host state would pass `max_state_entries` or
/// `max_state_bytes`, even after its idle entries were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "host state is full: {entries} entries / {bytes} bytes (`max_state_entries` / `max_state_bytes`)"
)]
pub struct StateQuota {
    /// `max_state_entries` in force.
    pub entries: usize,
    /// `max_state_bytes` in force.
    pub bytes: usize,
}

/// Why the limiter stopped an instance.
#[derive(Debug, thiserror::Error)]
#[error("linear memory would grow to {desired} bytes, over the {limit}-byte `max_memory`")]
pub(crate) struct MemoryLimit {
    pub desired: usize,
    pub limit: usize,
}

/// Caps what one store may allocate: memory (trapping with [`MemoryLimit`]), tables and instances.
pub(crate) struct StoreLimiter {
    pub max_memory: usize,
}

impl ResourceLimiter for StoreLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            return Err(MemoryLimit {
                desired,
                limit: self.max_memory,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a Rust plugin needs a few hundred.
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        16
    }

    fn memories(&self) -> usize {
        4
    }
}
