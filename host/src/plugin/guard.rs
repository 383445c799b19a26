//! Containment of a plugin that burns CPU, per (route, plugin):
//!
//! - at most `max_concurrency` hook calls run at once; later calls wait their
//!   turn (within `call_timeout`), so one plugin can never hold every worker
//!   thread while other routes wait;
//! - a breaker: after [`BREAKER_STRIKES`] hook calls in a row end at the CPU
//!   deadline or the call timeout, the plugin fails fast (reason
//!   `circuit_open`, the route's failure policy answers) for
//!   [`BREAKER_COOLDOWN`]; then one trial call runs, and its outcome closes or
//!   reopens the breaker.
//!
//! A call that waits outside the sandbox (a Redis round trip) lends its place
//! to another call meanwhile ([`Guard::lend`]): waiting holds no worker, so
//! it holds no place either.
//!
//! A healthy plugin pays one uncontended semaphore acquire per call.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

/// Hook calls in a row that must burn their CPU deadline (or call timeout) to open the breaker.
pub const BREAKER_STRIKES: u32 = 3;
/// How long an open breaker fails a plugin fast before a trial call.
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(10);

/// The default `max_concurrency`: all worker threads but one, so a plugin
/// that spins can never take every thread from the other routes.
pub fn default_concurrency() -> u32 {
    let workers = tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_workers())
        .or_else(|_| std::thread::available_parallelism().map(usize::from))
        .unwrap_or(1);
    u32::try_from(workers.saturating_sub(1).max(1)).unwrap_or(u32::MAX)
}

/// The concurrency cap and breaker of one plugin on one route.
#[derive(Debug)]
pub(crate) struct Guard {
    permits: Semaphore,
    /// Places lent by calls cancelled before they took them back: permits
    /// to forget as they come back (see [`Lent`]).
    owed: AtomicUsize,
    /// Calls cancelled while their place was lent (the client went away
    /// during a Redis round trip): their unfinished passes are no strikes.
    excused: AtomicUsize,
    /// A call cancelled sooner than this many epoch ticks (its
    /// `cpu_deadline`) cannot have burned it: the client left, no strike.
    min_strike: u64,
    strikes: AtomicU32,
    /// While open: when a trial may run.
    open_until: Mutex<Option<Instant>>,
    /// Cheap check on the hot path: whether `open_until` is set.
    open: AtomicBool,
    /// A half-open trial call is running.
    trial: AtomicBool,
    plugin: std::sync::Arc<str>,
    route: std::sync::Arc<str>,
}

/// Why the guard did not let a call run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Open {
    /// Time left before the next trial.
    pub retry_in: Duration,
}

/// A running hook call's place; finish it with [`Pass::done`]. Dropped
/// unfinished (the request was cancelled) after running at least the CPU
/// deadline, it counts as a strike; sooner, or while its place was lent, the
/// client left and the plugin burned nothing.
pub(crate) struct Pass<'a> {
    guard: &'a Guard,
    _permit: SemaphorePermit<'a>,
    /// [`super::ticks`] when it entered.
    started: u64,
    trial: bool,
    finished: bool,
}

impl Guard {
    pub(crate) fn new(
        max_concurrency: u32,
        min_strike: Duration,
        plugin: &std::sync::Arc<str>,
        route: &std::sync::Arc<str>,
    ) -> Guard {
        Guard {
            permits: Semaphore::new(max_concurrency.max(1) as usize),
            owed: AtomicUsize::new(0),
            excused: AtomicUsize::new(0),
            // Read off the epoch, not the clock: no clock read per call.
            min_strike: (min_strike.as_millis() / super::EPOCH_TICK.as_millis()) as u64,
            strikes: AtomicU32::new(0),
            open_until: Mutex::new(None),
            open: AtomicBool::new(false),
            trial: AtomicBool::new(false),
            plugin: plugin.clone(),
            route: route.clone(),
        }
    }

