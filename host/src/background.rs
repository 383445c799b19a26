//! The two low-priority threads that keep reloads off the cores traffic runs
//! on: one compiles plugins, one builds each new snapshot (linking, first
//! instances, `init`) and drops the old one.
//!
//! A reload used to run on the request workers, and compiles on tokio's
//! blocking pool with Cranelift compiling in parallel on every core: during a
//! swap storm p99 rose to 9.9x steady state. Now the engine compiles serially
//! and each kind of job runs on its own thread, one job at a time, under
//! Linux's `SCHED_IDLE` policy: it runs only on what traffic leaves, and a
//! request worker that wakes takes its core back at once. Nice values and
//! scheduler slices were measured and do not do that (hot-swap benchmark,
//! BENCHMARKS.md): a nice-10 thread still holds a core for a few ms now and
//! then, which is the p99.
//!
//! Under saturation `SCHED_IDLE` could starve a reload for minutes, so a job
//! still running after [`ESCALATE_AFTER`] is raised to `SCHED_BATCH` at nice
//! [`NICE`] until it ends (this needs `CAP_SYS_NICE` or an `RLIMIT_NICE` of at
//! least 20 - NICE; without them it stays idle, logged once). Elsewhere the
//! threads run at nice [`NICE`]. Jobs wait in a bounded queue ([`QUEUE`]); a
//! reload waits for room asynchronously, holding no worker.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// Nice value of a job raised after [`ESCALATE_AFTER`], and of the threads
/// where `SCHED_IDLE` is not available; `WEIR_COMPILE_NICE` overrides it.
pub const NICE: i32 = 10;
/// How long a job runs at idle priority before it is raised.
pub const ESCALATE_AFTER: Duration = Duration::from_secs(2);
/// Jobs that may wait for a thread; more wait for room.
pub const QUEUE: usize = 64;

type Job = Box<dyn FnOnce() + Send>;

/// One low-priority thread and its queue.
pub struct Background {
    tx: mpsc::Sender<Job>,
    name: &'static str,
    /// The thread's kernel id, once it runs (0 before).
    tid: std::sync::Arc<AtomicI32>,
}

/// The thread died or dropped the job (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the {thread} thread failed: {reason}")]
pub struct BackgroundFailed {
    thread: &'static str,
    reason: &'static str,
}

impl Background {
    /// The thread that compiles plugins (and reads the disk cache).
    pub fn compile() -> &'static Background {
        static THREAD: OnceLock<Background> = OnceLock::new();
        THREAD.get_or_init(|| Background::start("weir-compile", "plugin compile"))
    }

    /// The thread that builds new snapshots and drops old ones.
    pub fn reload() -> &'static Background {
        static THREAD: OnceLock<Background> = OnceLock::new();
        THREAD.get_or_init(|| Background::start("weir-reload", "reload"))
    }

    fn start(thread: &'static str, name: &'static str) -> Background {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let tid = std::sync::Arc::new(AtomicI32::new(0));
        let own = tid.clone();
        let spawned = std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || {
                own.store(sched::tid(), Ordering::Relaxed);
                while let Some(job) = rx.blocking_recv() {
                    // Each job starts idle, whatever the last one was raised to.
                    sched::idle();
                    // A panicking job fails its own reload, not the thread.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, thread, "cannot start a background thread");
        }
        Background { tx, name, tid }
    }

    fn failed(&self, reason: &'static str) -> BackgroundFailed {
        BackgroundFailed {
            thread: self.name,
            reason,
        }
    }

    /// Runs `f` on this thread and waits for its result; raises its priority
    /// if it runs longer than [`ESCALATE_AFTER`].
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, BackgroundFailed> {
        let (done, mut result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        self.tx
            .send(job)
            .await
            .map_err(|_| self.failed("it is gone"))?;
        // Jobs run one at a time: past the deadline, the thread runs this one
        // or one queued before it, which this one waits for.
        let waited = match tokio::time::timeout(ESCALATE_AFTER, &mut result).await {
            Ok(r) => r,
            Err(_) => {
                sched::raise(self.tid.load(Ordering::Relaxed), self.name);
                result.await
            }
        };
        waited.map_err(|_| self.failed("the job panicked"))
    }

    /// Drives the future `make` returns on this thread, inside the calling
    /// runtime (tasks it spawns, its timers and I/O belong to that runtime),
    /// and waits for its output.
    pub async fn run_async<T, F, Fut>(&self, make: F) -> Result<T, BackgroundFailed>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let (handle, span) = (Handle::current(), tracing::Span::current());
        self.run(move || handle.block_on(make().instrument(span)))
            .await
    }

    /// Drops `value` on this thread (tearing down instances resets their
    /// memory); where the queue is full, here.
    pub fn drop_later<T: Send + 'static>(&self, value: T) {
        let _ = self.tx.try_send(Box::new(move || drop(value)));
    }
}

