//! The in-memory backend: one store per plugin shared by all its instances
//! (on every route), updated atomically under sharded locks, and bounded by
//! the plugin's quota (`max_state_entries`, `max_state_bytes`).
//!
//! A new key that would pass the quota first makes the store drop its idle
//! entries (those back at their initial value, so nothing is lost); if it is
//! still full, the call traps with [`StateQuota`]. Keys that exist keep
//! working when the store is full.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use super::MAX_KEY;
use crate::plugin::bindings::weir::plugin::state::{Bucket, TakeResult, WindowCount};
use crate::plugin::limits::{
    Limits, MIN_STATE_BYTES, STATE_ENTRY_OVERHEAD as ENTRY_OVERHEAD, StateQuota,
};

const SHARDS: usize = 16;
/// Tokens closer than this to a whole number count as it (float refill error).
const TOKEN_EPSILON: f64 = 1e-9;
/// Entries per shard before a sweep of idle entries is forced.
const SWEEP_AT: usize = 4096;
// The documented per-entry cost covers the entry, and the smallest quota holds any one key.
const _: () = assert!(64 + size_of::<Entry>() <= ENTRY_OVERHEAD);
const _: () = assert!(MAX_KEY + ENTRY_OVERHEAD <= MIN_STATE_BYTES);

/// The stores behind the `state` interface: one per plugin name, created on
/// first use and kept for the life of the process (so state outlives reloads).
#[derive(Default)]
pub struct SharedState {
    plugins: RwLock<HashMap<Arc<str>, Arc<PluginStore>>>,
}

impl SharedState {
    /// The store of plugin `name`.
    pub fn plugin(&self, name: &Arc<str>) -> Arc<PluginStore> {
        if let Some(store) = read(&self.plugins).get(name) {
            return store.clone();
        }
        let mut plugins = self.plugins.write().unwrap_or_else(|e| e.into_inner());
        plugins.entry(name.clone()).or_default().clone()
    }

