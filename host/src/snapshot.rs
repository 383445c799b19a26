//! The resolved, immutable runtime form of a manifest: listeners, routing
//! table, upstreams, and each route's chain of loaded plugins with its
//! validated config. Requests read one snapshot from start to end.
//!
//! [`policy`] resolves each plugin's sandbox (limits, grants, pin) and each
//! route's failure policy from the manifest.

mod admin;
mod outbound;
mod plugins;
mod policy;
mod rollout;
mod state;
mod traces;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use serde_spanned::Spanned;

use crate::config::StateFailure;
use crate::config::{self, ConfigError, Manifest};
use crate::plugin::host::outbound::OutboundClient;
use crate::plugin::host::state::RedisBackend;
use crate::plugin::{ChainPlugin, LoadedPlugin, PluginErrorKind, PluginUse, Policy, Runtime};
use crate::router::{HostMatch, PathMatch, RouteRule, Router};
use crate::telemetry::metrics::{Metrics, RouteMetrics};
use crate::upstream::{self, Target, Upstream};

pub use admin::AdminSettings;
pub use rollout::RouteVersions;

/// Listener and connection settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// Time allowed to read a request head.
    pub header_read_timeout: Duration,
    /// Cap on the request head.
    pub max_header_bytes: usize,
    /// Cap on a request body.
    pub max_body_bytes: u64,
    /// Most header fields in an HTTP/1 request head.
    pub max_headers: usize,
    /// Longest request target.
    pub max_uri_bytes: usize,
    /// Longest wait for the next piece of a request body.
    pub body_read_timeout: Duration,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
    /// Open client connections allowed (read at start).
    pub max_connections: usize,
    /// Drain deadline on shutdown (read at start).
    pub shutdown_timeout: Duration,
    /// Peers whose `X-Forwarded-For` is extended rather than replaced.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Keep header names containing `_`.
    pub allow_underscore_headers: bool,
    /// Pass `%2F`/`%5C` in paths on.
    pub allow_encoded_slashes: bool,
    /// HTTPS listeners and certificates, from `[server.tls]`.
    pub tls: Option<TlsSettings>,
    /// Serving threads; 0: the shared runtime serves (read at start).
    pub workers: usize,
}

impl ServerSettings {
    /// The plain values of `[server]`; listeners, trusted proxies and TLS
    /// need checking and are left empty.
    pub fn from_raw(raw: &config::Server) -> ServerSettings {
        ServerSettings {
            listen: Vec::new(),
            header_read_timeout: raw.header_read_timeout.0,
            max_header_bytes: raw.max_header_bytes,
            max_body_bytes: raw.max_body_bytes,
            max_headers: raw.max_headers,
            max_uri_bytes: raw.max_uri_bytes,
            body_read_timeout: raw.body_read_timeout.0,
            idle_timeout: raw.idle_timeout.0,
            max_connections: raw.max_connections.max(1),
            shutdown_timeout: raw.shutdown_timeout.0,
            trusted_proxies: Vec::new(),
            allow_underscore_headers: raw.allow_underscore_headers,
            allow_encoded_slashes: raw.allow_encoded_slashes,
            tls: None,
            // Opt-in: see `config::Server::workers`.
            workers: raw.workers.unwrap_or(0),
        }
    }
}

/// `[server.tls]`, resolved: certificates loaded and checked against their keys.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Addresses to serve HTTPS on (read at start).
    pub listen: Vec<SocketAddr>,
    /// Time a client has to finish the handshake.
    pub handshake_timeout: Duration,
    /// The acceptor config: certificates by SNI, ALPN h2 and http/1.1.
    pub config: Arc<rustls::ServerConfig>,
    /// Each certificate file and the SHA-256 of its leaf, to log what a reload changed.
    pub fingerprints: Vec<(std::path::PathBuf, String)>,
}

/// A route, resolved.
pub struct Route {
    /// The route's id.
    pub id: Arc<str>,
    /// Where its requests go.
    pub upstream: Arc<Upstream>,
    /// Its plugins, in order (a rolled-out plugin's stable version).
    pub chain: Vec<ChainPlugin>,
    /// The rolled-out plugins of its chain (see [`Route::start_chain`]).
    pub versions: Vec<RouteVersions>,
    /// Its request and upstream metric handles.
    pub metrics: RouteMetrics,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chain: Vec<&str> = self.chain.iter().map(|p| &*p.plugin.name).collect();
        f.debug_struct("Route")
            .field("id", &self.id)
            .field("upstream", &self.upstream.name)
            .field("chain", &chain)
            .finish()
    }
}

