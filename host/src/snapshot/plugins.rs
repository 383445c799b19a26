//! `[plugins.NAME]`: each file read once, checked against its policy, and
//! compiled on the compile thread unless compiled before (the previous
//! snapshot, the compile cache in memory or on disk). A plugin with
//! `versions` becomes a [`Rollout`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_spanned::Spanned;

use super::rollout::{self as resolve, VersionFile};
use super::{Loader, Snapshot, policy};
use crate::config;
use crate::plugin::rollout::{Rollout, Version};
use crate::plugin::{LoadedPlugin, Policy, Runtime};
use crate::telemetry::metrics::Metrics;

/// The plugins of a manifest, loaded.
#[derive(Default)]
pub(super) struct Plugins {
    /// Each plugin's stable version by name.
    pub(super) loaded: BTreeMap<String, Arc<LoadedPlugin>>,
    /// Each plugin's sandbox by name.
    pub(super) policies: BTreeMap<String, Arc<Policy>>,
    /// The plugins with `versions`, by name.
    pub(super) rollouts: BTreeMap<String, Arc<Rollout>>,
}

/// Loads every plugin of the manifest; errors go to `l`.
pub(super) async fn load_plugins(
    l: &mut Loader<'_>,
    runtime: &Arc<Runtime>,
    metrics: &Arc<Metrics>,
    previous: Option<&Snapshot>,
) -> Plugins {
    let m = l.m;
    let cache_dir = resolve::compile_cache(l, runtime);
    let mut out = Plugins::default();
    for (name, p) in &m.doc.plugins {
        let name_str = name.get_ref().as_str();
        let Some(policy) = policy::resolve_policy(l, name_str, p) else {
            continue;
        };
        let Some(files) = resolve::files(l, name, p, &policy) else {
            continue;
        };
        let settings = resolve::settings(l, name_str, p);
        let mut versions = Vec::new();
        for f in files {
            let loaded = load_file(l, runtime, metrics, previous, name, p, &f, &cache_dir).await;
            versions.push((f, loaded));
        }
        let Some(loaded) = versions
            .iter()
            .map(|(_, v)| v.clone())
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let Some((sticky, budget)) = settings else {
            continue;
        };
        if !resolve::distinct(l, name_str, &versions) {
            continue;
        }
        out.loaded.insert(name_str.to_string(), loaded[0].clone());
        out.policies.insert(name_str.to_string(), Arc::new(policy));
        if p.versions.is_empty() {
            continue;
        }
        let versions: Vec<Version> = versions
            .into_iter()
            .zip(loaded)
            .map(|((f, _), lp)| Version::new(f.label, lp, f.weight, budget.window))
            .collect();
        let fresh = Rollout::new(
            name_str.into(),
            versions,
            sticky,
            budget,
            metrics.rollout(name_str),
        );
        // Unchanged versions, weights and budget: keep its state (a canary
        // rolled back stays out; a promotion stays) across unrelated reloads.
        let kept = previous
            .and_then(|s| s.rollouts.get(name_str))
            .filter(|r| r.fingerprint == fresh.fingerprint)
            .cloned();
        out.rollouts.insert(
            name_str.to_string(),
            kept.unwrap_or_else(|| Arc::new(fresh)),
        );
    }
    out
}

/// One file of one plugin, loaded (or reused from `previous`); `None` after an error.
#[expect(
    clippy::too_many_arguments,
    reason = "the parts of a load one file needs"
)]
async fn load_file(
    l: &mut Loader<'_>,
    runtime: &Arc<Runtime>,
    metrics: &Metrics,
    previous: Option<&Snapshot>,
    name: &Spanned<config::Name>,
    p: &config::Plugin,
    f: &VersionFile<'_>,
    cache_dir: &Option<PathBuf>,
) -> Option<Arc<LoadedPlugin>> {
    let name = name.get_ref().as_str();
    let bytes = match tokio::fs::read(&f.file).await {
        Ok(b) => b,
        Err(e) => {
            let what = if e.kind() == std::io::ErrorKind::NotFound {
                "not found".to_string()
            } else {
                e.to_string()
            };
            return l.err(
                f.path.span(),
                format!("plugin `{name}`: file `{}` {what}", f.file.display()),
                Some("paths are relative to the manifest; build the plugin with `cargo build --target wasm32-wasip2` first".into()),
            );
        }
    };
    let sha256 = crate::plugin::sha256_hex(&bytes);
    let unchanged = previous.and_then(|s| s.loaded_plugin(name, &sha256, &f.file));
    let loaded = match unchanged {
        // Not recompiled, but the (possibly edited) policy still applies.
        Some(same) => same.admit(&f.policy).map(|()| same),
        None => runtime
            .load_off_path(name, &f.file, bytes, &f.policy, cache_dir.clone())
            .await
            .map(|lp| {
                metrics.plugin_loaded(lp.source.label());
                Arc::new(lp)
            }),
    };
    match loaded {
        Ok(lp) => Some(lp),
        Err(e) => {
            let (span, help) = policy::load_error_help(p, f.path, f.sha256, &e);
            l.err(
                span,
                format!("plugin `{name}` ({}): {e}", f.file.display()),
                Some(help),
            )
        }
    }
}

impl Snapshot {
    /// A plugin of this name, sha256 and file that this snapshot loaded
    /// (any of its versions).
    fn loaded_plugin(
        &self,
        name: &str,
        sha256: &str,
        file: &std::path::Path,
    ) -> Option<Arc<LoadedPlugin>> {
        let stable = self.plugins.get(name).into_iter();
        let versions = self
            .rollouts
            .get(name)
            .into_iter()
            .flat_map(|r| r.versions.iter().map(|v| &v.plugin));
        stable
            .chain(versions)
            .find(|lp| lp.sha256 == sha256 && lp.path == file)
            .cloned()
    }
}