    /// A place to run a hook call without waiting: `None` when every place is
    /// taken (then [`Guard::enter`] waits). The path every healthy call takes.
    pub(crate) fn try_enter(&self) -> Option<Result<Pass<'_>, Open>> {
        if let Some(retry_in) = self.cooling() {
            return Some(Err(Open { retry_in }));
        }
        let permit = loop {
            if let Some(p) = self.keep(self.permits.try_acquire().ok()?) {
                break p;
            }
        };
        Some(self.admit().map(|trial| Pass {
            guard: self,
            _permit: permit,
            started: super::ticks(),
            trial,
            finished: false,
        }))
    }

    /// Waits for a place to run a hook call, or refuses while the breaker is open.
    pub(crate) async fn enter(&self) -> Result<Pass<'_>, Open> {
        // Refused before waiting: an open breaker costs a caller nothing.
        if let Some(retry_in) = self.cooling() {
            return Err(Open { retry_in });
        }
        let permit = loop {
            let p = match self.permits.try_acquire() {
                Ok(p) => p,
                // The semaphore is never closed.
                Err(_) => self.permits.acquire().await.map_err(|_| Open {
                    retry_in: Duration::ZERO,
                })?,
            };
            if let Some(p) = self.keep(p) {
                break p;
            }
        };
        // Decided holding the place: the call before may have just opened the breaker.
        let trial = self.admit()?;
        Ok(Pass {
            guard: self,
            _permit: permit,
            started: super::ticks(),
            trial,
            finished: false,
        })
    }

    /// `permit`, unless it pays back a place owed by a cancelled [`Lent`].
    fn keep<'a>(&self, permit: SemaphorePermit<'a>) -> Option<SemaphorePermit<'a>> {
        let owed = self.owed.load(Ordering::Relaxed) > 0
            && self
                .owed
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
        if owed {
            permit.forget();
            return None;
        }
        Some(permit)
    }

    /// Lends the running call's place to another call while this one waits
    /// outside the sandbox; [`Lent::resume`] takes a place back before wasm
    /// runs on.
    pub(crate) fn lend(self: &Arc<Self>) -> Lent {
        self.permits.add_permits(1);
        Lent {
            guard: self.clone(),
            resumed: false,
        }
    }

    /// Time left while the breaker is open and cooling down.
    fn cooling(&self) -> Option<Duration> {
        if !self.open.load(Ordering::Acquire) {
            return None;
        }
        let until = (*self.open_until.lock().unwrap_or_else(|e| e.into_inner()))?;
        until.checked_duration_since(Instant::now())
    }

    /// `Ok(true)`: this call is the breaker's trial; `Ok(false)`: closed.
    fn admit(&self) -> Result<bool, Open> {
        if !self.open.load(Ordering::Acquire) {
            return Ok(false);
        }
        if let Some(retry_in) = self.cooling() {
            return Err(Open { retry_in });
        }
        // Cool-down over: exactly one call tries.
        match self
            .trial
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(true),
            Err(_) => Err(Open {
                retry_in: Duration::ZERO,
            }),
        }
    }

    fn record(&self, burned: bool, trial: bool) {
        if !burned {
            self.strikes.store(0, Ordering::Relaxed);
            if trial {
                *self.open_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
                self.open.store(false, Ordering::Release);
                self.trial.store(false, Ordering::Release);
                tracing::info!(target: "weir::plugin", plugin = &*self.plugin, route = &*self.route, "plugin breaker closed: the trial call finished in time");
            }
            return;
        }
        let strikes = self.strikes.fetch_add(1, Ordering::Relaxed) + 1;
        if trial || (strikes >= BREAKER_STRIKES && !self.open.load(Ordering::Acquire)) {
            *self.open_until.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Instant::now() + BREAKER_COOLDOWN);
            self.open.store(true, Ordering::Release);
            self.trial.store(false, Ordering::Release);
            tracing::warn!(target: "weir::plugin", plugin = &*self.plugin, route = &*self.route, strikes,
                "plugin breaker open: {strikes} hook calls in a row ran out of time; failing it fast for {BREAKER_COOLDOWN:?}");
        }
    }

    /// Whether the breaker is open now (for metrics and the admin API).
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
}

/// A place lent by a waiting call ([`Guard::lend`]).
pub(crate) struct Lent {
    guard: Arc<Guard>,
    resumed: bool,
}