/// Everything a request needs, loaded and checked.
#[derive(Debug)]
pub struct Snapshot {
    /// Listener settings.
    pub server: ServerSettings,
    /// The routing table.
    pub router: Router<Route>,
    /// Routes in manifest order.
    pub routes: Vec<Arc<Route>>,
    /// Loaded plugins by name (a rolled-out plugin's stable version).
    pub plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    /// The plugins with `versions`, by name: every version and its state.
    pub rollouts: BTreeMap<String, Arc<crate::plugin::rollout::Rollout>>,
    /// Each plugin's sandbox (limits, grants, pin) by name.
    pub policies: BTreeMap<String, Arc<Policy>>,
    /// The shared state backend (`[state]`); `None`: state in memory.
    pub state: Option<Arc<RedisBackend>>,
    /// How long loading took.
    pub load_time: Duration,
    /// The gateway's metrics (shared by all its snapshots).
    pub metrics: Arc<Metrics>,
    /// The span export pipeline, with `[tracing]` (shared with the previous
    /// snapshot when its settings did not change).
    pub tracer: Option<Arc<crate::telemetry::otlp::Tracer>>,
}

/// Every error found while loading a manifest.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

struct Loader<'a> {
    m: &'a Manifest,
    errors: Vec<ConfigError>,
}

impl Loader<'_> {
    fn err<T>(
        &mut self,
        span: std::ops::Range<usize>,
        msg: impl Into<String>,
        help: Option<String>,
    ) -> Option<T> {
        let mut e = self.m.error_at(span, msg);
        if let Some(h) = help {
            e = e.help(h);
        }
        self.errors.push(e);
        None
    }
}

impl Snapshot {
    /// When the shared state backend is unreachable: its URL, and whether a
    /// plugin fails closed on it (its routes answer 503 until it is back).
    pub fn state_down(&self) -> Option<(&str, bool)> {
        let backend = self.state.as_ref().filter(|b| !b.is_up())?;
        let closed = self.policies.values().any(|p| {
            p.state == config::StateBackend::Shared && p.state_failure == StateFailure::Closed
        });
        Some((&backend.settings().url, closed))
    }

    /// Loads the manifest at `path` and everything it references.
    /// Metric handles are created in `metrics`.
    pub async fn load(
        path: &Path,
        runtime: &Arc<Runtime>,
        metrics: &Arc<Metrics>,
    ) -> Result<Snapshot, ConfigErrors> {
        Self::load_with(path, runtime, metrics, None).await
    }