fn nice() -> i32 {
    std::env::var("WEIR_COMPILE_NICE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| (0..=19).contains(n))
        .unwrap_or(NICE)
}

#[cfg(target_os = "linux")]
mod sched {
    use super::*;

    pub(super) fn tid() -> i32 {
        // SAFETY: gettid has no preconditions.
        #[expect(unsafe_code, reason = "no safe wrapper in the crates we use")]
        unsafe {
            libc::gettid()
        }
    }

    /// The calling thread to `SCHED_IDLE` (always permitted), or to nice [`NICE`].
    pub(super) fn idle() {
        if set(0, libc::SCHED_IDLE, 0).is_err() {
            let _ = rustix::process::setpriority_process(None, nice());
        }
    }

    /// Thread `tid` to `SCHED_BATCH` at nice [`NICE`], for the rest of its job.
    pub(super) fn raise(tid: i32, name: &str) {
        static REFUSED: AtomicBool = AtomicBool::new(false);
        match set(tid, libc::SCHED_BATCH, nice()) {
            Ok(()) => tracing::info!(
                thread = name,
                after = ?ESCALATE_AFTER,
                "a background job is still running at idle priority (the cores are busy); raised to nice {}",
                nice()
            ),
            Err(e) if !REFUSED.swap(true, Ordering::Relaxed) => tracing::warn!(
                thread = name,
                error = %e,
                "a background job is starved at idle priority and cannot be raised (needs CAP_SYS_NICE or RLIMIT_NICE); reloads wait for idle CPU"
            ),
            Err(_) => {}
        }
    }

    fn set(tid: i32, policy: i32, nice: i32) -> std::io::Result<()> {
        let attr = libc::sched_attr {
            size: std::mem::size_of::<libc::sched_attr>() as u32,
            sched_policy: policy as u32,
            sched_flags: 0,
            sched_nice: nice,
            sched_priority: 0,
            sched_runtime: 0,
            sched_deadline: 0,
            sched_period: 0,
        };
        #[expect(unsafe_code, reason = "sched_setattr has no safe wrapper")]
        // SAFETY: `attr` is a valid `sched_attr` of the size it states, read
        // by the kernel during the call; tid 0 is the calling thread.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_sched_setattr,
                tid,
                &attr as *const libc::sched_attr,
                0,
            )
        };
        match rc {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    /// The calling thread's policy (tests).
    #[cfg(test)]
    pub(super) fn policy() -> i32 {
        // SAFETY: sched_getscheduler has no preconditions.
        #[expect(unsafe_code, reason = "no safe wrapper")]
        unsafe {
            libc::sched_getscheduler(0)
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod sched {
    use super::*;

    pub(super) fn tid() -> i32 {
        0
    }

    pub(super) fn idle() {
        let _ = rustix::process::setpriority_process(None, nice());
    }

    pub(super) fn raise(_tid: i32, _name: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_runs_on_its_thread_and_a_panic_fails_only_that_job() {
        let name = Background::reload()
            .run(|| std::thread::current().name().map(String::from))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("weir-reload"));
        let err = Background::reload()
            .run(|| -> () { panic!("boom") })
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the reload thread failed: the job panicked"
        );
        // Still serving after the panic; async work runs inside the caller's runtime.
        let spawned = Background::reload()
            .run_async(|| async { tokio::spawn(async { 7 }).await.unwrap() })
            .await
            .unwrap();
        assert_eq!(spawned, 7);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_job_runs_idle_and_is_raised_when_it_runs_long() {
        let t = Background::compile();
        let quick = t.run(sched::policy).await.unwrap();
        assert_eq!(quick, libc::SCHED_IDLE);
        let long = t
            .run(|| {
                std::thread::sleep(ESCALATE_AFTER + Duration::from_millis(300));
                sched::policy()
            })
            .await
            .unwrap();
        // Raising needs CAP_SYS_NICE (root has it) or RLIMIT_NICE.
        let may_raise = rustix::process::getrlimit(rustix::process::Resource::Nice)
            .current
            .is_some_and(|n| n >= (20 - nice()) as u64)
            || rustix::process::geteuid().is_root();
        if may_raise {
            assert_eq!(long, libc::SCHED_BATCH);
        }
        assert_eq!(
            t.run(sched::policy).await.unwrap(),
            libc::SCHED_IDLE,
            "the next job starts idle again"
        );
    }
}
