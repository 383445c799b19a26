//! `weir:plugin/cache`: byte values with an expiry, in the plugin's host
//! state (memory, or the shared `[state]` backend with the same fallback
//! rules as counters).

use super::HostState;
use super::state::check_key;
use crate::plugin::bindings::weir::plugin::cache::Host;

/// Longest time a value may be cached.
const MAX_TTL_MS: u64 = 24 * 60 * 60 * 1000;

impl Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        self.charge()?;
        check_key(&key)?;
        let s = &self.state;
        if let Some(r) = s.remote()? {
            let lent = r.guard.lend();
            let result = Box::pin(r.backend.cache_get(&r.key(&key))).await;
            lent.resume().await;
            match result {
                Ok(v) => return Ok(v),
                Err(e) => r.fall_back(e)?,
            }
        }
        Ok(s.local.cache_get(&key))
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u64) -> wasmtime::Result<bool> {
        self.charge()?;
        check_key(&key)?;
        let ttl_ms = ttl_ms.clamp(1, MAX_TTL_MS);
        let s = &self.state;
        if let Some(r) = s.remote()? {
            let lent = r.guard.lend();
            let result = Box::pin(r.backend.cache_set(&r.key(&key), &value, ttl_ms)).await;
            lent.resume().await;
            match result {
                Ok(()) => return Ok(true),
                Err(e) => r.fall_back(e)?,
            }
        }
        Ok(s.local.cache_set(key, value, ttl_ms, s.quota))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.charge()?;
        check_key(&key)?;
        let s = &self.state;
        if let Some(r) = s.remote()? {
            let lent = r.guard.lend();
            let result = Box::pin(r.backend.cache_delete(&r.key(&key))).await;
            lent.resume().await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) => r.fall_back(e)?,
            }
        }
        s.local.cache_delete(&key);
        Ok(())
    }
}
