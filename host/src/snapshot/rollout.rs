//! Versions of a plugin, resolved: `path` or `versions` checked,
//! `[plugins.NAME.rollout]` read into a [`Budget`] and [`Sticky`] key,
//! `[compile_cache]` applied; and, per route, the versions a request may
//! run ([`RouteVersions`], [`Route::start_chain`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_spanned::Spanned;

use super::{Loader, Route};
use crate::config;
use crate::plugin::rollout::{Budget, Rollout, Sticky};
use crate::plugin::{Chain, ChainPlugin, LoadedPlugin, Picked, Policy, RequestState, Runtime};

/// Largest `weight` of a version.
const MAX_WEIGHT: u32 = 10_000;

/// One file of a plugin to load: `path`, or one entry of `versions`.
pub(super) struct VersionFile<'a> {
    /// Its label (`label`, or the file stem).
    pub(super) label: String,
    /// `path` as written.
    pub(super) path: &'a Spanned<PathBuf>,
    /// Its `sha256` pin as written.
    pub(super) sha256: Option<&'a Spanned<String>>,
    /// The file, relative to the manifest's folder.
    pub(super) file: PathBuf,
    /// `weight`.
    pub(super) weight: u32,
    /// The plugin's policy with this file's pin.
    pub(super) policy: Policy,
}

/// A rolled-out plugin at one place of a route's chain.
pub struct RouteVersions {
    /// Its place in [`Route::chain`] (which holds its stable version).
    pub place: usize,
    /// The plugin's versions and their state.
    pub rollout: Arc<Rollout>,
    /// Every version but the stable one, set up for this route.
    pub canaries: Vec<ChainPlugin>,
}

impl Route {
    /// Every plugin a request of this route may run, with its place in the
    /// chain: each place's stable version, then every canary.
    pub fn every_version(&self) -> impl Iterator<Item = (usize, &ChainPlugin)> {
        let canaries = self
            .versions
            .iter()
            .flat_map(|rv| rv.canaries.iter().map(move |c| (rv.place, c)));
        self.chain.iter().enumerate().chain(canaries)
    }

    /// A request's run of this route's chain: for each rolled-out plugin, the
    /// version its sticky key picks, the same for all of its hooks and places.
    pub fn start_chain(&self, req: &RequestState) -> Chain<'_> {
        if self.versions.is_empty() {
            return Chain::new(&self.chain);
        }
        let mut picked = vec![None; self.chain.len()];
        // Without a sticky key, one draw per request: a plugin in two places
        // of the chain runs one version in both.
        let draw = fastrand::u64(..).to_le_bytes();
        // Picked once per plugin: a promote or rollback between two places'
        // picks must not give one request two versions.
        let mut chosen: Vec<(&Rollout, usize)> = Vec::new();
        for rv in &self.versions {
            let r = &*rv.rollout;
            let version = match chosen.iter().find(|(c, _)| std::ptr::eq(*c, r)) {
                Some(&(_, v)) => v,
                None => {
                    let key = match &r.sticky {
                        Sticky::None => Some(r.key_hash(&draw)),
                        Sticky::Header(h) => Some(match req.headers.get(h) {
                            Some(v) => r.key_hash(v.as_bytes()),
                            None => client_key(r, req),
                        }),
                        Sticky::ClientIp => Some(client_key(r, req)),
                    };
                    let v = r.pick(key);
                    chosen.push((r, v));
                    v
                }
            };
            let plugin = match version {
                0 => &self.chain[rv.place],
                v => &rv.canaries[v - 1],
            };
            picked[rv.place] = Some(Picked {
                plugin,
                rollout: r,
                version,
            });
        }
        Chain::with_versions(&self.chain, picked)
    }
}

fn client_key(r: &Rollout, req: &RequestState) -> u64 {
    match req.client.ip() {
        std::net::IpAddr::V4(a) => r.key_hash(&a.octets()),
        std::net::IpAddr::V6(a) => r.key_hash(&a.octets()),
    }
}

