//! # Weir: a programmable API gateway
//!
//! Weir proxies HTTP with hyper and runs its policies (authentication,
//! transformation, throttling...) as sandboxed WebAssembly components that
//! implement the `weir:plugin` WIT world. A TOML manifest chains plugins per
//! route.
//!
//! ```text
//!  client ──▶ proxy (accept, limits) ──▶ path::normalise ──▶ router
//!                                                              │
//!        ┌───────────── snapshot (ArcSwap, immutable) ◀────────┘
//!        ▼
//!  plugin chain: on-request 1..n ──(respond? skip ahead)──▶ upstream (pooled, round robin)
//!        ▲                                                      │
//!  client ◀── on-response n..1 ◀────────────────────────────────┘
//! ```
//!
//! Layers, in request order: [`config`] (raw TOML) → [`snapshot`] (resolved
//! and loaded) → [`proxy`] (listener and request phases) → [`path`] and
//! [`router`] → [`plugin`] (wasmtime runtime, host capabilities, instance
//! pools) → [`upstream`]; [`reload`] swaps snapshots when files change.
#![deny(missing_docs)]

pub mod body;
pub mod config;
pub mod error;
pub mod path;
pub mod plugin;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod snapshot;
pub mod upstream;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use plugin::Runtime;
pub use reload::{ReloadStats, Reloader};
pub use snapshot::{ConfigErrors, Snapshot};

/// A running gateway: its listeners and the snapshot they serve.
pub struct Gateway {
    reloader: Arc<Reloader>,
    addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Loads the manifest, binds its listeners and starts serving.
    pub async fn start(manifest: &Path) -> anyhow::Result<Gateway> {
        let snap = Snapshot::load(manifest, Runtime::global()).await?;
        let listen = snap.server.listen.clone();
        let reloader = Arc::new(Reloader::new(manifest.to_path_buf(), snap));
        let (stop, stop_rx) = watch::channel(false);
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for addr in listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
            addrs.push(proxy::bound(&listener)?);
            let current = reloader.current().clone();
            tasks.push(tokio::spawn(proxy::serve(
                listener,
                current,
                stop_rx.clone(),
            )));
        }
        Ok(Gateway {
            reloader,
            addrs,
            stop,
            tasks,
        })
    }

    /// Starts watching the manifest and its plugin files, reloading on change.
    pub fn watch(&mut self) {
        let reloader = self.reloader.clone();
        let stop = self.stop.subscribe();
        self.tasks.push(tokio::spawn(async move {
            if let Err(e) = reloader.watch(stop).await {
                tracing::error!(error = %e, "file watcher failed; use SIGHUP to reload");
            }
        }));
    }

    /// The addresses the listeners bound (the real port when the manifest says `:0`).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The snapshot serving new requests.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.reloader.current().load_full()
    }

    /// Reloads the manifest and every changed plugin; on any error the
    /// current snapshot keeps serving. Listener addresses change only on restart.
    pub async fn reload(&self, cause: &str) -> Result<(), ConfigErrors> {
        self.reloader.reload(cause).await
    }

    /// Reload counters.
    pub fn reload_stats(&self) -> ReloadStats {
        self.reloader.stats()
    }

    /// Stops accepting connections and watching files.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Loads everything a manifest references, as `weir run` would, without serving.
pub async fn check(manifest: &Path) -> Result<Arc<Snapshot>, ConfigErrors> {
    Snapshot::load(manifest, Runtime::global())
        .await
        .map(Arc::new)
}
