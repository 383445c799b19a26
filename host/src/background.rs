//! The two low-priority threads that keep reloads off the cores traffic runs
//! on: one compiles plugins, one builds each new snapshot (linking, first
//! instances, `init`) and drops the old one.
//!
//! A reload used to run on the request workers, and compiles on tokio's
//! blocking pool with Cranelift compiling in parallel on every core: during a
//! swap storm p99 rose to 9.9x steady state. Now the engine compiles serially
//! and each kind of job runs on its own thread, one job at a time, at low
//! priority ([`NICE`], `SCHED_BATCH`, and a short scheduler slice, [`SLICE`]):
//! the scheduler gives these threads what traffic leaves, and when they do
//! run they give a request worker back its core within [`SLICE`]. Jobs wait
//! in a bounded queue ([`QUEUE`]); a reload waits for room asynchronously,
//! holding no worker.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// Nice value of the background threads (0 is normal, 19 the lowest
/// priority); `WEIR_COMPILE_NICE` overrides it (e.g. 0 on a machine shared
/// with other work, where a low-priority compile could wait a long time).
pub const NICE: i32 = 10;
/// Longest the background threads run before the scheduler may hand the core
/// back (Linux ≥ 6.12 honours it; older kernels keep their default slice).
pub const SLICE: Duration = Duration::from_micros(100);
/// Jobs that may wait for a thread; more wait for room.
pub const QUEUE: usize = 64;

type Job = Box<dyn FnOnce() + Send>;

/// One low-priority thread and its queue.
pub struct Background {
    tx: mpsc::Sender<Job>,
    name: &'static str,
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
        let spawned = std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || {
                lower_priority();
                while let Some(job) = rx.blocking_recv() {
                    // A panicking job fails its own reload, not the thread.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, thread, "cannot start a background thread");
        }
        Background { tx, name }
    }

    fn failed(&self, reason: &'static str) -> BackgroundFailed {
        BackgroundFailed {
            thread: self.name,
            reason,
        }
    }

    /// Runs `f` on this thread and waits for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, BackgroundFailed> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        self.tx
            .send(job)
            .await
            .map_err(|_| self.failed("it is gone"))?;
        result.await.map_err(|_| self.failed("the job panicked"))
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

    /// Drops `value` on this thread (tearing down instances zeroes their
    /// memory); where the queue is full, here.
    pub fn drop_later<T: Send + 'static>(&self, value: T) {
        let _ = self.tx.try_send(Box::new(move || drop(value)));
    }
}

/// Lowers the calling thread's priority: `SCHED_BATCH` (never preempts a
/// waking request worker), nice [`NICE`], scheduler slice [`SLICE`]. On Linux
/// these are per thread.
fn lower_priority() {
    let nice = std::env::var("WEIR_COMPILE_NICE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| (0..=19).contains(n))
        .unwrap_or(NICE);
    #[cfg(target_os = "linux")]
    if batch(nice).is_ok() {
        return;
    }
    if let Err(e) = rustix::process::setpriority_process(None, nice) {
        tracing::warn!(error = %e, "cannot lower a background thread's priority");
    }
}

#[cfg(target_os = "linux")]
fn batch(nice: i32) -> std::io::Result<()> {
    let attr = libc::sched_attr {
        size: std::mem::size_of::<libc::sched_attr>() as u32,
        sched_policy: libc::SCHED_BATCH as u32,
        sched_flags: 0,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: SLICE.as_nanos() as u64,
        sched_deadline: 0,
        sched_period: 0,
    };
    #[expect(unsafe_code, reason = "sched_setattr has no safe wrapper")]
    // SAFETY: `attr` is a valid `sched_attr` of the size it states, read
    // by the kernel during the call; 0 is the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &attr as *const libc::sched_attr,
            0,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
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
}
