//! `weir:plugin/clock`: wall-clock time.

use super::HostState;
use crate::plugin::bindings::weir::plugin::clock::Host;

impl Host for HostState {
    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        self.charge()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(now.as_millis() as u64)
    }
}
