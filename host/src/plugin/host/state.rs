//! `weir:plugin/state`: counters and token buckets owned by the host, shared
//! by every instance of a plugin and updated atomically (in memory for now).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::HostState;
use crate::plugin::bindings::weir::plugin::state::{Bucket, Host, TakeResult, WindowCount};

const SHARDS: usize = 16;
/// Longest key a plugin may use.
const MAX_KEY: usize = 512;
/// Entries per shard before a sweep of idle entries is forced.
const SWEEP_AT: usize = 4096;

/// The in-memory store behind the `state` interface.
pub struct SharedState {
    hasher: RandomState,
    shards: [Mutex<Shard>; SHARDS],
    epoch: Instant,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<String, Entry>,
    next_sweep: usize,
}

enum Entry {
    Window {
        start_ms: u64,
        window_ms: u64,
        count: u64,
    },
    Bucket {
        tokens: f64,
        last_ms: u64,
        capacity: f64,
        rate: f64,
    },
}

impl Entry {
    /// Whether the entry is back at its initial value, so dropping it changes nothing.
    /// `now` may be older than the entry's last update (read before another thread's).
    fn is_idle(&self, now: u64) -> bool {
        match *self {
            Entry::Window {
                start_ms,
                window_ms,
                ..
            } => now >= start_ms + window_ms,
            // A bucket that never refills (rate 0) is idle only while full.
            Entry::Bucket {
                tokens,
                last_ms,
                capacity,
                rate,
            } => tokens + now.saturating_sub(last_ms) as f64 / 1000.0 * rate >= capacity,
        }
    }
}

impl Default for SharedState {
    fn default() -> Self {
        SharedState {
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
            epoch: Instant::now(),
        }
    }
}

impl SharedState {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn with_entry<R>(
        &self,
        key: String,
        now: u64,
        init: impl FnOnce() -> Entry,
        f: impl FnOnce(&mut Entry) -> R,
    ) -> R {
        let shard = &self.shards[self.hasher.hash_one(&key) as usize % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        if shard.entries.len() >= shard.next_sweep.max(SWEEP_AT) {
            shard.entries.retain(|_, e| !e.is_idle(now));
            shard.next_sweep = shard.entries.len() * 2;
        }
        f(shard.entries.entry(key).or_insert_with(init))
    }

    /// Adds `delta` in the fixed window containing now.
    pub fn incr_window(&self, key: String, delta: u64, window_ms: u64) -> WindowCount {
        self.incr_window_at(self.now_ms(), key, delta, window_ms)
    }

    fn incr_window_at(&self, now: u64, key: String, delta: u64, window_ms: u64) -> WindowCount {
        let window_ms = window_ms.max(1);
        let start = now - now % window_ms;
        self.with_entry(
            key,
            now,
            || Entry::Window { start_ms: start, window_ms, count: 0 },
            |e| {
                // A later window (another caller read the clock after us) is kept, not reset.
                if !matches!(e, Entry::Window { start_ms, window_ms: w, .. } if *start_ms >= start && *w == window_ms) {
                    *e = Entry::Window { start_ms: start, window_ms, count: 0 };
                }
                let Entry::Window { start_ms, count, .. } = e else { unreachable!() };
                *count = count.saturating_add(delta);
                WindowCount { count: *count, reset_ms: (*start_ms + window_ms).saturating_sub(now) }
            },
        )
    }

    /// Takes `cost` tokens from a bucket if it has them.
    pub fn take(&self, key: String, bucket: Bucket, cost: u32) -> TakeResult {
        self.take_at(self.now_ms(), key, bucket, cost)
    }

    fn take_at(&self, now: u64, key: String, bucket: Bucket, cost: u32) -> TakeResult {
        let capacity = f64::from(bucket.capacity);
        let rate = if bucket.refill_per_sec.is_finite() {
            bucket.refill_per_sec.max(0.0)
        } else {
            0.0
        };
        let cost = f64::from(cost);
        self.with_entry(
            key,
            now,
            || Entry::Bucket { tokens: capacity, last_ms: now, capacity, rate },
            |e| {
                // A changed shape (config reload) starts a fresh bucket.
                if !matches!(e, Entry::Bucket { capacity: c, rate: r, .. } if *c == capacity && *r == rate) {
                    *e = Entry::Bucket { tokens: capacity, last_ms: now, capacity, rate };
                }
                let Entry::Bucket { tokens, last_ms, .. } = e else { unreachable!() };
                // `now` may be older than the last update (read before another caller's): no refill then.
                let elapsed = now.saturating_sub(*last_ms);
                *tokens = (*tokens + elapsed as f64 / 1000.0 * rate).min(capacity);
                *last_ms = (*last_ms).max(now);
                let allowed = *tokens >= cost;
                if allowed {
                    *tokens -= cost;
                }
                let ms_until = |target: f64| -> u64 {
                    if *tokens >= target {
                        0
                    } else if rate <= 0.0 {
                        u64::MAX
                    } else {
                        Duration::from_secs_f64((target - *tokens) / rate).as_millis() as u64 + 1
                    }
                };
                TakeResult {
                    allowed,
                    remaining: tokens.floor() as u32,
                    retry_after_ms: if allowed { 0 } else { ms_until(cost) },
                    reset_ms: ms_until(capacity),
                }
            },
        )
    }
}

impl HostState {
    fn scoped_key(&self, key: &str) -> wasmtime::Result<String> {
        if key.len() > MAX_KEY {
            wasmtime::bail!("state key longer than {MAX_KEY} bytes");
        }
        // Namespacing by plugin keeps plugins out of each other's counters.
        Ok(format!("{}\u{0}{key}", self.plugin))
    }
}

impl Host for HostState {
    fn incr_window(
        &mut self,
        key: String,
        delta: u64,
        window_ms: u64,
    ) -> wasmtime::Result<WindowCount> {
        self.charge()?;
        let key = self.scoped_key(&key)?;
        Ok(self.shared.incr_window(key, delta, window_ms))
    }

