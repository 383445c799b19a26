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
//! [`router`] → [`plugin`] (wasmtime runtime, sandbox limits and grants,
//! host capabilities, instance pools) → [`upstream`]. Beside them,
//! [`audit`] reports what each plugin is and may do.
#![deny(missing_docs)]

pub mod audit;
pub mod body;
pub mod config;
pub mod error;
pub mod path;
pub mod plugin;
pub mod proxy;
pub mod router;
pub mod snapshot;
pub mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use plugin::Runtime;
pub use snapshot::{ConfigErrors, Snapshot};

/// A running gateway: its listeners and the snapshot they serve.
pub struct Gateway {
    manifest: PathBuf,
    current: Arc<ArcSwap<Snapshot>>,
    addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Loads the manifest, binds its listeners and starts serving.
    pub async fn start(manifest: &Path) -> anyhow::Result<Gateway> {
        let snap = Snapshot::load(manifest, Runtime::global()).await?;
        let current = Arc::new(ArcSwap::from_pointee(snap));
        let (stop, stop_rx) = watch::channel(false);
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for addr in current.load().server.listen.clone() {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
            addrs.push(proxy::bound(&listener)?);
            tasks.push(tokio::spawn(proxy::serve(
                listener,
                current.clone(),
                stop_rx.clone(),
            )));
        }
        Ok(Gateway {
            manifest: manifest.to_path_buf(),
            current,
            addrs,
            stop,
            tasks,
        })
    }

    /// The addresses the listeners bound (the real port when the manifest says `:0`).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The snapshot serving new requests.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Reloads the manifest and every plugin; on any error the current
    /// snapshot keeps serving. Listener addresses are not changed by a reload.
    pub async fn reload(&self) -> Result<(), ConfigErrors> {
        let snap = Snapshot::load(&self.manifest, Runtime::global()).await?;
        self.current.store(Arc::new(snap));
        Ok(())
    }

    /// Stops accepting connections.
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