    /// Like [`Snapshot::load`], reusing the compiled plugins of `previous`
    /// whose name, path and sha256 are unchanged.
    pub async fn load_with(
        path: &Path,
        runtime: &Arc<Runtime>,
        metrics: &Arc<Metrics>,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigErrors> {
        let started = Instant::now();
        let manifest = Manifest::load(path)?;
        Self::resolve(&manifest, runtime, metrics, previous, started, true).await
    }

    /// Resolves an already parsed (and possibly adjusted) manifest: `weir
    /// test` points its upstreams at a stub before loading. `[tracing]` is
    /// checked but no spans are exported: test cases are not traffic.
    pub async fn from_manifest(
        m: &Manifest,
        runtime: &Arc<Runtime>,
        metrics: &Arc<Metrics>,
    ) -> Result<Snapshot, ConfigErrors> {
        Self::resolve(m, runtime, metrics, None, Instant::now(), false).await
    }

    /// The phases of a load, in order; every error is collected, so one
    /// `weir check` reports them all.
    async fn resolve(
        m: &Manifest,
        runtime: &Arc<Runtime>,
        metrics: &Arc<Metrics>,
        previous: Option<&Snapshot>,
        started: Instant,
        export: bool,
    ) -> Result<Snapshot, ConfigErrors> {
        let mut l = Loader {
            m,
            errors: Vec::new(),
        };
        let server = resolve_server(&mut l);
        let upstreams = resolve_upstreams(&mut l, previous);
        let plugins::Plugins {
            loaded: plugins,
            policies,
            rollouts,
        } = plugins::load_plugins(&mut l, runtime, metrics, previous).await;
        let state = state::resolve_state(&mut l, metrics, previous);
        let outbound: Arc<dyn OutboundClient> = Arc::new(outbound::Upstreams(upstreams.clone()));
        let loaded = Loaded {
            outbound,
            state: state.as_ref(),
            runtime,
            metrics,
            previous,
            upstreams: &upstreams,
            plugins: &plugins,
            policies: &policies,
            rollouts: &rollouts,
        };
        let (routes, rules) = resolve_routes(&mut l, &loaded).await;
        let tracing = traces::settings(m).unwrap_or_else(|e| {
            l.errors.extend(e);
            None
        });
        if !l.errors.is_empty() {
            return Err(ConfigErrors(l.errors));
        }
        let tracer = match tracing.filter(|_| export) {
            Some(settings) => {
                let old = previous.and_then(|p| p.tracer.as_ref());
                Some(traces::tracer(settings, old, metrics).map_err(|e| {
                    ConfigErrors(vec![
                        m.error_at(0..0, format!("cannot start span export: {e}")),
                    ])
                })?)
            }
            None => None,
        };
        Ok(Snapshot {
            server,
            router: Router::new(rules),
            routes,
            plugins,
            rollouts,
            policies,
            state,
            load_time: started.elapsed(),
            metrics: metrics.clone(),
            tracer,
        })
    }
}

/// What routes are built from: the parts of the load resolved before them.
struct Loaded<'a> {
    runtime: &'a Arc<Runtime>,
    metrics: &'a Arc<Metrics>,
    previous: Option<&'a Snapshot>,
    upstreams: &'a HashMap<String, Arc<Upstream>>,
    plugins: &'a BTreeMap<String, Arc<LoadedPlugin>>,
    policies: &'a BTreeMap<String, Arc<Policy>>,
    rollouts: &'a BTreeMap<String, Arc<crate::plugin::rollout::Rollout>>,
    state: Option<&'a Arc<RedisBackend>>,
    /// The upstreams as plugins granted `grants.http` call them.
    outbound: Arc<dyn OutboundClient>,
}

/// `[server]` (with its TLS), and the `[admin]` and `[log]` checks.
fn resolve_server(l: &mut Loader<'_>) -> ServerSettings {
    let m = l.m;
    let doc = &m.doc;
    let mut listen = Vec::new();
    for a in &doc.server.listen {
        match a.get_ref().parse::<SocketAddr>() {
            Ok(addr) => listen.push(addr),
            Err(_) => {
                l.err::<()>(
                    a.span(),
                    format!("invalid listen address `{}`", a.get_ref()),
                    Some("write it as `IP:PORT`, e.g. \"127.0.0.1:8080\" or \"[::]:8080\"".into()),
                );
            }
        }
    }
    let mut trusted_proxies = Vec::new();
    for p in &doc.server.trusted_proxies {
        let text = p.get_ref();
        let parsed = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => {
                l.err::<()>(
                    p.span(),
                    format!("invalid trusted proxy `{text}`"),
                    Some("write an address or a network: \"10.0.0.7\", \"10.0.0.0/8\"".into()),
                );
            }
        }
    }
    if doc.server.max_header_bytes < 8192 {
        l.err::<()>(0..0, "server.max_header_bytes must be at least 8192", None);
    }
    // `[admin]` and `[log]` apply at start; checked here so `weir check` reports them.
    if let Err(errors) = AdminSettings::resolve(m) {
        l.errors.extend(errors);
    }
    if let Some(level) = &doc.log.level
        && let Err(e) = crate::telemetry::logging::check_level(level.get_ref())
    {
        l.err::<()>(
            level.span(),
            format!("invalid log level `{}`: {e}", level.get_ref()),
            Some("use a level (`info`) or filters like `info,weir::access=off`".into()),
        );
    }
    ServerSettings {
        listen,
        trusted_proxies,
        tls: doc.server.tls.as_ref().and_then(|t| resolve_tls(l, t)),
        ..ServerSettings::from_raw(&doc.server)
    }
}