/// `[compile_cache]`: sets the memory size; the directory, if any, made absolute.
pub(super) fn compile_cache(l: &mut Loader<'_>, runtime: &Runtime) -> Option<PathBuf> {
    let cache = l.m.doc.compile_cache.as_ref()?.get_ref();
    if let Some(n) = &cache.entries {
        if *n.get_ref() == 0 {
            return l.err(
                n.span(),
                "`[compile_cache] entries` must be at least 1",
                Some(
                    "keep the default (16), or as many as the versions you may roll back to".into(),
                ),
            );
        }
        runtime.set_cache_entries(*n.get_ref());
    }
    let dir = cache.dir.as_ref()?;
    Some(
        std::path::absolute(l.m.base_dir().join(dir.get_ref()))
            .unwrap_or_else(|_| dir.get_ref().clone()),
    )
}

/// The files of a plugin: its `path`, or each of its `versions` (checked).
pub(super) fn files<'a>(
    l: &mut Loader<'_>,
    name: &Spanned<config::Name>,
    p: &'a config::Plugin,
    policy: &Policy,
) -> Option<Vec<VersionFile<'a>>> {
    let n = name.get_ref().as_str();
    let base = l.m.base_dir().to_path_buf();
    match (&p.path, p.versions.as_slice()) {
        (Some(path), []) => Some(vec![VersionFile {
            label: stem(path.get_ref()),
            path,
            sha256: p.sha256.as_ref(),
            file: base.join(path.get_ref()),
            weight: 1,
            policy: policy.clone(),
        }]),
        (None, []) => l.err(
            name.span(),
            format!("plugin `{n}` has no `path`"),
            Some("add `path = \"plugin.wasm\"`, or `versions = [{ path = \"v1.wasm\", weight = 99 }, { path = \"v2.wasm\", weight = 1 }]`".into()),
        ),
        (Some(path), _) => l.err(
            path.span(),
            format!("plugin `{n}` has both `path` and `versions`"),
            Some("keep `versions` and list this file as its first (stable) entry".into()),
        ),
        (None, versions) => {
            if let Some(pin) = &p.sha256 {
                return l.err(
                    pin.span(),
                    format!("plugin `{n}`: with `versions`, pin each version's file"),
                    Some("move `sha256` into the version it belongs to: `{ path = \"...\", sha256 = \"...\" }`".into()),
                );
            }
            version_files(l, n, versions, policy, &base)
        }
    }
}

fn version_files<'a>(
    l: &mut Loader<'_>,
    n: &str,
    versions: &'a [Spanned<config::PluginVersion>],
    policy: &Policy,
    base: &std::path::Path,
) -> Option<Vec<VersionFile<'a>>> {
    let before = l.errors.len();
    let mut out: Vec<VersionFile<'a>> = Vec::new();
    for v in versions {
        let v = v.get_ref();
        let weight = *v.weight.get_ref();
        if weight > MAX_WEIGHT {
            l.err::<()>(
                v.weight.span(),
                format!("plugin `{n}`: weight {weight} is out of range"),
                Some(format!(
                    "use 0 to {MAX_WEIGHT}; weights are relative, e.g. 99 and 1"
                )),
            );
        }
        let label = match &v.label {
            Some(s) if valid_label(s.get_ref()) => s.get_ref().clone(),
            Some(s) => {
                l.err::<()>(
                    s.span(),
                    format!("plugin `{n}`: invalid version label `{}`", s.get_ref()),
                    Some("use letters, digits, `.`, `-` or `_`, e.g. \"1.5.0\"".into()),
                );
                continue;
            }
            None => stem(v.path.get_ref()),
        };
        if let Some(first) = out.iter().find(|o| o.label == label) {
            let line = config::Location::from_offset(&l.m.source, first.path.span().start).line;
            let span = v.label.as_ref().map_or(v.path.span(), Spanned::span);
            l.err::<()>(
                span,
                format!("plugin `{n}`: two versions are labelled `{label}` (first on line {line})"),
                Some("give each version its own `label = \"...\"`".into()),
            );
            continue;
        }
        let pin = match &v.sha256 {
            None => None,
            Some(s)
                if s.get_ref().len() == 64
                    && s.get_ref().bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Some(s.get_ref().to_ascii_lowercase())
            }
            Some(s) => {
                l.err::<()>(
                    s.span(),
                    format!(
                        "plugin `{n}`: `sha256` must be 64 hex digits, not `{}`",
                        s.get_ref()
                    ),
                    Some("copy the digest from `sha256sum FILE` or `weir audit FILE`".into()),
                );
                continue;
            }
        };
        out.push(VersionFile {
            label,
            path: &v.path,
            sha256: v.sha256.as_ref(),
            file: base.join(v.path.get_ref()),
            weight,
            policy: Policy {
                sha256: pin,
                ..policy.clone()
            },
        });
    }
    if out.len() == versions.len() && out.iter().all(|v| v.weight == 0) {
        let span = versions[0].span();
        l.err::<()>(
            span,
            format!("plugin `{n}`: every version has weight 0"),
            Some("give the stable (first) version a weight, e.g. `weight = 100`".into()),
        );
    }
    (l.errors.len() == before).then_some(out)
}

