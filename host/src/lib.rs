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
//!  plugin chain: on-request 1..n ──(respond? skip ahead)──▶ upstream (balanced, health-checked)
//!        ▲                                                      │
//!  client ◀── on-response n..1 ◀────────────────────────────────┘
//! ```
//!
//! Layers, in request order: [`config`] (raw TOML) → [`snapshot`] (resolved
//! and loaded) → [`proxy`] (listener and request phases) → [`path`] and
//! [`router`] → [`plugin`] (wasmtime runtime, sandbox limits and grants,
//! host capabilities, instance pools) → [`upstream`]; [`reload`] swaps
//! snapshots when files change. Beside the request path: [`telemetry`] (logs,
//! metrics, request ids and trace context, the access record), [`admin`]
//! (health, readiness, metrics, reload, rollout control on a separate
//! listener), [`ctl`] (`weir ctl`: that API from the command line), [`audit`]
//! (what each plugin is and may do), [`lint`] (policy conflicts `weir check`
//! warns about), [`cases`] (`weir test`: request cases run in-process),
//! [`testkit`] (plugin unit tests on the real runtime) and [`scaffold`]
//! (`weir plugin new`).
//!
//! Dependencies point inward: [`telemetry`], [`error`], [`tls`] and `net`
//! (the accept loop the proxy and admin listeners share) import nothing of
//! the core, which reports into them through plain values; `.ci/module-cycles`
//! keeps the module graph free of cycles.
#![deny(missing_docs)]

pub mod admin;
pub mod audit;
pub mod background;
pub mod body;
pub mod cases;
pub mod config;
pub mod ctl;
pub mod error;
pub mod lint;
mod net;
pub mod path;
pub mod plugin;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod scaffold;
pub mod snapshot;
pub mod telemetry;
pub mod testkit;
pub mod tls;
pub mod upstream;

/// The plugin author's guide, `sdk/README.md`: here so that CI compiles its
/// Rust blocks against the SDK and the test kit.
#[cfg(doctest)]
#[doc = include_str!("../../sdk/README.md")]
mod sdk_guide {}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use config::Manifest;
use plugin::Runtime;
pub use reload::{ReloadStats, Reloader};
pub use snapshot::{ConfigErrors, Snapshot};
use telemetry::metrics::Metrics;

/// A running gateway: its listeners and the snapshot they serve.
pub struct Gateway {
    reloader: Arc<Reloader>,
    admin: Option<Arc<admin::AdminState>>,
    conns: Arc<proxy::Connections>,
    addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The serving threads (`[server] workers`); `None` when the shared runtime serves.
    workers: Option<proxy::workers::Workers>,
}

/// A gateway on its way up ([`Gateway::begin`]): the admin listener, if
/// configured, already answers (`/readyz` says 503) while
/// [`Starting::finish`] loads the plugins.
pub struct Starting {
    manifest: PathBuf,
    metrics: Arc<Metrics>,
    admin: Option<(SocketAddr, Arc<admin::AdminState>)>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Starting {
    /// Where the admin listener bound, if the manifest has `[admin]`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(a, _)| *a)
    }

    /// Loads the manifest and every plugin, binds the listeners and starts serving.
    pub async fn finish(mut self) -> anyhow::Result<Gateway> {
        let snap = Snapshot::load(&self.manifest, Runtime::global(), &self.metrics).await?;
        self.metrics.loaded();
        let listen = snap.server.listen.clone();
        let tls_listen = snap.server.tls.as_ref().map(|t| t.listen.clone());
        let snap_workers = snap.server.workers;
        let conns = proxy::Connections::new(snap.server.max_connections);
        let reloader = Arc::new(Reloader::new(self.manifest, snap, self.metrics));
        let (addrs, tls_addrs, workers) = if snap_workers == 0 {
            let (addrs, tls_addrs) = serve_shared(
                &mut self.tasks,
                &listen,
                tls_listen.as_deref(),
                &reloader,
                &conns,
            )
            .await?;
            (addrs, tls_addrs, None)
        } else {
            let all: Vec<_> = listen
                .iter()
                .map(|a| (proxy::workers::Kind::Plain, *a))
                .chain(
                    tls_listen
                        .iter()
                        .flatten()
                        .map(|a| (proxy::workers::Kind::Tls, *a)),
                )
                .collect();
            let (workers, mut bound) =
                proxy::workers::start(snap_workers, &all, reloader.current(), &conns)?;
            let tls_addrs = bound.split_off(listen.len());
            for addr in &tls_addrs {
                tracing::info!(%addr, "serving HTTPS (h2 and http/1.1 by ALPN)");
            }
            (bound, tls_addrs, Some(workers))
        };
        let admin_addr = self.admin.as_ref().map(|(addr, state)| {
            // From here on `/readyz` answers 200.
            let _ = state.gateway.set(reloader.clone());
            *addr
        });
        Ok(Gateway {
            reloader,
            admin: self.admin.map(|(_, state)| state),
            conns,
            addrs,
            tls_addrs,
            admin_addr,
            stop: self.stop,
            tasks: self.tasks,
            workers,
        })
    }
}

