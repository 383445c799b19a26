//! A sliding window of hook-call outcomes: calls, failures and a latency
//! histogram, in [`SLOTS`] slots of `window / SLOTS` each, so the window
//! slides by one slot at a time and forgets what is older.
//!
//! Lock-free: a call updates three atomics. Time is the epoch tick count
//! ([`crate::plugin::ticks`]), one atomic load. A slot is reset by the first
//! call that finds it holding an older period; a call racing that reset may
//! be lost, which a budget judged on a hundred calls or more does not notice.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::plugin::EPOCH_TICK;

/// Slots per window.
pub const SLOTS: usize = 10;
/// Latency buckets: four per power of two of microseconds, up to about 2^32 µs.
const BUCKETS: usize = 128;

struct Slot {
    /// The period (tick / slot length) this slot counts; `u64::MAX`: never used.
    period: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
    latency: [AtomicU32; BUCKETS],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            period: AtomicU64::new(u64::MAX),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// What a window holds now.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Figures {
    /// Hook calls in the window.
    pub calls: u64,
    /// Of which failed.
    pub failures: u64,
    /// `failures / calls` (0 without calls).
    pub failure_rate: f64,
    /// The 99th percentile of call durations, to the upper bound of its
    /// bucket (within 19 %); `None` without calls.
    #[serde(serialize_with = "micros")]
    pub p99: Option<Duration>,
}

fn micros<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_micros() as u64)),
        None => s.serialize_none(),
    }
}

/// Outcomes of one version's hook calls over the last `window`.
pub struct Window {
    slot_ticks: u64,
    slots: Box<[Slot]>,
}

impl Window {
    /// A window of `length` (at least `SLOTS` epoch ticks).
    pub fn new(length: Duration) -> Window {
        let ticks = (length.as_millis() / EPOCH_TICK.as_millis().max(1)) as u64;
        Window {
            slot_ticks: (ticks / SLOTS as u64).max(1),
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
        }
    }

    fn period(&self) -> u64 {
        crate::plugin::ticks() / self.slot_ticks
    }

    /// Counts one call that took `took`, failed or not; returns the calls
    /// in the current slot so far (callers judge every so many).
    pub fn record(&self, took: Duration, failed: bool) -> u64 {
        let period = self.period();
        let slot = &self.slots[(period % SLOTS as u64) as usize];
        let seen = slot.period.load(Relaxed);
        if seen != period
            && slot
                .period
                .compare_exchange(seen, period, Relaxed, Relaxed)
                .is_ok()
        {
            slot.calls.store(0, Relaxed);
            slot.failures.store(0, Relaxed);
            for b in &slot.latency {
                b.store(0, Relaxed);
            }
        }
        if failed {
            slot.failures.fetch_add(1, Relaxed);
        }
        slot.latency[bucket(took)].fetch_add(1, Relaxed);
        slot.calls.fetch_add(1, Relaxed) + 1
    }

    /// Calls, failures and p99 over the window now.
    pub fn figures(&self) -> Figures {
        let now = self.period();
        let live = self
            .slots
            .iter()
            .filter(|s| {
                let p = s.period.load(Relaxed);
                p != u64::MAX && p <= now && now - p < SLOTS as u64
            })
            .collect::<Vec<_>>();
        let calls: u64 = live.iter().map(|s| s.calls.load(Relaxed)).sum();
        let failures: u64 = live.iter().map(|s| s.failures.load(Relaxed)).sum();
        let mut histogram = [0u64; BUCKETS];
        for s in &live {
            for (h, b) in histogram.iter_mut().zip(&s.latency) {
                *h += u64::from(b.load(Relaxed));
            }
        }
        let counted: u64 = histogram.iter().sum();
        let p99 = (counted > 0).then(|| {
            // The smallest bucket with at least 99 % of the calls at or below it.
            let want = counted - counted / 100;
            let mut seen = 0;
            let at = histogram
                .iter()
                .position(|n| {
                    seen += n;
                    seen >= want
                })
                .unwrap_or(BUCKETS - 1);
            upper_bound(at)
        });
        Figures {
            calls,
            failures,
            failure_rate: if calls == 0 {
                0.0
            } else {
                failures as f64 / calls as f64
            },
            p99,
        }
    }

    /// Forgets every call.
    pub fn clear(&self) {
        for s in self.slots.iter() {
            s.period.store(u64::MAX, Relaxed);
        }
    }
}

/// The bucket of a duration: 4 per power of two of microseconds.
fn bucket(d: Duration) -> usize {
    let us = (d.as_micros() as u64).max(1);
    let octave = 63 - us.leading_zeros() as u64;
    let sub = if octave >= 2 {
        (us >> (octave - 2)) & 3
    } else {
        (us << (2 - octave)) & 3
    };
    ((octave * 4 + sub) as usize).min(BUCKETS - 1)
}

/// The largest duration in bucket `i`.
fn upper_bound(i: usize) -> Duration {
    let (octave, sub) = ((i / 4) as u32, (i % 4) as u64);
    // Bucket (octave, sub) holds [ (4+sub) << octave, (5+sub) << octave ) / 4 µs.
    let end = ((5 + sub) << octave) / 4;
    Duration::from_micros(end.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_duration_falls_below_its_buckets_upper_bound_within_a_quarter() {
        for us in [1u64, 2, 3, 7, 10, 99, 100, 101, 1_000, 12_345, 1_000_000] {
            let d = Duration::from_micros(us);
            let upper = upper_bound(bucket(d));
            assert!(upper >= d, "{us} µs: bound {upper:?}");
            assert!(
                upper.as_secs_f64() <= d.as_secs_f64() * 1.25 + 1e-6,
                "{us} µs: bound {upper:?}"
            );
        }
    }

    #[test]
    fn figures_count_failures_and_the_slowest_percent() {
        let w = Window::new(Duration::from_secs(60));
        for i in 0..1000 {
            let took = if i < 5 {
                Duration::from_millis(50)
            } else {
                Duration::from_micros(10)
            };
            w.record(took, i % 100 == 0);
        }
        let f = w.figures();
        assert_eq!((f.calls, f.failures), (1000, 10));
        assert!((f.failure_rate - 0.01).abs() < 1e-9);
        // 0.5 % took 50 ms: the p99 is still a 10 µs call.
        assert!(f.p99.unwrap() < Duration::from_micros(13), "{:?}", f.p99);
        for _ in 0..20 {
            w.record(Duration::from_millis(50), false);
        }
        assert!(w.figures().p99.unwrap() >= Duration::from_millis(50));
        w.clear();
        assert_eq!(w.figures().calls, 0);
    }
}