/// `[upstreams.NAME]`: targets parsed, settings checked; unchanged upstreams keep their state.
fn resolve_upstreams(
    l: &mut Loader<'_>,
    previous: Option<&Snapshot>,
) -> HashMap<String, Arc<Upstream>> {
    let doc = &l.m.doc;
    let mut upstreams: HashMap<String, Arc<Upstream>> = HashMap::new();
    for (name, u) in &doc.upstreams {
        if u.targets.is_empty() {
            l.err::<()>(
                name.span(),
                format!("upstream `{}` has no targets", name.get_ref()),
                Some("add `targets = [\"http://127.0.0.1:9000\"]`".into()),
            );
            continue;
        }
        let mut targets = Vec::new();
        for t in &u.targets {
            match Target::parse(&t.get_ref().url) {
                Ok(target) => targets.push((target, t.get_ref().weight)),
                Err(e) => {
                    l.err::<()>(t.span(), e, None);
                }
            }
        }
        let Some(settings) = upstream_settings(l, name, u, &targets) else {
            continue;
        };
        let up = reuse_or_new(previous, name.get_ref().as_str(), targets, settings);
        upstreams.insert(name.get_ref().to_string(), up);
    }
    upstreams
}

/// `[[routes]]`: each route's match rule, upstream and plugin chain.
async fn resolve_routes(
    l: &mut Loader<'_>,
    loaded: &Loaded<'_>,
) -> (Vec<Arc<Route>>, Vec<RouteRule<Route>>) {
    let m = l.m;
    let doc = &m.doc;
    let mut seen: HashMap<&str, std::ops::Range<usize>> = HashMap::new();
    let mut routes = Vec::new();
    let mut rules = Vec::new();
    for r in &doc.routes {
        let r = r.get_ref();
        let id = r.id.get_ref().as_str();
        if let Some(first) = seen.get(id) {
            let line = config::Location::from_offset(&m.source, first.start).line;
            l.err::<()>(
                r.id.span(),
                format!("duplicate route id `{id}` (first defined on line {line})"),
                Some("give each route a unique `id`".into()),
            );
            continue;
        }
        seen.insert(id, r.id.span());
        let Some(resolved) = resolve_route(l, r, loaded.upstreams, loaded.previous) else {
            continue;
        };
        let (rule, upstream) = resolved;

        let route_id: Arc<str> = id.into();
        let (chain, versions) = resolve_chain(l, r, &route_id, loaded).await;
        // Targets are labelled as they print (`host:port`, `https://...`, `builtin:echo`).
        let targets: Vec<String> = upstream.targets().iter().map(ToString::to_string).collect();
        let route = Arc::new(Route {
            metrics: loaded.metrics.route(id, &upstream.name, &targets),
            id: route_id,
            upstream,
            chain,
            versions,
        });
        rules.push(RouteRule {
            host: rule.0,
            path: rule.1,
            methods: rule.2,
            target: route.clone(),
        });
        routes.push(route);
    }
    (routes, rules)
}

/// One route's `[[routes.plugins]]`: each plugin set up for the route, its
/// config validated by `init` (by every version of a rolled-out plugin).
async fn resolve_chain(
    l: &mut Loader<'_>,
    r: &config::Route,
    route_id: &Arc<str>,
    loaded: &Loaded<'_>,
) -> (Vec<ChainPlugin>, Vec<RouteVersions>) {
    let doc = &l.m.doc;
    let id = &**route_id;
    let mut chain = Vec::new();
    let mut versions = Vec::new();
    for entry in &r.plugins {
        let entry_span = entry.span();
        let entry = entry.get_ref();
        let pname = entry.name.get_ref();
        let Some(plugin) = loaded.plugins.get(pname.as_str()) else {
            if !doc.plugins.keys().any(|k| k.get_ref().as_str() == pname) {
                let known: Vec<&str> = doc.plugins.keys().map(|k| k.get_ref().as_str()).collect();
                l.err::<()>(
                    entry.name.span(),
                    format!("route `{id}`: unknown plugin `{pname}` (defined plugins: {})", list(&known)),
                    Some(format!("define it with `[plugins.{pname}]` and `path = \"...wasm\"`, or fix the name")),
                );
            }
            continue;
        };
        let json = match &entry.config {
            Some(c) => serde_json::to_string(c.get_ref()).unwrap_or_else(|_| "{}".into()),
            None => "{}".into(),
        };
        let isolation = doc
            .plugins
            .iter()
            .find(|(k, _)| k.get_ref().as_str() == pname)
            .map(|(_, p)| p.isolation)
            .unwrap_or_default();
        let policy = loaded
            .policies
            .get(pname.as_str())
            .cloned()
            .unwrap_or_default();
        let Some(fail) = policy::resolve_fail(l, id, entry) else {
            continue;
        };
        let usage = PluginUse {
            config_json: json,
            isolation,
            policy,
            fail,
            state: loaded.state.cloned(),
            outbound: Some(loaded.outbound.clone()),
        };
        let at = Place {
            route_id,
            entry,
            entry_span,
        };
        let rollout = loaded.rollouts.get(pname.as_str());
        let Some(stable) = set_up(
            l,
            &at,
            plugin.clone(),
            usage.clone(),
            loaded,
            rollout.map(|_| 0),
        )
        .await
        else {
            continue;
        };
        if let Some(rollout) = rollout {
            let mut canaries = Vec::new();
            for (i, v) in rollout.versions.iter().enumerate().skip(1) {
                if let Some(cp) =
                    set_up(l, &at, v.plugin.clone(), usage.clone(), loaded, Some(i)).await
                {
                    canaries.push(cp);
                }
            }
            versions.push(RouteVersions {
                place: chain.len(),
                rollout: rollout.clone(),
                canaries,
            });
        }
        chain.push(stable);
    }
    (chain, versions)
}

