//! The one thread that compiles plugins, at low priority, so a storm of
//! swaps never competes with traffic for the CPU.
//!
//! Cranelift would otherwise compile a component's functions in parallel on
//! every core (wasmtime's `parallel-compilation`), and a reload used to run on
//! tokio's blocking pool beside the request workers: during a swap storm p99
//! rose to 9.9x steady state. Now the engine compiles serially, and every
//! compile (and disk-cache read) runs here, one at a time, on a thread whose
//! nice value is [`NICE`]: the scheduler gives it what traffic leaves.
//! Jobs wait in a bounded queue ([`QUEUE`]); a reload waits for room
//! asynchronously, holding no worker.

use std::sync::OnceLock;

use tokio::sync::{mpsc, oneshot};

/// Nice value of the compile thread (0 is normal, 19 the lowest priority);
/// `WEIR_COMPILE_NICE` overrides it (e.g. 0 on a machine shared with other
/// work, where a low-priority compile could wait a long time).
pub const NICE: i32 = 10;
/// Compiles that may wait for the thread; more wait for room.
pub const QUEUE: usize = 64;

type Job = Box<dyn FnOnce() + Send>;

/// The compile thread's queue.
pub(crate) struct Compiler {
    tx: mpsc::Sender<Job>,
}

/// The compile thread died or dropped the job (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the plugin compiler failed: {0}")]
pub struct CompilerFailed(String);

impl Compiler {
    /// The process's compile thread, started on first use.
    pub(crate) fn global() -> &'static Compiler {
        static COMPILER: OnceLock<Compiler> = OnceLock::new();
        COMPILER.get_or_init(Compiler::start)
    }

    fn start() -> Compiler {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("weir-compile".into())
            .spawn(move || {
                // On Linux the nice value is per thread: only this one yields.
                let nice = std::env::var("WEIR_COMPILE_NICE")
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .filter(|n| (0..=19).contains(n))
                    .unwrap_or(NICE);
                if let Err(e) = rustix::process::setpriority_process(None, nice) {
                    tracing::warn!(error = %e, "cannot lower the compile thread's priority");
                }
                while let Some(job) = rx.blocking_recv() {
                    // A panicking compile fails its own reload, not the thread.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the compile thread");
        }
        Compiler { tx }
    }

    /// Runs `f` on the compile thread and waits for its result.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, CompilerFailed> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        self.tx
            .send(job)
            .await
            .map_err(|_| CompilerFailed("the compile thread is gone".into()))?;
        result
            .await
            .map_err(|_| CompilerFailed("the compile panicked".into()))
    }
}