/// `[server] workers = 0`: every listener's accept loop on the shared runtime.
async fn serve_shared(
    tasks: &mut Vec<JoinHandle<()>>,
    listen: &[SocketAddr],
    tls_listen: Option<&[SocketAddr]>,
    reloader: &Arc<Reloader>,
    conns: &Arc<proxy::Connections>,
) -> anyhow::Result<(Vec<SocketAddr>, Vec<SocketAddr>)> {
    let mut addrs = Vec::new();
    for &addr in listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        addrs.push(proxy::bound(&listener)?);
        let current = reloader.current().clone();
        tasks.push(tokio::spawn(proxy::serve(listener, current, conns.clone())));
    }
    let mut tls_addrs = Vec::new();
    for &addr in tls_listen.into_iter().flatten() {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (TLS): {e}"))?;
        let bound = proxy::bound(&listener)?;
        tracing::info!(addr = %bound, "serving HTTPS (h2 and http/1.1 by ALPN)");
        tls_addrs.push(bound);
        let current = reloader.current().clone();
        tasks.push(tokio::spawn(proxy::tls::serve(
            listener,
            current,
            conns.clone(),
        )));
    }
    Ok((addrs, tls_addrs))
}

impl Gateway {
    /// Loads the manifest, binds its listeners and starts serving.
    pub async fn start(manifest: &Path) -> anyhow::Result<Gateway> {
        Gateway::begin(manifest).await?.finish().await
    }

    /// First half of [`Gateway::start`]: reads the manifest's `[admin]`
    /// section and brings the admin listener up, before any plugin loads.
    pub async fn begin(manifest: &Path) -> anyhow::Result<Starting> {
        let m = Manifest::load(manifest).map_err(ConfigErrors::from)?;
        let settings = snapshot::AdminSettings::resolve(&m).map_err(ConfigErrors)?;
        let metrics = Arc::new(Metrics::new());
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut admin = None;
        if let Some(settings) = settings {
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot listen on {} (admin): {e}", settings.listen)
                })?;
            let addr = listener.local_addr()?;
            if !addr.ip().is_loopback() && settings.token.is_none() {
                tracing::warn!(%addr, "the admin listener is reachable beyond loopback without a token; set `[admin] token_env`");
            }
            let state = Arc::new(admin::AdminState::new(metrics.clone(), settings.token));
            tasks.push(tokio::spawn(admin::serve(listener, state.clone(), stop_rx)));
            admin = Some((addr, state));
        }
        Ok(Starting {
            manifest: manifest.to_path_buf(),
            metrics,
            admin,
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

    /// Where the admin listener bound, if the manifest has `[admin]`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The addresses the `[server.tls]` listeners bound; empty without TLS.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// The snapshot serving new requests.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.reloader.current().load_full()
    }

    /// The gateway's metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.reloader.metrics()
    }

    /// Reloads the manifest and every changed plugin; on any error the
    /// current snapshot keeps serving. Listener addresses and `[admin]`/`[log]`
    /// settings change only on restart.
    pub async fn reload(&self) -> Result<(), ConfigErrors> {
        self.reload_because("API").await
    }

    /// [`Gateway::reload`], logging `cause` (e.g. "SIGHUP").
    pub async fn reload_because(&self, cause: &str) -> Result<(), ConfigErrors> {
        self.reloader.reload(cause).await.map(|_| ())
    }

    /// Reload counters.
    pub fn reload_stats(&self) -> ReloadStats {
        self.reloader.stats()
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.conns.open()
    }

    /// Shuts down gracefully: `/readyz` turns 503, the gateway stops accepting, lets in-flight requests
    /// finish (HTTP/2 clients get GOAWAY, idle connections close) for up to
    /// `[server] shutdown_timeout`, drops what is left, then stops the admin
    /// listener and the file watcher. Returns how many connections were
    /// still open at the deadline.
    pub async fn shutdown(self) -> usize {
        let deadline = self.snapshot().server.shutdown_timeout;
        if let Some(admin) = &self.admin {
            admin
                .draining
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let dropped = self.conns.drain(deadline).await;
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(w) = self.workers {
            w.stop().await;
        }
        dropped
    }
}

/// Loads everything a manifest references, as `weir run` would, without serving.
pub async fn check(manifest: &Path) -> Result<Arc<Snapshot>, ConfigErrors> {
    Snapshot::load(manifest, Runtime::global(), &Arc::new(Metrics::new()))
        .await
        .map(Arc::new)
}

/// [`check`], plus the policy conflicts of a manifest that loads ([`lint`]).
pub async fn check_with_warnings(
    manifest: &Path,
) -> Result<(Arc<Snapshot>, Vec<lint::Warning>), ConfigErrors> {
    let m = Manifest::load(manifest)?;
    let snap = Snapshot::from_manifest(&m, Runtime::global(), &Arc::new(Metrics::new())).await?;
    let warnings = lint::lint(&m, &snap);
    Ok((Arc::new(snap), warnings))
}