    /// Forgets every plugin's keys (for `weir test`, between cases).
    pub fn clear(&self) {
        for store in read(&self.plugins).values() {
            store.clear();
        }
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How much one plugin may keep: `max_state_entries` and `max_state_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Entries (keys) at most.
    pub entries: usize,
    /// Bytes at most: each entry counts its key's length plus [`ENTRY_OVERHEAD`].
    pub bytes: usize,
}

impl From<&Limits> for Quota {
    fn from(l: &Limits) -> Self {
        Quota {
            entries: l.max_state_entries,
            bytes: l.max_state_bytes,
        }
    }
}

/// One plugin's counters and buckets, sharded by key.
pub struct PluginStore {
    hasher: RandomState,
    shards: [Mutex<Shard>; SHARDS],
    epoch: Instant,
    /// Entries held, counted under the shard locks.
    entries: AtomicUsize,
    /// Bytes held, as [`Quota::bytes`] counts them.
    bytes: AtomicUsize,
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
    /// A `cache` value.
    Value { value: Vec<u8>, expires_ms: u64 },
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
            // Expired values are as good as absent.
            Entry::Value { expires_ms, .. } => now >= expires_ms,
        }
    }

    /// Bytes held beyond the key and the fixed overhead (a cached value's length).
    fn extra(&self) -> usize {
        match self {
            Entry::Value { value, .. } => value.len(),
            _ => 0,
        }
    }
}

fn cost(key: &str) -> usize {
    key.len() + ENTRY_OVERHEAD
}

impl Default for PluginStore {
    fn default() -> Self {
        PluginStore {
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
            epoch: Instant::now(),
            entries: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        }
    }
}

impl PluginStore {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + super::super::clock::advanced_ms()
    }

    /// Forgets every key (for `weir test`, between cases).
    pub fn clear(&self) {
        for shard in &self.shards {
            *lock(shard) = Shard::default();
        }
        self.entries.store(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
    }

    /// Runs `f` on the entry under `key`, creating it with `init` if the quota allows.
    fn with_entry<R>(
        &self,
        key: String,
        now: u64,
        quota: Quota,
        init: impl FnOnce() -> Entry,
        f: impl FnOnce(&mut Entry) -> R,
    ) -> Result<R, StateQuota> {
        let shard = self.shard(&key);
        let mut evicted = false;
        loop {
            let mut s = lock(shard);
            if s.entries.len() >= s.next_sweep.max(SWEEP_AT) {
                self.drop_idle(&mut s, now);
                s.next_sweep = s.entries.len() * 2;
            }
            if let Some(e) = s.entries.get_mut(&key) {
                return Ok(f(e));
            }
            if self.reserve(cost(&key), quota) {
                return Ok(f(s.entries.entry(key).or_insert_with(init)));
            }
            // Full: drop idle entries everywhere (this shard's lock released
            // first, so two full callers cannot wait on each other), then retry once.
            drop(s);
            if evicted {
                return Err(StateQuota {
                    entries: quota.entries,
                    bytes: quota.bytes,
                });
            }
            for shard in &self.shards {
                self.drop_idle(&mut lock(shard), now);
            }
            evicted = true;
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// The cached value under `key`, if it has not expired.
    pub fn cache_get(&self, key: &str) -> Option<Vec<u8>> {
        let now = self.now_ms();
        match lock(self.shard(key)).entries.get(key) {
            Some(Entry::Value { value, expires_ms }) if now < *expires_ms => Some(value.clone()),
            _ => None,
        }
    }

    /// Caches `value` under `key` for `ttl_ms`; false when the quota has no
    /// room for it even after idle entries are dropped.
    pub fn cache_set(&self, key: String, value: Vec<u8>, ttl_ms: u64, quota: Quota) -> bool {
        let now = self.now_ms();
        let len = value.len();
        let mut reserved = self.reserve_bytes(len, quota);
        if !reserved {
            for shard in &self.shards {
                self.drop_idle(&mut lock(shard), now);
            }
            reserved = self.reserve_bytes(len, quota);
        }
        if !reserved {
            return false;
        }
        let expires_ms = now.saturating_add(ttl_ms);
        let stored = self.with_entry(
            key,
            now,
            quota,
            || Entry::Value {
                value: Vec::new(),
                expires_ms: 0,
            },
            |e| std::mem::replace(e, Entry::Value { value, expires_ms }).extra(),
        );
        match stored {
            Ok(old) => {
                self.bytes.fetch_sub(old, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.bytes.fetch_sub(len, Ordering::Relaxed);
                false
            }
        }
    }

    /// Forgets `key`.
    pub fn cache_delete(&self, key: &str) {
        if let Some(e) = lock(self.shard(key)).entries.remove(key) {
            self.entries.fetch_sub(1, Ordering::Relaxed);
            self.bytes
                .fetch_sub(cost(key) + e.extra(), Ordering::Relaxed);
        }
    }

    /// Counts `n` more bytes in, if the quota has room.
    fn reserve_bytes(&self, n: usize, quota: Quota) -> bool {
        self.bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                v.checked_add(n).filter(|v| *v <= quota.bytes)
            })
            .is_ok()
    }

    /// Counts a new entry of `cost` bytes in, if the quota has room for it.
    fn reserve(&self, cost: usize, quota: Quota) -> bool {
        let add = |counter: &AtomicUsize, n: usize, max: usize| {
            counter
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    v.checked_add(n).filter(|v| *v <= max)
                })
                .is_ok()
        };
        if !add(&self.entries, 1, quota.entries) {
            return false;
        }
        if !add(&self.bytes, cost, quota.bytes) {
            self.entries.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Drops the shard's idle entries and counts them out.
    fn drop_idle(&self, shard: &mut Shard, now: u64) {
        let (mut entries, mut bytes) = (0, 0);
        shard.entries.retain(|k, e| {
            let idle = e.is_idle(now);
            if idle {
                entries += 1;
                bytes += cost(k) + e.extra();
            }
            !idle
        });
        self.entries.fetch_sub(entries, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Entries and bytes held now.
    #[cfg(test)]
    fn usage(&self) -> (usize, usize) {
        (
            self.entries.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// Adds `delta` in the fixed window containing now.
    pub fn incr_window(
        &self,
        key: String,
        delta: u64,
        window_ms: u64,
        quota: Quota,
    ) -> Result<WindowCount, StateQuota> {
        self.incr_window_at(self.now_ms(), key, delta, window_ms, quota)
    }

    fn incr_window_at(
        &self,
        now: u64,
        key: String,
        delta: u64,
        window_ms: u64,
        quota: Quota,
    ) -> Result<WindowCount, StateQuota> {
        let window_ms = window_ms.max(1);
        let start = now - now % window_ms;
        self.with_entry(
            key,
            now,
            quota,
            || Entry::Window { start_ms: start, window_ms, count: 0 },
            |e| {
                // A later window (another caller read the clock after us) is kept, not reset.
                if !matches!(e, Entry::Window { start_ms, window_ms: w, .. } if *start_ms >= start && *w == window_ms) {
                    self.bytes.fetch_sub(e.extra(), Ordering::Relaxed);
                    *e = Entry::Window { start_ms: start, window_ms, count: 0 };
                }
                let Entry::Window { start_ms, count, .. } = e else { unreachable!() };
                *count = count.saturating_add(delta);
                WindowCount { count: *count, reset_ms: (*start_ms + window_ms).saturating_sub(now) }
            },
        )
    }

    /// Takes `cost` tokens from a bucket if it has them.
    pub fn take(
        &self,
        key: String,
        bucket: Bucket,
        cost: u32,
        quota: Quota,
    ) -> Result<TakeResult, StateQuota> {
        self.take_at(self.now_ms(), key, bucket, cost, quota)
    }

    fn take_at(
        &self,
        now: u64,
        key: String,
        bucket: Bucket,
        cost: u32,
        quota: Quota,
    ) -> Result<TakeResult, StateQuota> {
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
            quota,
            || Entry::Bucket { tokens: capacity, last_ms: now, capacity, rate },
            |e| {
                // A changed shape (config reload) starts a fresh bucket.
                if !matches!(e, Entry::Bucket { capacity: c, rate: r, .. } if *c == capacity && *r == rate) {
                    self.bytes.fetch_sub(e.extra(), Ordering::Relaxed);
                    *e = Entry::Bucket { tokens: capacity, last_ms: now, capacity, rate };
                }
                let Entry::Bucket { tokens, last_ms, .. } = e else { unreachable!() };
                // `now` may be older than the last update (read before another caller's): no refill then.
                let elapsed = now.saturating_sub(*last_ms);
                *tokens = (*tokens + elapsed as f64 / 1000.0 * rate).min(capacity);
                *last_ms = (*last_ms).max(now);
                // Refills are sums of float fractions: 30 s at 2/min gives
                // 0.999...9 tokens, which must count as one.
                let allowed = *tokens + TOKEN_EPSILON >= cost;
                if allowed {
                    *tokens = (*tokens - cost).max(0.0);
                }
                let ms_until = |target: f64| -> u64 {
                    if *tokens + TOKEN_EPSILON >= target {
                        0
                    } else if rate <= 0.0 {
                        u64::MAX
                    } else {
                        // Whole milliseconds, rounded up: the wait is never short.
                        ((target - *tokens) / rate * 1000.0 - 1e-6).ceil() as u64
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_values_expire_count_their_length_and_are_refused_past_the_quota() {
        let store = PluginStore::default();
        let small = Quota {
            entries: 10,
            bytes: 2 * (ENTRY_OVERHEAD + 9),
        };
        assert!(store.cache_set("k".into(), b"value".to_vec(), 60_000, small));
        assert_eq!(store.cache_get("k").as_deref(), Some(&b"value"[..]));
        assert_eq!(store.usage(), (1, 1 + ENTRY_OVERHEAD + 5));
        // Replacing counts the new length, not both.
        assert!(store.cache_set("k".into(), b"v2".to_vec(), 60_000, small));
        assert_eq!(store.usage(), (1, 1 + ENTRY_OVERHEAD + 2));
        // Too big for what is left: refused, nothing counted.
        assert!(!store.cache_set("big".into(), vec![0; 200], 60_000, small));
        assert_eq!(store.usage(), (1, 1 + ENTRY_OVERHEAD + 2));
        store.cache_delete("k");
        assert_eq!(store.usage(), (0, 0));
        assert_eq!(store.cache_get("k"), None);
        // An expired value is absent and its room is taken back when needed.
        assert!(store.cache_set("old".into(), vec![1; 8], 0, small));
        assert_eq!(store.cache_get("old"), None);
        assert!(store.cache_set("a".into(), vec![2; 8], 60_000, small));
        assert!(store.cache_set("b".into(), vec![3; 8], 60_000, small));
        assert_eq!(store.usage().0, 2);
    }

    const ROOMY: Quota = Quota {
        entries: 10_000,
        bytes: 1 << 20,
    };

    /// A bucket that refills one token per 1000 s: busy for a long time after a take.
    fn slow() -> Bucket {
        Bucket {
            capacity: 1,
            refill_per_sec: 0.001,
        }
    }

    fn full(e: StateQuota) -> (usize, usize) {
        (e.entries, e.bytes)
    }

    #[test]
    fn bucket_allows_burst_then_refuses_with_retry_after() {
        let s = PluginStore::default();
        let b = || Bucket {
            capacity: 3,
            refill_per_sec: 1.0,
        };
        for left in [2, 1, 0] {
            let r = s.take("k".into(), b(), 1, ROOMY).unwrap();
            assert!(r.allowed);
            assert_eq!(r.remaining, left);
        }
        let r = s.take("k".into(), b(), 1, ROOMY).unwrap();
        assert!(!r.allowed);
        assert!(
            r.retry_after_ms > 0 && r.retry_after_ms <= 1001,
            "{}",
            r.retry_after_ms
        );
        // Other keys are independent.
        assert!(s.take("other".into(), b(), 1, ROOMY).unwrap().allowed);
    }

    #[test]
    fn window_counts_accumulate() {
        let s = PluginStore::default();
        let incr = |d| s.incr_window("w".into(), d, 60_000, ROOMY).unwrap().count;
        assert_eq!(incr(1), 1);
        assert_eq!(incr(2), 3);
    }

    #[test]
    fn a_new_key_past_max_state_entries_is_refused() {
        let s = PluginStore::default();
        let q = Quota {
            entries: 3,
            bytes: 1 << 20,
        };
        for k in ["a", "b", "c"] {
            assert!(s.take_at(0, k.into(), slow(), 1, q).unwrap().allowed);
        }
        let e = s.take_at(0, "d".into(), slow(), 1, q).unwrap_err();
        assert_eq!(full(e), (3, 1 << 20));
        assert!(
            s.incr_window_at(0, "e".into(), 1, u64::MAX, q).is_err(),
            "windows count against the same quota"
        );
        assert_eq!(s.usage(), (3, 3 * (1 + ENTRY_OVERHEAD)));
    }

    #[test]
    fn a_new_key_past_max_state_bytes_is_refused() {
        let s = PluginStore::default();
        let key = |i: u32| format!("{i:0>100}");
        // Room for two entries with 100-byte keys, not three.
        let q = Quota {
            entries: 1000,
            bytes: 3 * (100 + ENTRY_OVERHEAD) - 1,
        };
        for i in 0..2 {
            s.take_at(0, key(i), slow(), 1, q).unwrap();
        }
        let e = s.take_at(0, key(2), slow(), 1, q).unwrap_err();
        assert_eq!(full(e), (1000, q.bytes));
        // A short key still fits in what is left.
        s.take_at(0, "x".into(), slow(), 1, q).unwrap();
        let used = 2 * (100 + ENTRY_OVERHEAD) + 1 + ENTRY_OVERHEAD;
        assert_eq!(s.usage(), (3, used));
    }

    #[test]
    fn idle_entries_are_evicted_before_a_new_key_is_refused() {
        let s = PluginStore::default();
        let q = Quota {
            entries: 4,
            bytes: 1 << 20,
        };
        // At t=0: a 1 s window and a fast bucket (idle again after 1 s), and two busy entries.
        s.incr_window_at(0, "window".into(), 1, 1000, q).unwrap();
        let fast = Bucket {
            capacity: 1,
            refill_per_sec: 1.0,
        };
        s.take_at(0, "fast".into(), fast, 1, q).unwrap();
        s.take_at(0, "busy".into(), slow(), 1, q).unwrap();
        s.incr_window_at(0, "long".into(), 1, u64::MAX, q).unwrap();
        assert!(
            s.take_at(500, "new".into(), slow(), 1, q).is_err(),
            "nothing is idle yet"
        );
        // At t=1000 the window ended and the fast bucket is full again: both go.
        s.take_at(1000, "new".into(), slow(), 1, q).unwrap();
        s.take_at(1000, "new2".into(), slow(), 1, q).unwrap();
        assert!(s.take_at(1000, "new3".into(), slow(), 1, q).is_err());
        assert_eq!(s.usage().0, 4);
        // What was busy is kept as it was.
        let r = s.take_at(1000, "busy".into(), slow(), 1, q).unwrap();
        assert!(!r.allowed, "the busy bucket was not reset");
        let w = s
            .incr_window_at(1000, "long".into(), 1, u64::MAX, q)
            .unwrap();
        assert_eq!(w.count, 2, "the long window was not reset");
    }

    #[test]
    fn existing_keys_keep_working_when_the_store_is_full() {
        let s = PluginStore::default();
        let q = Quota {
            entries: 2,
            bytes: 1 << 20,
        };
        let b = || Bucket {
            capacity: 2,
            refill_per_sec: 0.001,
        };
        s.take_at(0, "client-a".into(), b(), 1, q).unwrap();
        s.incr_window_at(0, "hits".into(), 1, u64::MAX, q).unwrap();
        assert!(s.take_at(0, "client-b".into(), b(), 1, q).is_err());
        // The rate limit in force goes on counting: one token left, then none.
        assert!(s.take_at(1, "client-a".into(), b(), 1, q).unwrap().allowed);
        assert!(!s.take_at(2, "client-a".into(), b(), 1, q).unwrap().allowed);
        let w = s.incr_window_at(3, "hits".into(), 5, u64::MAX, q).unwrap();
        assert_eq!(w.count, 6);
    }

    #[test]
    fn each_plugin_has_its_own_store_and_quota() {
        let shared = SharedState::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let q = Quota {
            entries: 1,
            bytes: 1 << 20,
        };
        let store_a = shared.plugin(&a);
        assert!(
            Arc::ptr_eq(&store_a, &shared.plugin(&a)),
            "one store per plugin"
        );
        store_a.take_at(0, "k".into(), slow(), 1, q).unwrap();
        assert!(store_a.take_at(0, "k2".into(), slow(), 1, q).is_err());
        let store_b = shared.plugin(&b);
        let r = store_b.take_at(0, "k".into(), slow(), 1, q).unwrap();
        assert!(r.allowed, "b's key `k` is not a's");
        assert_eq!(store_b.usage().0, 1);
    }

    #[test]
    fn a_bucket_that_never_refills_is_kept_until_full_again() {
        let s = PluginStore::default();
        let q = Quota {
            entries: 1,
            bytes: 1 << 20,
        };
        let never = Bucket {
            capacity: 1,
            refill_per_sec: 0.0,
        };
        s.take_at(0, "once".into(), never, 1, q).unwrap();
        assert!(
            s.take_at(u64::MAX / 2, "other".into(), slow(), 1, q)
                .is_err()
        );
        let r = s.take_at(u64::MAX / 2, "once".into(), never, 1, q).unwrap();
        assert!(!r.allowed, "an empty bucket that never refills is not idle");
    }

    #[test]
    fn a_clock_read_before_the_last_update_neither_refills_nor_resets() {
        let s = PluginStore::default();
        let b = || Bucket {
            capacity: 1,
            refill_per_sec: 1.0,
        };
        assert!(s.take_at(100, "b".into(), b(), 1, ROOMY).unwrap().allowed);
        let r = s.take_at(99, "b".into(), b(), 1, ROOMY).unwrap();
        assert!(!r.allowed, "no refill from a stale clock");
        assert!(s.take_at(1100, "b".into(), b(), 1, ROOMY).unwrap().allowed);

        assert_eq!(
            s.incr_window_at(1000, "w".into(), 1, 1000, ROOMY)
                .unwrap()
                .count,
            1
        );
        let w = s.incr_window_at(999, "w".into(), 1, 1000, ROOMY).unwrap();
        assert_eq!(w.count, 2, "the newer window is kept");
    }
}
