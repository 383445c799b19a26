//! Policy conflicts `weir check` warns about: a manifest that loads but
//! probably does not do what its author meant. Each warning names the line
//! and the fix; `weir check --deny-warnings` fails on any.
//!
//! - a route no request can reach (an earlier or more specific route takes
//!   all of its requests);
//! - a route with no authentication among siblings (same host, same first
//!   path segment) that all have it;
//! - a plugin listed twice in one chain;
//! - an authentication plugin after a plugin that can answer first;
//! - an upstream no route uses, a plugin no route uses.
//!
//! A plugin counts as authentication when its name or file name contains
//! `auth` (`key-auth`, `jwt-auth`, `basic-auth`, `oauth2-introspect`...).
//! Config keys a plugin does not know are not warnings here: the bundled
//! plugins and the SDK's typed config refuse them at load, as errors.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;

use crate::config::{Location, Manifest};
use crate::router::{HostMatch, PathMatch, RouteRule};
use crate::snapshot::{Route, Snapshot};

/// One conflict found in a manifest that loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The manifest.
    pub file: PathBuf,
    /// Where in it.
    pub location: Option<Location>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(loc) = self.location {
            write!(f, ":{}:{}", loc.line, loc.column)?;
        }
        write!(f, ": warning: {}\n  help: {}", self.message, self.help)
    }
}

/// Whether a plugin, by its manifest name or file name, authenticates.
pub fn is_auth(name: &str, path: &std::path::Path) -> bool {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name = name.to_ascii_lowercase();
    ["auth", "introspect"]
        .iter()
        .any(|w| name.contains(w) || stem.contains(w))
}

/// Every warning for `m`, loaded as `snap`, in manifest order.
pub fn lint(m: &Manifest, snap: &Snapshot) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut warn = |offset: usize, message: String, help: String| {
        out.push(Warning {
            file: m.path.clone(),
            location: Some(Location::from_offset(&m.source, offset)),
            message,
            help,
        });
    };
    let auth: HashSet<&str> = m
        .doc
        .plugins
        .iter()
        .filter(|(name, p)| {
            p.files()
                .any(|f| is_auth(name.get_ref().as_str(), f.get_ref()))
        })
        .map(|(name, _)| name.get_ref().as_str())
        .collect();
    // Where each route is written, by id.
    let written: BTreeMap<&str, usize> = m
        .doc
        .routes
        .iter()
        .map(|r| (r.get_ref().id.get_ref().as_str(), r.span().start))
        .collect();
    let line_of = |id: &str| {
        written
            .get(id)
            .map_or(0, |o| Location::from_offset(&m.source, *o).line)
    };
    shadowed(snap, &written, &line_of, &mut warn);
    unauthenticated(snap, &auth, &written, &line_of, &mut warn);
    chains(m, snap, &auth, &mut warn);
    unused(m, &mut warn);
    out.sort_by_key(|w| w.location.map(|l| (l.line, l.column)));
    out
}

/// A plugin twice in a chain; an authentication plugin after one that may answer.
fn chains(m: &Manifest, snap: &Snapshot, auth: &HashSet<&str>, warn: &mut Emit<'_>) {
    for r in &m.doc.routes {
        let route = r.get_ref();
        let id = route.id.get_ref().as_str();
        let loaded = snap.routes.iter().find(|x| &*x.id == id);
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut may_answer: Option<&str> = None;
        for (i, p) in route.plugins.iter().enumerate() {
            let name = p.get_ref().name.get_ref().as_str();
            if let Some(first) = seen.insert(name, i) {
                warn(
                    p.span().start,
                    format!(
                        "plugin `{name}` is listed twice in route `{id}` (places {} and {})",
                        first + 1,
                        i + 1
                    ),
                    "remove one; each listing runs the plugin again on the same request".into(),
                );
            }
            if auth.contains(name) {
                if let Some(before) = may_answer {
                    warn(
                        p.span().start,
                        format!(
                            "authentication plugin `{name}` runs after `{before}` in route `{id}`, which can answer or change the request before the caller is known"
                        ),
                        format!("list `{name}` before `{before}`"),
                    );
                }
            } else if may_answer.is_none()
                && loaded
                    .and_then(|l| l.chain.get(i))
                    .is_some_and(|c| c.wants_request())
            {
                may_answer = Some(name);
            }
        }
    }
}