/// Two versions of one plugin must be different files.
pub(super) fn distinct(
    l: &mut Loader<'_>,
    n: &str,
    versions: &[(VersionFile<'_>, Option<Arc<LoadedPlugin>>)],
) -> bool {
    for (i, (f, lp)) in versions.iter().enumerate() {
        let Some(lp) = lp else { continue };
        let twin = versions[..i]
            .iter()
            .find(|(_, o)| o.as_ref().is_some_and(|o| o.sha256 == lp.sha256));
        if let Some((first, _)) = twin {
            l.err::<()>(
                f.path.span(),
                format!(
                    "plugin `{n}`: versions `{}` and `{}` are the same build (sha256 {})",
                    first.label,
                    f.label,
                    &lp.sha256[..12]
                ),
                Some("list each build once; to change its share, change its `weight`".into()),
            );
            return false;
        }
    }
    true
}

/// `[plugins.NAME.rollout]`, with the defaults of [`Budget`] and [`Sticky`].
pub(super) fn settings(
    l: &mut Loader<'_>,
    n: &str,
    p: &config::Plugin,
) -> Option<(Sticky, Budget)> {
    let d = Budget::default();
    let Some(r) = &p.rollout else {
        return Some((Sticky::default(), d));
    };
    if p.versions.is_empty() {
        return l.err(
            r.span(),
            format!("plugin `{n}`: `[plugins.{n}.rollout]` needs `versions`"),
            Some("list the versions to roll out: `versions = [{ path = \"v1.wasm\", weight = 99 }, { path = \"v2.wasm\", weight = 1 }]`".into()),
        );
    }
    let r = r.get_ref();
    let before = l.errors.len();
    let sticky = match &r.sticky {
        None => Sticky::default(),
        Some(s) => Sticky::parse(s.get_ref()).unwrap_or_else(|| {
            l.err::<()>(
                s.span(),
                format!("plugin `{n}`: invalid `sticky = \"{}\"`", s.get_ref()),
                Some(
                    "use \"client_ip\", \"header:NAME\" (e.g. \"header:x-user-id\") or \"none\""
                        .into(),
                ),
            );
            Sticky::default()
        }),
    };
    let window = r.window.as_ref().map_or(d.window, |w| w.get_ref().0);
    if let Some(w) = &r.window
        && window < Duration::from_secs(1)
    {
        l.err::<()>(
            w.span(),
            format!("plugin `{n}`: the budget `window` must be at least 1s"),
            Some("e.g. window = \"60s\"".into()),
        );
    }
    let min_calls = r.min_calls.as_ref().map_or(d.min_calls, |m| *m.get_ref());
    if let Some(m) = &r.min_calls
        && min_calls == 0
    {
        l.err::<()>(
            m.span(),
            format!("plugin `{n}`: `min_calls` must be at least 1"),
            Some("e.g. 100: no verdict on fewer calls than that".into()),
        );
    }
    let max_failure_rate = r
        .max_failure_rate
        .as_ref()
        .map_or(d.max_failure_rate, |f| *f.get_ref());
    if let Some(f) = &r.max_failure_rate
        && !(0.0..=1.0).contains(f.get_ref())
    {
        l.err::<()>(
            f.span(),
            format!("plugin `{n}`: `max_failure_rate` must be between 0 and 1"),
            Some("e.g. 0.01: more than 1 % of its hook calls failing rolls a canary back".into()),
        );
    }
    let budget = Budget {
        window,
        min_calls,
        max_failure_rate,
        max_p99: r.max_p99.as_ref().map(|m| m.get_ref().0),
    };
    (l.errors.len() == before).then_some((sticky, budget))
}

fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The file name without `.wasm`.
fn stem(path: &std::path::Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