/// Where in the manifest a plugin is set up for a route.
struct Place<'a> {
    route_id: &'a Arc<str>,
    entry: &'a config::RoutePlugin,
    entry_span: std::ops::Range<usize>,
}

/// One plugin (version `version` of a rolled-out one) set up for a route;
/// a rejected config is reported at its fields.
async fn set_up(
    l: &mut Loader<'_>,
    at: &Place<'_>,
    plugin: Arc<LoadedPlugin>,
    usage: PluginUse,
    loaded: &Loaded<'_>,
    version: Option<usize>,
) -> Option<ChainPlugin> {
    let (id, entry, entry_span) = (&**at.route_id, at.entry, at.entry_span.clone());
    let pname = entry.name.get_ref();
    let which = match version.and_then(|v| loaded.rollouts.get(pname.as_str())?.versions.get(v)) {
        Some(v) => format!("plugin `{pname}` version `{}`", v.label),
        None => format!("plugin `{pname}`"),
    };
    let e = match ChainPlugin::new(
        loaded.runtime.clone(),
        plugin,
        at.route_id.clone(),
        usage,
        loaded.metrics.plugin(pname, id, &PluginErrorKind::REASONS),
    )
    .await
    {
        Ok(cp) => {
            // As many instances ready as the route's previous pool needed.
            let before = loaded.previous.and_then(|p| {
                let route = p.routes.iter().find(|r| &*r.id == id)?;
                route.chain.iter().find(|c| &**c.name() == pname.as_str())
            });
            // A canary's share of the traffic is its own; it starts with one.
            if let Some(before) = before.filter(|_| version.unwrap_or(0) == 0) {
                cp.warm(before.peak_instances()).await;
            }
            return Some(cp);
        }
        Err(e) => e,
    };
    let table = entry.config.as_ref().map(Spanned::span);
    let help = || {
        Some(format!(
            "fix this route's `config` table for `{pname}` (see the plugin's README)"
        ))
    };
    let PluginErrorKind::Config(reasons) = &e.kind else {
        let span = table.unwrap_or(entry_span);
        return l.err(span, format!("route `{id}`, {which}: {}", e.kind), help());
    };
    // One error per reason, each at its field when the plugin names one, in file order.
    let mut located: Vec<_> = reasons
        .lines()
        .map(|reason| {
            let span = table.clone().map_or(entry_span.clone(), |t| {
                config::field::locate(&l.m.source, t.start, reason).unwrap_or(t)
            });
            (span, reason)
        })
        .collect();
    located.sort_by_key(|(span, _)| span.start);
    for (span, reason) in located {
        l.err::<()>(
            span,
            format!("route `{id}`, {which}: config rejected: {reason}"),
            help(),
        );
    }
    None
}

type Rule = (HostMatch, PathMatch, Vec<Method>);

