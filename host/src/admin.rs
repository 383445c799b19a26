//! The admin listener (`[admin]`): health, readiness, metrics, what is
//! loaded, and reload. It is separate from the proxy listeners, binds
//! loopback unless told otherwise, and comes up before the first snapshot
//! loads so `/readyz` can say "not yet".
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 503 until the first snapshot is loaded, then 200; 503 again while draining on shutdown, or while the `[state]` backend is unreachable and a plugin fails closed on it (200 naming it when all fail open) |
//! | `GET /metrics` | Prometheus/OpenMetrics text |
//! | `GET /routes` | JSON: each route's match, upstream and plugin chain |
//! | `GET /plugins` | JSON: each plugin's sha256, size, load time, limits and routes |
//! | `POST /reload` | 200 and a JSON summary, or 422 and the config errors |
//! | `POST /plugins/NAME/promote`, `/rollback`, `/reset` | a rolled-out plugin's versions by hand (see `admin/rollout.rs`) |
//!
//! With `token` (or `token_env`) set, every endpoint but `/healthz` and
//! `/readyz` (probes) needs `Authorization: Bearer <token>`.

mod rollout;

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{Body, full};
use crate::router::{HostMatch, PathMatch};
use crate::snapshot::Snapshot;
use crate::telemetry::metrics::Metrics;

/// What the admin handlers read.
pub(crate) struct AdminState {
    pub(crate) metrics: Arc<Metrics>,
    token: Option<String>,
    /// Set once the first snapshot serves: `/readyz` flips to 200.
    pub(crate) gateway: OnceLock<Arc<crate::Reloader>>,
    /// Set when a graceful shutdown begins: `/readyz` says 503 so load
    /// balancers stop sending while requests in flight finish.
    pub(crate) draining: std::sync::atomic::AtomicBool,
}