    fn take(&mut self, key: String, bucket: Bucket, cost: u32) -> wasmtime::Result<TakeResult> {
        self.charge()?;
        let key = self.scoped_key(&key)?;
        Ok(self.shared.take(key, bucket, cost))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses_with_retry_after() {
        let s = SharedState::default();
        let b = || Bucket {
            capacity: 3,
            refill_per_sec: 1.0,
        };
        for left in [2, 1, 0] {
            let r = s.take("k".into(), b(), 1);
            assert!(r.allowed);
            assert_eq!(r.remaining, left);
        }
        let r = s.take("k".into(), b(), 1);
        assert!(!r.allowed);
        assert!(
            r.retry_after_ms > 0 && r.retry_after_ms <= 1001,
            "{}",
            r.retry_after_ms
        );
        // Other keys are independent.
        assert!(s.take("other".into(), b(), 1).allowed);
    }

    #[test]
    fn window_counts_accumulate() {
        let s = SharedState::default();
        assert_eq!(s.incr_window("w".into(), 1, 60_000).count, 1);
        assert_eq!(s.incr_window("w".into(), 2, 60_000).count, 3);
    }

    #[test]
    fn a_bucket_that_never_refills_is_kept_until_full_again() {
        let s = SharedState::default();
        let never = || Bucket {
            capacity: 1,
            refill_per_sec: 0.0,
        };
        s.take_at(0, "once".into(), never(), 1);
        // Enough keys for every shard to pass SWEEP_AT and sweep its idle entries.
        for i in 0..2 * SWEEP_AT * SHARDS {
            s.incr_window_at(0, i.to_string(), 1, 1);
        }
        let r = s.take_at(10, "once".into(), never(), 1);
        assert!(!r.allowed, "an empty bucket that never refills is not idle");
    }

    #[test]
    fn a_clock_read_before_the_last_update_neither_refills_nor_resets() {
        let s = SharedState::default();
        let b = || Bucket {
            capacity: 1,
            refill_per_sec: 1.0,
        };
        assert!(s.take_at(100, "b".into(), b(), 1).allowed);
        let r = s.take_at(99, "b".into(), b(), 1);
        assert!(!r.allowed, "no refill from a stale clock");
        assert!(s.take_at(1100, "b".into(), b(), 1).allowed);

        assert_eq!(s.incr_window_at(1000, "w".into(), 1, 1000).count, 1);
        let w = s.incr_window_at(999, "w".into(), 1, 1000);
        assert_eq!(w.count, 2, "the newer window is kept");
    }
}