fn resolve_route(
    l: &mut Loader<'_>,
    r: &config::Route,
    upstreams: &HashMap<String, Arc<Upstream>>,
    previous: Option<&Snapshot>,
) -> Option<(Rule, Arc<Upstream>)> {
    let id = r.id.get_ref().as_str();
    let path = match (&r.path, &r.prefix) {
        (Some(_), Some(p)) => {
            return l.err(
                p.span(),
                format!("route `{id}` has both `path` and `prefix`"),
                Some("keep one: `path` matches exactly, `prefix` matches a subtree".into()),
            );
        }
        (Some(p), None) => PathMatch::Exact(check_path(l, p)?),
        (None, Some(p)) => PathMatch::Prefix(check_path(l, p)?),
        (None, None) => PathMatch::Prefix("/".into()),
    };
    let host = match &r.host {
        None => HostMatch::Any,
        Some(h) => {
            let v = h.get_ref().to_ascii_lowercase();
            let bare = v.strip_prefix("*.").unwrap_or(&v);
            if bare.is_empty() || bare.contains(['*', '/', ':', ' ']) {
                return l.err(
                    h.span(),
                    format!("route `{id}`: invalid host `{}`", h.get_ref()),
                    Some("use `api.example.com` or `*.example.com`, without port".into()),
                );
            }
            match v.strip_prefix('*') {
                Some(suffix) => HostMatch::Wildcard(suffix.to_string()),
                None => HostMatch::Exact(v),
            }
        }
    };
    let mut methods = Vec::new();
    for m in r.methods.iter().flatten() {
        match Method::from_bytes(m.get_ref().as_bytes()) {
            Ok(method) if m.get_ref().bytes().all(|b| b.is_ascii_uppercase()) => {
                methods.push(method)
            }
            _ => {
                return l.err(
                    m.span(),
                    format!("route `{id}`: invalid method `{}`", m.get_ref()),
                    Some("use upper-case method names like \"GET\"".into()),
                );
            }
        }
    }
    let up = r.upstream.get_ref();
    let upstream = if let Some(u) = upstreams.get(up.as_str()) {
        u.clone()
    } else if up.starts_with("builtin:") || up.contains("://") {
        match Target::parse(up) {
            Ok(t) => {
                let mut settings = upstream::Settings::default();
                if matches!(t, Target::Http { tls: true, .. }) {
                    match upstream::load_roots(None)
                        .and_then(|r| upstream::client_config(r).map_err(|e| e.to_string()))
                    {
                        Ok(c) => settings.tls = Some(Arc::new(c)),
                        Err(e) => {
                            return l.err(
                                r.upstream.span(),
                                format!("route `{id}`: {e}"),
                                Some("install the system CA certificates (ca-certificates), or define the upstream in `[upstreams]` with `ca`".into()),
                            );
                        }
                    }
                }
                reuse_or_new(previous, up, vec![(t, 1)], settings)
            }
            Err(e) => return l.err(r.upstream.span(), format!("route `{id}`: {e}"), None),
        }
    } else {
        let mut known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        known.sort();
        return l.err(
            r.upstream.span(),
            format!("route `{id}`: unknown upstream `{up}` (defined upstreams: {})", list(&known)),
            Some(format!("define `[upstreams.{up}]` with `targets`, or use a URL like \"http://127.0.0.1:9000\" or \"builtin:echo\"")),
        );
    };
    Some(((host, path, methods), upstream))
}