impl AdminState {
    pub(crate) fn new(metrics: Arc<Metrics>, token: Option<String>) -> AdminState {
        AdminState {
            metrics,
            token,
            gateway: OnceLock::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn authorised(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(given.trim().as_bytes(), token.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves the admin API on `listener` until `stop` flips.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut stop: watch::Receiver<bool>,
) {
    while let Some((stream, peer)) = crate::net::accept(&listener, &mut stop, "admin").await {
        let state = state.clone();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// The gauges that describe the serving snapshot, read from it at scrape
/// time: cleared first, so plugins and routes removed by a reload disappear.
fn set_snapshot_gauges(metrics: &Metrics, snap: &Snapshot) {
    let plugins = snap.plugins.values().map(|p| (&*p.name, p.sha256.as_str()));
    let idle = snap.routes.iter().flat_map(|route| {
        route
            .chain
            .iter()
            .map(|cp| (&**cp.name(), &*route.id, cp.idle_instances()))
    });
    metrics.set_snapshot_gauges(plugins, idle);
    let versions = snap.rollouts.values().flat_map(|r| {
        r.versions.iter().zip(r.shares()).map(move |(v, share)| {
            let f = v.figures();
            crate::telemetry::metrics::VersionGauges {
                plugin: &r.plugin,
                version: &v.label,
                sha256: &v.plugin.sha256,
                share,
                calls: f.calls,
                failures: f.failures,
            }
        })
    });
    metrics.set_version_gauges(versions);
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut body = serde_json::to_string_pretty(v).unwrap_or_default();
    body.push('\n');
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let control = path
        .strip_prefix("/plugins/")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(name, action)| Some((name, rollout::Action::parse(action)?)));
    let allowed: &[Method] = match path {
        "/healthz" | "/readyz" | "/metrics" | "/routes" | "/plugins" => {
            &[Method::GET, Method::HEAD]
        }
        "/reload" => &[Method::POST],
        _ if control.is_some() => &[Method::POST],
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    if !allowed.contains(req.method()) {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        let allow: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return r;
    }
    let gateway = state.gateway.get();
    match path {
        "/healthz" => return text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let draining = state.draining.load(std::sync::atomic::Ordering::Relaxed);
            return match gateway {
                Some(_) if draining => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
                Some(g) => match g.current().load().state_down() {
                    // Fail-closed plugins answer 503 anyway: say so to the balancer.
                    Some((url, true)) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "state backend {url} unreachable: fail-closed plugins refuse requests\n"
                        ),
                    ),
                    Some((url, false)) => text(
                        StatusCode::OK,
                        format!(
                            "ready; state backend {url} unreachable: plugins count in local memory\n"
                        ),
                    ),
                    None => text(StatusCode::OK, "ready\n"),
                },
                None => text(StatusCode::SERVICE_UNAVAILABLE, "loading\n"),
            };
        }
        _ => {}
    }
    if !state.authorised(&req) {
        let mut r = text(StatusCode::UNAUTHORIZED, "admin token required\n");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"weir-admin\""),
        );
        return r;
    }
    if path == "/metrics" {
        if let Some(g) = gateway {
            set_snapshot_gauges(&state.metrics, &g.current().load());
        }
        let mut r = Response::new(full(state.metrics.encode()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        return r;
    }
    let Some(gateway) = gateway else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "loading\n");
    };
    if let Some((name, action)) = control {
        let version = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("version="))
                .filter(|v| !v.is_empty())
        });
        let (status, body) = rollout::control(&gateway.current().load(), name, action, version);
        return json_response(status, &body);
    }
    match path {
        "/routes" => json_response(StatusCode::OK, &routes(&gateway.current().load())),
        "/plugins" => json_response(StatusCode::OK, &plugins(&gateway.current().load())),
        _ => match gateway.reload("admin API").await {
            Ok(snap) => json_response(
                StatusCode::OK,
                &json!({
                    "status": "ok",
                    "routes": snap.routes.len(),
                    "plugins": snap.plugins.len(),
                    "load_time_ms": millis(snap.load_time),
                }),
            ),
            Err(errors) => text(StatusCode::UNPROCESSABLE_ENTITY, format!("{errors}\n")),
        },
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn routes(snap: &Snapshot) -> Value {
    let rules = snap.router.rules();
    let list: Vec<Value> = snap
        .routes
        .iter()
        .map(|route| {
            let rule = rules.iter().find(|r| Arc::ptr_eq(&r.target, route));
            let host = rule.map(|r| match &r.host {
                HostMatch::Any => Value::Null,
                HostMatch::Exact(h) => h.clone().into(),
                HostMatch::Wildcard(s) => format!("*{s}").into(),
            });
            let (kind, path) = match rule.map(|r| &r.path) {
                Some(PathMatch::Exact(p)) => ("path", p.clone()),
                Some(PathMatch::Prefix(p)) => ("prefix", p.clone()),
                None => ("prefix", "/".into()),
            };
            let methods: Vec<&str> = rule
                .map(|r| r.methods.iter().map(Method::as_str).collect())
                .unwrap_or_default();
            let plugins: Vec<Value> = route
                .chain
                .iter()
                .map(|p| {
                    json!({
                        "name": &*p.plugin.name,
                        "sha256": p.plugin.sha256,
                        "isolation": format!("{:?}", p.isolation).to_lowercase(),
                        "idle_instances": p.idle_instances(),
                        "circuit_open": p.circuit_open(),
                    })
                })
                .collect();
            let targets: Vec<String> = route
                .upstream
                .targets()
                .iter()
                .map(ToString::to_string)
                .collect();
            let up = &route.upstream;
            let health: Vec<Value> = (0..up.endpoints().len())
                .map(|i| {
                    let ep = &up.endpoints()[i];
                    json!({
                        "target": ep.target.to_string(),
                        "weight": ep.weight,
                        "healthy": ep.healthy(),
                        "ejected": up.ejected(i),
                        "in_flight": ep.in_flight(),
                    })
                })
                .collect();
            json!({
                "id": &*route.id,
                "host": host.unwrap_or(Value::Null),
                kind: path,
                "methods": methods,
                "upstream": route.upstream.name,
                "targets": targets,
                "target_state": health,
                "plugins": plugins,
            })
        })
        .collect();
    Value::Array(list)
}

fn plugins(snap: &Snapshot) -> Value {
    let list: Vec<Value> = snap
        .plugins
        .values()
        .map(|p| {
            let routes: Vec<&str> = snap
                .routes
                .iter()
                .filter(|r| r.chain.iter().any(|c| Arc::ptr_eq(&c.plugin, p)))
                .map(|r| &*r.id)
                .collect();
            let loaded_at = p
                .loaded_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            json!({
                "name": &*p.name,
                "path": p.path.display().to_string(),
                "sha256": p.sha256,
                "size": p.size,
                "load_time_ms": millis(p.load_time),
                "loaded_at": loaded_at,
                "limits": snap.policies.get(&*p.name).map(|pol| &pol.limits),
                "routes": routes,
                "compiled_from": p.source,
                "rollout": snap.rollouts.get(&*p.name).map(|r| rollout::versions(r)),
            })
        })
        .collect();
    Value::Array(list)
}
