//! `weir:plugin/state`: counters and token buckets owned by the host, one
//! namespace per plugin shared by all its instances (on every route),
//! updated atomically.
//!
//! - [`memory`]: this gateway's memory (the default), bounded by the
//!   plugin's quota (`max_state_entries`, `max_state_bytes`);
//! - [`redis`]: one Redis shared by several gateways (`[state] backend`),
//!   with a local fallback (`state_failure = "open"`) or a trap
//!   (`"closed"`) while it is unreachable.
//!
//! The imports are async so a Redis round trip waits without holding a
//! worker; a plugin on the memory backend never awaits anything.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use super::HostState;
use crate::config::{StateBackend, StateFailure};
use crate::plugin::bindings::weir::plugin::state::{Bucket, Host, TakeResult, WindowCount};
use crate::plugin::guard::Guard;
use crate::plugin::limits::Policy;
pub use memory::{PluginStore, Quota, SharedState};
pub use redis::{RedisBackend, RedisSettings, StateUnavailable};

/// Longest key a plugin may use.
pub(crate) const MAX_KEY: usize = 512;

/// One plugin's state as its instances reach it: the local store, and the
/// shared backend when the plugin uses one.
pub(crate) struct StateHandle {
    pub(super) local: Arc<PluginStore>,
    pub(super) quota: Quota,
    remote: Option<Remote>,
}

pub(super) struct Remote {
    pub(super) backend: Arc<RedisBackend>,
    /// `{prefix}:{plugin}:`, so one plugin cannot name another's keys.
    prefix: String,
    failure: StateFailure,
    /// The calling route's concurrency guard: a round trip lends its place.
    pub(super) guard: Arc<Guard>,
}

impl StateHandle {
    /// `plugin`'s state under `policy`: in `memory`, or on `backend` when
    /// there is one and the plugin does not ask for `state = "memory"`.
    pub(crate) fn new(
        memory: &SharedState,
        backend: Option<&Arc<RedisBackend>>,
        plugin: &Arc<str>,
        policy: &Policy,
        guard: &Arc<Guard>,
    ) -> StateHandle {
        let backend = backend.filter(|_| policy.state == StateBackend::Shared);
        StateHandle {
            // A fail-open plugin's local state lives with its backend: it is
            // this gateway's own, whatever other gateways share the process.
            local: match backend {
                Some(b) => b.fallback().plugin(plugin),
                None => memory.plugin(plugin),
            },
            quota: (&policy.limits).into(),
            remote: backend.map(|b| Remote {
                prefix: b.key_prefix(plugin),
                backend: b.clone(),
                failure: policy.state_failure,
                guard: guard.clone(),
            }),
        }
    }

    /// The shared backend if it is up; `Ok(None)` when the call falls back
    /// to local state; an error when the plugin fails closed.
    pub(super) fn remote(&self) -> Result<Option<&Remote>, StateUnavailable> {
        match &self.remote {
            None => Ok(None),
            Some(r) if r.backend.is_up() => Ok(Some(r)),
            Some(r) => r.fall_back(r.backend.down()).map(|()| None),
        }
    }
}

impl Remote {
    pub(super) fn key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }

    /// A fail-open plugin goes on locally (counted); a fail-closed one gets `e`.
    pub(super) fn fall_back(&self, e: StateUnavailable) -> Result<(), StateUnavailable> {
        match self.failure {
            StateFailure::Open => {
                self.backend.fell_back();
                Ok(())
            }
            StateFailure::Closed => Err(e),
        }
    }
}

pub(super) fn check_key(key: &str) -> wasmtime::Result<()> {
    if key.len() > MAX_KEY {
        wasmtime::bail!("state key longer than {MAX_KEY} bytes");
    }
    Ok(())
}

impl Host for HostState {
    async fn incr_window(
        &mut self,
        key: String,
        delta: u64,
        window_ms: u64,
    ) -> wasmtime::Result<WindowCount> {
        self.charge()?;
        check_key(&key)?;
        let s = &self.state;
        if let Some(r) = s.remote()? {
            // Boxed: the round trip's state stays out of the memory path's future.
            let lent = r.guard.lend();
            let result = Box::pin(r.backend.incr_window(&r.key(&key), delta, window_ms)).await;
            lent.resume().await;
            match result {
                Ok(count) => return Ok(count),
                Err(e) => r.fall_back(e)?,
            }
        }
        Ok(s.local.incr_window(key, delta, window_ms, s.quota)?)
    }

    async fn take(
        &mut self,
        key: String,
        bucket: Bucket,
        cost: u32,
    ) -> wasmtime::Result<TakeResult> {
        self.charge()?;
        check_key(&key)?;
        let s = &self.state;
        if let Some(r) = s.remote()? {
            let lent = r.guard.lend();
            let result = Box::pin(r.backend.take(&r.key(&key), bucket, cost)).await;
            lent.resume().await;
            match result {
                Ok(result) => return Ok(result),
                Err(e) => r.fall_back(e)?,
            }
        }
        Ok(s.local.take(key, bucket, cost, s.quota)?)
    }
}

/// The same operations without waiting, for a plugin called directly
/// ([`crate::plugin::direct`]): one whose state is in this gateway's memory.
impl HostState {
    /// The plugin's local store, after the checks every state call makes.
    fn local_now(&mut self, key: &str) -> wasmtime::Result<&StateHandle> {
        self.charge()?;
        check_key(key)?;
        if self.state.remote.is_some() {
            wasmtime::bail!("a direct call cannot reach the shared state backend");
        }
        Ok(&self.state)
    }

    pub(crate) fn incr_window_now(
        &mut self,
        key: String,
        delta: u64,
        window_ms: u64,
    ) -> wasmtime::Result<WindowCount> {
        let s = self.local_now(&key)?;
        Ok(s.local.incr_window(key, delta, window_ms, s.quota)?)
    }

    pub(crate) fn take_now(
        &mut self,
        key: String,
        bucket: Bucket,
        cost: u32,
    ) -> wasmtime::Result<TakeResult> {
        let s = self.local_now(&key)?;
        Ok(s.local.take(key, bucket, cost, s.quota)?)
    }
}