fn check_path(l: &mut Loader<'_>, p: &Spanned<String>) -> Option<String> {
    match crate::path::normalise(p.get_ref()) {
        Ok(n) if &n == p.get_ref() => Some(n),
        Ok(n) => l.err(
            p.span(),
            format!("route path `{}` is not in normal form", p.get_ref()),
            Some(format!(
                "write it as `{n}`: requests are matched after normalisation"
            )),
        ),
        Err(e) => l.err(
            p.span(),
            format!("invalid route path `{}`: {e}", p.get_ref()),
            None,
        ),
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// An upstream's settings from `[upstreams.NAME]`; errors go to `l`.
#[expect(
    clippy::too_many_lines,
    reason = "one check per key, in the order the README documents them"
)]
fn upstream_settings(
    l: &mut Loader<'_>,
    name: &Spanned<config::Name>,
    u: &config::Upstream,
    targets: &[(Target, u32)],
) -> Option<upstream::Settings> {
    let before = l.errors.len();
    let balance = match u.balance {
        config::Balance::RoundRobin => upstream::Balance::RoundRobin,
        config::Balance::LeastRequest => upstream::Balance::LeastRequest,
        config::Balance::ConsistentHash => {
            let on = match u.hash_on.as_ref().map(|h| (h, h.get_ref().as_str())) {
                None | Some((_, "client_ip")) => upstream::HashOn::ClientIp,
                Some((h, text)) => {
                    match text
                        .strip_prefix("header:")
                        .and_then(|n| http::HeaderName::from_bytes(n.trim().as_bytes()).ok())
                    {
                        Some(header) => upstream::HashOn::Header(header),
                        None => {
                            return l.err(
                            h.span(),
                            format!("upstream `{}`: invalid `hash_on = \"{text}\"`", name.get_ref()),
                            Some("use \"client_ip\" or \"header:NAME\", e.g. \"header:x-user-id\"".into()),
                        );
                        }
                    }
                }
            };
            upstream::Balance::ConsistentHash(on)
        }
    };
    if let Some(h) = &u.hash_on
        && u.balance != config::Balance::ConsistentHash
    {
        l.err::<()>(
            h.span(),
            format!(
                "upstream `{}`: `hash_on` needs `balance = \"consistent_hash\"`",
                name.get_ref()
            ),
            None,
        );
    }
    if !(0.0..=1.0).contains(&u.retry_budget) {
        l.err::<()>(
            name.span(),
            format!(
                "upstream `{}`: `retry_budget` must be between 0 and 1",
                name.get_ref()
            ),
            Some("e.g. 0.2: retries may add at most 20% to the requests".into()),
        );
    }
    let https = targets
        .iter()
        .any(|(t, _)| matches!(t, Target::Http { tls: true, .. }));
    if u.protocol == config::UpstreamProtocol::H2c && https {
        l.err::<()>(
            name.span(),
            format!(
                "upstream `{}`: `protocol = \"h2c\"` is for `http://` targets",
                name.get_ref()
            ),
            Some("`https://` targets negotiate HTTP/2 by ALPN by themselves".into()),
        );
    }
    let mut tls = None;
    let mut roots = None;
    if https || u.ca.is_some() {
        let ca = u.ca.as_ref().map(|c| l.m.base_dir().join(c.get_ref()));
        roots = Some(match &ca {
            Some(path) => format!(
                "ca:{}",
                std::fs::read(path)
                    .map(|b| crate::plugin::sha256_hex(&b))
                    .unwrap_or_default()
            ),
            None => "system".into(),
        });
        let span = u.ca.as_ref().map_or(name.span(), |c| c.span());
        match upstream::load_roots(ca.as_deref())
            .and_then(|r| upstream::client_config(r).map_err(|e| e.to_string()))
        {
            Ok(c) => tls = Some(Arc::new(c)),
            Err(e) => {
                l.err::<()>(
                    span,
                    format!("upstream `{}`: {e}", name.get_ref()),
                    Some("`ca` is a PEM file of CA certificates, relative to the manifest".into()),
                );
            }
        }
    }
    let health = u.health.as_ref().map(|h| {
        let hc = h.get_ref();
        if !hc.path.get_ref().starts_with('/') {
            l.err::<()>(
                hc.path.span(),
                format!(
                    "upstream `{}`: health check path must start with `/`",
                    name.get_ref()
                ),
                None,
            );
        }
        if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
            l.err::<()>(
                h.span(),
                format!(
                    "upstream `{}`: health thresholds must be at least 1",
                    name.get_ref()
                ),
                None,
            );
        }
        upstream::HealthCheck {
            path: hc.path.get_ref().clone(),
            interval: hc.interval.0.max(Duration::from_millis(10)),
            timeout: hc.timeout.0,
            healthy_threshold: hc.healthy_threshold,
            unhealthy_threshold: hc.unhealthy_threshold,
        }
    });
    (l.errors.len() == before).then(|| upstream::Settings {
        connect_timeout: u.connect_timeout.0,
        request_timeout: u.request_timeout.0,
        idle_timeout: u.idle_timeout.0,
        balance,
        retries: u.retries,
        retry_budget: u.retry_budget,
        max_requests: u.max_requests.max(1),
        h2c: u.protocol == config::UpstreamProtocol::H2c,
        tls,
        roots,
        health,
        passive: upstream::Passive {
            consecutive_failures: u.passive.consecutive_failures,
            ejection: u.passive.ejection.0,
        },
    })
}

/// The previous snapshot's upstream of this name if nothing about it changed
/// (targets, settings, trusted CAs), so its connection pool, health state and
/// ejections survive a reload; otherwise a new one.
fn reuse_or_new(
    previous: Option<&Snapshot>,
    name: &str,
    targets: Vec<(Target, u32)>,
    settings: upstream::Settings,
) -> Arc<Upstream> {
    let fingerprint = upstream::fingerprint(&targets, &settings);
    previous
        .and_then(|p| {
            p.routes
                .iter()
                .map(|r| &r.upstream)
                .find(|u| u.name == name && u.fingerprint() == fingerprint)
                .cloned()
        })
        .unwrap_or_else(|| Upstream::new(name.to_string(), targets, settings))
}

