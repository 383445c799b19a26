//! Hot reload: the manifest and every plugin file it names are watched; a
//! burst of changes is debounced into one reload, which builds a whole new
//! [`Snapshot`] off the request path and swaps it in only if every part of it
//! is good. Unchanged plugins (same name and sha256) are reused, not
//! recompiled. A refused reload is logged with the file and the reason, and
//! the previous snapshot keeps serving. In-flight requests hold an `Arc` to
//! the snapshot they started on, so it is dropped after the last of them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{Mutex, mpsc, watch};

use crate::background::Background;
use crate::config::{ConfigError, Manifest};
use crate::plugin::Runtime;
use crate::snapshot::{ConfigErrors, Snapshot};
use crate::telemetry::metrics::Metrics;

/// Quiet time after the last file event before reloading: editors and `cp`
/// write in bursts, and a half-written file usually completes within it.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Quiet time when only `.wasm` files changed: a component cut short is
/// refused by the parser (never half-loaded), and going back to a cached
/// version should take milliseconds, not a tenth of a second.
pub const PLUGIN_DEBOUNCE: Duration = Duration::from_millis(10);
/// Longest a reload waits for a burst of events to end.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// The current snapshot and how to replace it.
pub struct Reloader {
    manifest: PathBuf,
    current: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    // One reload at a time (watcher, SIGHUP and API may race).
    lock: Mutex<()>,
    ok: AtomicU64,
    refused: AtomicU64,
}

/// Reload counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadStats {
    /// Reloads that were swapped in.
    pub ok: u64,
    /// Reloads refused because something was invalid.
    pub refused: u64,
}

impl Reloader {
    /// Wraps the first snapshot.
    pub fn new(manifest: PathBuf, first: Snapshot, metrics: Arc<Metrics>) -> Reloader {
        Reloader {
            manifest,
            current: Arc::new(ArcSwap::from_pointee(first)),
            metrics,
            lock: Mutex::new(()),
            ok: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The cell requests read their snapshot from.
    pub fn current(&self) -> &Arc<ArcSwap<Snapshot>> {
        &self.current
    }

    /// The gateway's metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Counters of reloads so far.
    pub fn stats(&self) -> ReloadStats {
        ReloadStats {
            ok: self.ok.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Builds a new snapshot from the manifest and swaps it in; on any error
    /// the current one stays. `cause` is logged (e.g. "file change", "SIGHUP").
    pub async fn reload(&self, cause: &str) -> Result<Arc<Snapshot>, ConfigErrors> {
        let _one_at_a_time = self.lock.lock().await;
        let started = Instant::now();
        let old = self.current.load_full();
        // Built on the low-priority reload thread: linking, first instances
        // and `init` of every route's plugins take no request worker.
        let (manifest, metrics, previous) =
            (self.manifest.clone(), self.metrics.clone(), old.clone());
        let result = Background::reload()
            .run_async(move || async move {
                let runtime = Runtime::global();
                Snapshot::load_with(&manifest, runtime, &metrics, Some(&previous)).await
            })
            .await
            .unwrap_or_else(|e| Err(ConfigError::new(&self.manifest, None, e.to_string()).into()));
        self.metrics.reloaded(result.is_ok());
        match result {
            Ok(new) => {
                let changes = describe_changes(&old, &new);
                if new.server.listen != old.server.listen {
                    tracing::warn!("listen addresses changed; they take effect on restart");
                }
                let (old_tls, new_tls) = (old.server.tls.as_ref(), new.server.tls.as_ref());
                if old_tls.map(|t| &t.listen) != new_tls.map(|t| &t.listen) {
                    tracing::warn!(
                        "TLS listen addresses changed; they take effect on restart (open TLS listeners keep their last certificates)"
                    );
                }
                let certs = describe_cert_changes(old_tls, new_tls);
                if !certs.is_empty() {
                    tracing::info!(certificates = %certs, "TLS certificates changed; new connections get them");
                }
                let routes = new.routes.len();
                let new = Arc::new(new);
                self.current.store(new.clone());
                // Where no request holds it any more, the old snapshot's
                // instances are torn down there too, not on a request worker.
                Background::reload().drop_later(old);
                self.ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    cause,
                    manifest = %self.manifest.display(),
                    routes,
                    plugins = %changes,
                    millis = started.elapsed().as_millis() as u64,
                    "reloaded"
                );
                Ok(new)
            }
            Err(errors) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    cause,
                    manifest = %self.manifest.display(),
                    millis = started.elapsed().as_millis() as u64,
                    "reload refused, the previous configuration keeps serving:\n{errors}"
                );
                Err(errors)
            }
        }
    }

    /// Watches the manifest and plugin files until `stop` flips, reloading on change.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                let _ = tx.send(res);
            })?;
        let mut files = self.watched_files();
        let mut dirs = BTreeSet::new();
        update_watches(&mut watcher, &files, &mut dirs);
        tracing::info!(
            files = files.len(),
            dirs = dirs.len(),
            "watching for changes"
        );

        loop {
            // Wait for the first relevant event.
            let first = tokio::select! {
                ev = rx.recv() => ev,
                _ = stop.changed() => return Ok(()),
            };
            let Some(ev) = first else { return Ok(()) };
            if !relevant(&ev, &files) {
                continue;
            }
            // Debounce: wait for DEBOUNCE of quiet (PLUGIN_DEBOUNCE while only
            // plugin files change), at most MAX_DELAY in all.
            let deadline = Instant::now() + MAX_DELAY;
            let mut wait = debounce(&ev, &files);
            loop {
                let quiet = tokio::time::sleep(
                    wait.min(deadline.saturating_duration_since(Instant::now())),
                );
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(ev) if Instant::now() < deadline => {
                            if relevant(&ev, &files) {
                                wait = wait.max(debounce(&ev, &files));
                            }
                            continue;
                        }
                        Some(_) => break,
                        None => return Ok(()),
                    },
                    _ = quiet => break,
                }
            }
            let _ = self.reload("file change").await;
            // The manifest may now name other plugin files.
            files = self.watched_files();
            update_watches(&mut watcher, &files, &mut dirs);
        }
    }

    /// The manifest and the plugin, certificate, key and CA files it names, as absolute paths. Read
    /// from the manifest on disk, so that a refused reload still watches the
    /// files the operator is fixing.
    fn watched_files(&self) -> BTreeSet<PathBuf> {
        let mut files = BTreeSet::from([absolute(&self.manifest)]);
        if let Ok(m) = Manifest::load(&self.manifest) {
            for f in m.doc.plugins.values().flat_map(|p| p.files()) {
                files.insert(absolute(&m.base_dir().join(f.get_ref())));
            }
            // Certificate renewals (certbot, cert-manager) only touch these files.
            for c in m
                .doc
                .server
                .tls
                .iter()
                .flat_map(|t| &t.get_ref().certificates)
            {
                let c = c.get_ref();
                files.insert(absolute(&m.base_dir().join(c.cert.get_ref())));
                files.insert(absolute(&m.base_dir().join(c.key.get_ref())));
            }
            for ca in m.doc.upstreams.values().filter_map(|u| u.ca.as_ref()) {
                files.insert(absolute(&m.base_dir().join(ca.get_ref())));
            }
        } else {
            let current = self.current.load();
            for p in current.plugins.values() {
                files.insert(absolute(&p.path));
            }
            for v in current.rollouts.values().flat_map(|r| &r.versions) {
                files.insert(absolute(&v.plugin.path));
            }
        }
        files
    }
}