/// Upstreams and plugins no route uses. An upstream a plugin may call
/// (`grants.http`) is in use: the plugin's outbound calls reach it.
fn unused(m: &Manifest, warn: &mut Emit<'_>) {
    let used_upstreams: HashSet<&str> = m
        .doc
        .routes
        .iter()
        .map(|r| r.get_ref().upstream.get_ref().as_str())
        .chain(
            m.doc
                .plugins
                .values()
                .flat_map(|p| p.grants.http.iter().flatten())
                .map(|u| u.get_ref().as_str()),
        )
        .collect();
    for name in m.doc.upstreams.keys() {
        if !used_upstreams.contains(name.get_ref().as_str()) {
            warn(
                name.span().start,
                format!("upstream `{}` is used by no route", name.get_ref().as_str()),
                "point a route at it (`upstream = \"NAME\"`) or remove it".into(),
            );
        }
    }
    let used_plugins: HashSet<&str> = m
        .doc
        .routes
        .iter()
        .flat_map(|r| r.get_ref().plugins.iter())
        .map(|p| p.get_ref().name.get_ref().as_str())
        .collect();
    for name in m.doc.plugins.keys() {
        if !used_plugins.contains(name.get_ref().as_str()) {
            warn(
                name.span().start,
                format!("plugin `{}` is used by no route", name.get_ref().as_str()),
                "list it in a route's `[[routes.plugins]]` or remove it".into(),
            );
        }
    }
}

type Emit<'a> = dyn FnMut(usize, String, String) + 'a;

/// Routes that some rule sorted before them covers entirely (host, path and methods).
fn shadowed(
    snap: &Snapshot,
    written: &BTreeMap<&str, usize>,
    line_of: &dyn Fn(&str) -> usize,
    emit: &mut Emit<'_>,
) {
    let rules = snap.router.rules();
    for (i, r) in rules.iter().enumerate() {
        let Some(s) = rules[..i].iter().find(|s| covers(s, r)) else {
            continue;
        };
        let (id, by) = (&*r.target.id, &*s.target.id);
        emit(
            written.get(id).copied().unwrap_or(0),
            format!(
                "route `{id}` is never used: route `{by}` (line {}) matches every request it would",
                line_of(by)
            ),
            format!(
                "make `{id}` more specific than `{by}` (a host, a longer path, methods), or remove it"
            ),
        );
    }
}

/// Whether every request `r` matches is matched by `s` too.
fn covers(s: &RouteRule<Route>, r: &RouteRule<Route>) -> bool {
    let host = match (&s.host, &r.host) {
        (HostMatch::Any, _) => true,
        (HostMatch::Exact(a), HostMatch::Exact(b)) => a == b,
        (HostMatch::Wildcard(a), HostMatch::Wildcard(b)) => b.ends_with(a.as_str()),
        (HostMatch::Wildcard(a), HostMatch::Exact(b)) => {
            b.len() > a.len() && b.ends_with(a.as_str())
        }
        _ => false,
    };
    let path = match (&s.path, &r.path) {
        (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
        (PathMatch::Exact(_), PathMatch::Prefix(_)) => false,
        (PathMatch::Prefix(_), PathMatch::Exact(b) | PathMatch::Prefix(b)) => s.path.matches(b),
    };
    // An empty list accepts every method but CONNECT and TRACE.
    let accepts = |m: &http::Method| {
        s.methods.contains(m)
            || (s.methods.is_empty() && *m != http::Method::CONNECT && *m != http::Method::TRACE)
    };
    let methods = if r.methods.is_empty() {
        s.methods.is_empty()
    } else {
        r.methods.iter().all(accepts)
    };
    host && path && methods
}

/// Routes without authentication whose siblings (same host, same first path
/// segment, at least two of them) all have it.
fn unauthenticated(
    snap: &Snapshot,
    auth: &HashSet<&str>,
    written: &BTreeMap<&str, usize>,
    line_of: &dyn Fn(&str) -> usize,
    emit: &mut Emit<'_>,
) {
    let mut groups: BTreeMap<(String, String), Vec<(&str, bool)>> = BTreeMap::new();
    for rule in snap.router.rules() {
        let host = match &rule.host {
            HostMatch::Any => String::new(),
            HostMatch::Exact(h) => h.clone(),
            HostMatch::Wildcard(h) => format!("*{h}"),
        };
        let path = match &rule.path {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
        };
        let segment = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        if segment.is_empty() {
            continue;
        }
        let route = &rule.target;
        let authed = route.chain.iter().any(|c| auth.contains(&*c.plugin.name));
        groups
            .entry((host, segment))
            .or_default()
            .push((&route.id, authed));
    }
    for ((host, segment), routes) in groups {
        let authed: Vec<&str> = routes.iter().filter(|r| r.1).map(|r| r.0).collect();
        // One public route beside one private one is common (a login page);
        // one exception among several is the smell.
        if authed.len() < 2 || routes.len() - authed.len() != 1 {
            continue;
        }
        for (id, has) in &routes {
            if *has {
                continue;
            }
            let place = if host.is_empty() {
                format!("/{segment}")
            } else {
                format!("{host}/{segment}")
            };
            emit(
                written.get(id).copied().unwrap_or(0),
                format!(
                    "route `{id}` has no authentication plugin, but every other route under `{place}` has one (`{}`, line {})",
                    authed[0],
                    line_of(authed[0])
                ),
                "add the same authentication plugin to its chain, or move it out from under the authenticated prefix if it is public on purpose".into(),
            );
        }
    }
}