/// `[server.tls]`: listen addresses, and each certificate read from disk,
/// checked against its key and registered under its SNI names.
#[expect(
    clippy::too_many_lines,
    reason = "each certificate's checks read best in the order an operator fixes them"
)]
fn resolve_tls(l: &mut Loader<'_>, t: &Spanned<config::Tls>) -> Option<TlsSettings> {
    use crate::tls;
    let before = l.errors.len();
    let tls_cfg = t.get_ref();
    if tls_cfg.listen.is_empty() {
        l.err::<()>(
            t.span(),
            "`[server.tls]` has no `listen` addresses",
            Some("add e.g. `listen = [\"0.0.0.0:8443\"]`, or remove `[server.tls]`".into()),
        );
    }
    let mut listen = Vec::new();
    for a in &tls_cfg.listen {
        match a.get_ref().parse::<SocketAddr>() {
            Ok(addr) => listen.push(addr),
            Err(_) => {
                l.err::<()>(
                    a.span(),
                    format!("invalid TLS listen address `{}`", a.get_ref()),
                    Some("write it as `IP:PORT`, e.g. \"0.0.0.0:8443\" or \"[::]:8443\"".into()),
                );
            }
        }
    }
    if tls_cfg.certificates.is_empty() {
        return l.err(
            t.span(),
            "`[server.tls]` has no certificates",
            Some("add `[[server.tls.certificates]]` with `cert = \"cert.pem\"`, `key = \"key.pem\"` and `names = [\"example.com\"]`".into()),
        );
    }
    let mut resolver: Option<tls::SniResolver> = None;
    let mut fingerprints = Vec::new();
    // Where each name was first listed, for duplicate messages.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, c) in tls_cfg.certificates.iter().enumerate() {
        let c_span = c.span();
        let c = c.get_ref();
        let cert_path = l.m.base_dir().join(c.cert.get_ref());
        let key_path = l.m.base_dir().join(c.key.get_ref());
        if i > 0 && c.names.is_empty() {
            l.err::<()>(
                c_span.clone(),
                format!("TLS certificate `{}` has no `names`", c.cert.get_ref().display()),
                Some("list the SNI names it serves, e.g. `names = [\"api.example.com\"]`; only the first (default) certificate may leave them out".into()),
            );
        }
        let mut names = Vec::new();
        for n in &c.names {
            let name = n.get_ref().to_ascii_lowercase();
            if !tls::valid_name(&name) {
                l.err::<()>(
                    n.span(),
                    format!("invalid TLS name `{}`", n.get_ref()),
                    Some("use a DNS name like `api.example.com` or a one-label wildcard like `*.example.com`, without port".into()),
                );
            } else if let Some(first) = seen.get(&name) {
                let line = config::Location::from_offset(&l.m.source, *first).line;
                l.err::<()>(
                    n.span(),
                    format!("TLS name `{name}` is listed twice (first on line {line})"),
                    Some("each name selects one certificate: remove one of them".into()),
                );
            } else {
                seen.insert(name.clone(), n.span().start);
                names.push(name);
            }
        }
        let key = match tls::load_certified_key(&cert_path, &key_path) {
            Ok(k) => k,
            Err(e) => {
                let span = if e.in_key() {
                    c.key.span()
                } else {
                    c.cert.span()
                };
                let help = e.help().to_string();
                l.err::<()>(span, e.to_string(), Some(help));
                continue;
            }
        };
        if let Some(leaf) = key.cert.first() {
            fingerprints.push((cert_path, crate::plugin::sha256_hex(leaf)));
        }
        let r = resolver.get_or_insert_with(|| tls::SniResolver::new(key.clone()));
        for name in names {
            r.add(&name, key.clone());
        }
    }
    if l.errors.len() != before {
        return None;
    }
    match tls::server_config(resolver?) {
        Ok(config) => Some(TlsSettings {
            listen,
            handshake_timeout: tls_cfg.handshake_timeout.0,
            config: Arc::new(config),
            fingerprints,
        }),
        Err(e) => l.err(
            t.span(),
            format!("TLS settings refused by rustls: {e}"),
            None,
        ),
    }
}
