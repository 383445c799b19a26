//! `weir:plugin/clock`: wall-clock time, and the clock `weir test` moves.
//!
//! Time as plugins and host state see it is the system's plus an offset that
//! only `weir test` changes (to run a rate-limit case a minute later without
//! waiting a minute). A serving gateway never touches it: the offset is 0.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::HostState;
use crate::plugin::bindings::weir::plugin::clock::Host;

/// Time added by [`advance`], seen by the wall clock and by host state.
static ADVANCED_MS: AtomicU64 = AtomicU64::new(0);
/// Wall-clock shift set by [`set_wall_ms`].
static WALL_SKEW_MS: AtomicI64 = AtomicI64::new(0);

/// Moves plugin time (wall clock and host state windows/buckets) forward.
pub fn advance(ms: u64) {
    ADVANCED_MS.fetch_add(ms, Ordering::Relaxed);
}

/// The total of every [`advance`].
pub fn advanced_ms() -> u64 {
    ADVANCED_MS.load(Ordering::Relaxed)
}

/// Shifts the wall clock so that it reads `unix_ms` now.
pub fn set_wall_ms(unix_ms: u64) {
    let skew = unix_ms as i64 - system_ms() as i64 - advanced_ms() as i64;
    WALL_SKEW_MS.store(skew, Ordering::Relaxed);
}

/// Puts the wall clock back on the system's time (advances stay in host state).
pub fn reset_wall() {
    WALL_SKEW_MS.store(-(advanced_ms() as i64), Ordering::Relaxed);
}

/// Milliseconds since the Unix epoch, as plugins see them.
pub fn wall_ms() -> u64 {
    let ms = system_ms() as i64 + advanced_ms() as i64 + WALL_SKEW_MS.load(Ordering::Relaxed);
    ms.max(0) as u64
}

fn system_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Host for HostState {
    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        self.charge()?;
        Ok(wall_ms())
    }
}