/// Watches the parent directory of each file: editors and `mv` replace
/// inodes, so a watch on the file itself would go stale.
fn update_watches(
    watcher: &mut impl Watcher,
    files: &BTreeSet<PathBuf>,
    dirs: &mut BTreeSet<PathBuf>,
) {
    let wanted: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    for gone in dirs.difference(&wanted) {
        let _ = watcher.unwatch(gone);
    }
    for dir in wanted.difference(dirs) {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; use SIGHUP to reload");
        }
    }
    *dirs = wanted;
}

/// How long to wait for quiet after `ev`: short when the watched files it
/// touched are all plugins (a rename's temporary source is not watched).
fn debounce(ev: &notify::Result<notify::Event>, files: &BTreeSet<PathBuf>) -> Duration {
    let plugins_only = ev.as_ref().is_ok_and(|ev| {
        ev.paths
            .iter()
            .map(|p| absolute(p))
            .filter(|p| files.contains(p))
            .all(|p| p.extension().is_some_and(|e| e == "wasm"))
    });
    if plugins_only {
        PLUGIN_DEBOUNCE
    } else {
        DEBOUNCE
    }
}

fn relevant(ev: &notify::Result<notify::Event>, files: &BTreeSet<PathBuf>) -> bool {
    match ev {
        Ok(ev) => {
            !matches!(ev.kind, EventKind::Access(_))
                && ev.paths.iter().any(|p| files.contains(&absolute(p)))
        }
        // An overflowed queue may have hidden a change: reload to be safe.
        Err(_) => true,
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// "name old→new" for each plugin whose file changed, plus added and removed ones.
fn describe_changes(old: &Snapshot, new: &Snapshot) -> String {
    let short = |s: &str| s.get(..12).unwrap_or(s).to_string();
    let mut out = Vec::new();
    for (name, p) in &new.plugins {
        match old.plugins.get(name) {
            Some(o) if o.sha256 == p.sha256 => {}
            Some(o) => out.push(format!("{name} {}→{}", short(&o.sha256), short(&p.sha256))),
            None => out.push(format!("{name} added {}", short(&p.sha256))),
        }
    }
    for (name, r) in &new.rollouts {
        let kept = old.rollouts.get(name).is_some_and(|o| Arc::ptr_eq(o, r));
        if !kept {
            let shares = r
                .versions
                .iter()
                .map(|v| format!("{} {}@{}", v.label, short(&v.plugin.sha256), v.weight))
                .collect::<Vec<_>>()
                .join(" + ");
            out.push(format!("{name} versions {shares}"));
        }
    }
    for name in old.plugins.keys().filter(|n| !new.plugins.contains_key(*n)) {
        out.push(format!("{name} removed"));
    }
    if out.is_empty() {
        "unchanged".into()
    } else {
        out.join(", ")
    }
}

/// "path sha256" for each TLS certificate file whose leaf changed, was added or removed.
fn describe_cert_changes(
    old: Option<&crate::snapshot::TlsSettings>,
    new: Option<&crate::snapshot::TlsSettings>,
) -> String {
    let short = |s: &str| s.get(..12).unwrap_or(s).to_string();
    let empty = Vec::new();
    let old = old.map_or(&empty, |t| &t.fingerprints);
    let new = new.map_or(&empty, |t| &t.fingerprints);
    let mut out = Vec::new();
    for (path, sha) in new {
        match old.iter().find(|(p, _)| p == path) {
            Some((_, o)) if o == sha => {}
            Some((_, o)) => out.push(format!("{} {}→{}", path.display(), short(o), short(sha))),
            None => out.push(format!("{} added {}", path.display(), short(sha))),
        }
    }
    for (path, _) in old.iter().filter(|(p, _)| !new.iter().any(|(n, _)| n == p)) {
        out.push(format!("{} removed", path.display()));
    }
    out.join(", ")
}