impl Lent {
    /// Waits for a place again (counted against `call_timeout`, like entering).
    pub(crate) async fn resume(mut self) {
        if let Ok(p) = self.guard.permits.acquire().await {
            p.forget();
        }
        self.resumed = true;
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        // Cancelled before taking a place back: the call's own place comes
        // back when it ends, one too many. Forget one now, or the next that comes back.
        if !self.resumed {
            self.guard.excused.fetch_add(1, Ordering::Relaxed);
            match self.guard.permits.try_acquire() {
                Ok(p) => p.forget(),
                Err(_) => {
                    self.guard.owed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Pass<'_> {
    /// Records how the call ended: `burned` when it ran out of CPU or wall time.
    pub(crate) fn done(mut self, burned: bool) {
        self.finished = true;
        self.guard.record(burned, self.trial);
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        // A call cancelled while it waited outside the sandbox burned nothing
        // (a trial still decides, or the breaker would stay half-open).
        if self.finished {
            return;
        }
        let excused = !self.trial
            && self
                .guard
                .excused
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
        let early =
            !self.trial && super::ticks().saturating_sub(self.started) < self.guard.min_strike;
        if !excused && !early {
            self.guard.record(true, self.trial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(n: u32) -> Guard {
        Guard::new(n, Duration::ZERO, &"p".into(), &"r".into())
    }

    #[tokio::test]
    async fn calls_cancelled_before_their_cpu_deadline_are_no_strikes() {
        let g = Guard::new(4, Duration::from_secs(3600), &"p".into(), &"r".into());
        for _ in 0..BREAKER_STRIKES {
            drop(g.enter().await.unwrap());
        }
        assert!(!g.is_open(), "the clients left; nothing ran out of time");
        for _ in 0..BREAKER_STRIKES {
            g.enter().await.unwrap().done(true);
        }
        assert!(
            g.is_open(),
            "finished calls that burned their budget still count"
        );
    }

    #[tokio::test]
    async fn opens_after_strikes_in_a_row_and_a_success_resets_the_count() {
        let g = guard(4);
        for _ in 0..BREAKER_STRIKES - 1 {
            g.enter().await.unwrap().done(true);
        }
        g.enter().await.unwrap().done(false);
        for _ in 0..BREAKER_STRIKES - 1 {
            g.enter().await.unwrap().done(true);
        }
        assert!(!g.is_open(), "strikes must be in a row");
        // A call cancelled by the timeout counts too.
        drop(g.enter().await.unwrap());
        assert!(g.is_open());
        let open = g.enter().await.err().expect("fails fast while open");
        assert!(open.retry_in > BREAKER_COOLDOWN - Duration::from_secs(1));
    }

    #[tokio::test]
    async fn after_the_cooldown_one_trial_decides() {
        let g = guard(4);
        for _ in 0..BREAKER_STRIKES {
            g.enter().await.unwrap().done(true);
        }
        // Pretend the cool-down is over.
        *g.open_until.lock().unwrap() = Some(Instant::now());
        let trial = g.enter().await.unwrap();
        assert!(g.enter().await.is_err(), "only one trial at a time");
        trial.done(true);
        assert!(g.enter().await.is_err(), "a failed trial reopens");
        *g.open_until.lock().unwrap() = Some(Instant::now());
        g.enter().await.unwrap().done(false);
        assert!(!g.is_open());
        g.enter().await.unwrap().done(false);
    }

    #[tokio::test]
    async fn a_waiting_call_lends_its_place_and_the_cap_holds_after() {
        let g = Arc::new(guard(1));
        let first = g.enter().await.unwrap();
        let lent = g.lend();
        let second = g.try_enter().expect("the lent place").unwrap();
        let back = tokio::time::timeout(Duration::from_millis(50), lent.resume()).await;
        assert!(back.is_err(), "taking it back waits for the borrower");
        // That resume was cancelled (as by a call timeout): the place is owed.
        second.done(false);
        first.done(false);
        let only = g.enter().await.unwrap();
        assert!(g.try_enter().is_none(), "still one place, not two");
        let lent = g.lend();
        lent.resume().await;
        assert!(g.try_enter().is_none(), "lent and taken back: still one");
        only.done(false);
        g.enter().await.unwrap().done(false);
    }

    #[tokio::test]
    async fn calls_cancelled_while_waiting_outside_are_no_strikes() {
        let g = Arc::new(guard(4));
        for _ in 0..BREAKER_STRIKES {
            let pass = g.enter().await.unwrap();
            let lent = g.lend();
            // The client goes away mid-round-trip: the wait, then the call, are dropped.
            drop(lent);
            drop(pass);
        }
        assert!(!g.is_open(), "nobody ran out of time");
        for _ in 0..BREAKER_STRIKES {
            drop(g.enter().await.unwrap());
        }
        assert!(
            g.is_open(),
            "calls cancelled while running wasm still count"
        );
    }

    #[tokio::test]
    async fn calls_past_the_cap_wait_their_turn() {
        let g = guard(1);
        let first = g.enter().await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), g.enter()).await;
        assert!(waiting.is_err(), "a second call waits while the first runs");
        first.done(false);
        g.enter().await.unwrap().done(false);
    }
}
