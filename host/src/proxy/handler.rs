//! One request through the gateway, phase by phase:
//!
//! 1. **limits**: a declared body over `max_body_bytes` is refused (413);
//! 2. **normalise** the path once; every later phase sees that path (400 if malformed);
//! 3. **route** by host, path and method (404/405);
//! 4. **request chain**: hop-by-hop headers go, then each plugin's
//!    `on-request` in order; a `respond` skips the rest and the upstream;
//! 5. **upstream**: forwarding headers set, the body streamed through
//!    (capped), a target picked round robin (502/504 on failure);
//! 6. **response chain**: `on-response` of every plugin that ran, in reverse,
//!    also for early replies;
//! 7. **log and metrics**: one `weir::access` record; route, upstream and
//!    plugin metrics (plugin and upstream ones are taken where they run).
//!
//! Before phase 4 the request gets its `X-Request-Id` and this hop's
//! `traceparent`, so plugins and the upstream see both; the client gets the
//! request id back on every answer, errors included.
//!
//! A plugin failure (trap, deadline, limit) never takes the gateway down: a
//! fail-closed plugin answers its `fail_status` (503) and the upstream is
//! not called; a fail-open plugin is skipped with its changes dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::headers::{set_forwarded, strip_hop_by_hop};
use crate::body::{self, Body, BoxError};
use crate::config::Fail;
use crate::error::GatewayError;
use crate::plugin::{ChainPlugin, Outcome, PluginError, RequestState, ResponseState};
use crate::router::host_of;
use crate::snapshot::{Route, Snapshot};
use crate::telemetry::metrics::Hook;
use crate::telemetry::trace::{self, TraceContext};
use crate::telemetry::{Access, RequestInfo, log_access};
use crate::upstream::{Target, echo};

/// Handles one request against `snap`; never fails: errors become responses.
pub async fn handle(
    snap: Arc<Snapshot>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let raw_path = req.uri().path().to_string();
    let request_id = trace::request_id(req.headers());
    let trace = TraceContext::from_headers(req.headers());
    let mut log = Access::default();
    let ids = Ids {
        request_id: &request_id,
        trace: &trace,
    };
    let mut matched = None;
    let mut resp = match proxy(&snap, req, peer, ids, &mut log, &mut matched).await {
        Ok(r) => r,
        Err(e) => {
            log.answered_by = Some("gateway".into());
            match e.blame() {
                crate::error::Blame::Downstream => {
                    tracing::debug!(%peer, path = raw_path, error = %e, "request refused")
                }
                // Already logged by the plugin layer, with hook and reason.
                crate::error::Blame::Plugin => {
                    tracing::debug!(%peer, path = raw_path, route = log.route.as_deref(), error = %e, "request failed")
                }
                _ => {
                    tracing::warn!(%peer, path = raw_path, route = log.route.as_deref(), request_id, error = %e, "request failed")
                }
            }
            e.to_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(trace::REQUEST_ID, v);
    }
    let elapsed = started.elapsed();
    matched
        .as_ref()
        .map_or_else(|| snap.metrics.unrouted(), |r: &Arc<Route>| &r.metrics)
        .answered(resp.status(), elapsed);
    // Exact for replies, errors and upstream bodies with a Content-Length; never buffered to count.
    let bytes = resp.body().size_hint().exact();
    let info = RequestInfo {
        method: &method,
        raw_path: &raw_path,
        peer,
        request_id: &request_id,
        trace_id: &trace.trace_id,
    };
    log_access(&info, &log, resp.status(), bytes, elapsed);
    resp
}

/// The ids this request carries.
#[derive(Clone, Copy)]
struct Ids<'a> {
    request_id: &'a str,
    trace: &'a TraceContext,
}

async fn proxy(
    snap: &Snapshot,
    req: Request<Incoming>,
    peer: SocketAddr,
    ids: Ids<'_>,
    log: &mut Access,
    matched: &mut Option<Arc<Route>>,
) -> Result<Response<Body>, GatewayError> {
    let (mut parts, body) = req.into_parts();

    // 1. limits
    let max_body = snap.server.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(GatewayError::BodyTooLarge(max_body));
    }

    // 2. normalise
    let path = crate::path::normalise(parts.uri.path())?;
    log.path = Some(path.clone());

    // 3. route
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
    let host = authority.as_deref().map(host_of);
    let route: Arc<Route> = snap
        .router
        .find(host.as_deref(), &path, &parts.method)
        .map_err(|method_mismatch| {
            if method_mismatch {
                GatewayError::MethodNotAllowed
            } else {
                GatewayError::NoRoute
            }
        })?
        .clone();
    log.route = Some(route.id.clone());
    *matched = Some(route.clone());

    // 4. request chain
    strip_hop_by_hop(&mut parts.headers);
    if let Ok(v) = HeaderValue::from_str(ids.request_id) {
        parts.headers.insert(trace::REQUEST_ID, v);
    }
    ids.trace.inject(&mut parts.headers);
    let mut state = RequestState {
        method: parts.method.clone(),
        path,
        query: parts.uri.query().map(str::to_string),
        authority,
        headers: std::mem::take(&mut parts.headers),
        client: peer,
        route_id: route.id.clone(),
        vars: vec![
            ("request_id".into(), ids.request_id.into()),
            ("trace_id".into(), ids.trace.trace_id.clone()),
        ],
        read_only: false,
    };
    let mut ran = Vec::with_capacity(route.chain.len());
    let mut early = None;
    for (i, plugin) in route.chain.iter().enumerate() {
        // Fail open means "as if it were not there": keep the request as it was before it.
        let before = (plugin.fail.mode == Fail::Open).then(|| state.clone());
        let t = Instant::now();
        let result = plugin.on_request(state).await;
        let took = t.elapsed();
        log.plugin_time += took;
        plugin.metrics.called(Hook::Request, took);
        match result {
            Ok((back, outcome)) => {
                state = back;
                ran.push(i);
                if let Outcome::Respond {
                    status,
                    headers,
                    body,
                } = outcome
                {
                    plugin.metrics.short_circuited(status.as_u16());
                    log.answered_by = Some(plugin.name().clone());
                    log.short_circuit = Some(plugin.name().clone());
                    early = Some((status, headers, body));
                    break;
                }
            }
            Err(e) => {
                plugin.metrics.failed(&e.kind);
                state = before.ok_or_else(|| closed(plugin, e))?;
            }
        }
    }

    // 5. upstream (unless a plugin answered)
    let (status, mut headers, body) = match early {
        Some((status, headers, bytes)) => (status, headers, body::full(bytes)),
        None => {
            let resp = forward(&route, &state, body, max_body, log).await?;
            let (p, b) = resp.into_parts();
            (p.status, p.headers, b)
        }
    };
    let framing = headers.get(header::CONTENT_LENGTH).cloned();
    strip_hop_by_hop(&mut headers);

    // 6. response chain, reverse order
    let mut resp_state = ResponseState { status, headers };
    state.read_only = true;
    for &i in ran.iter().rev() {
        let plugin = &route.chain[i];
        let before = (plugin.fail.mode == Fail::Open).then(|| (state.clone(), resp_state.clone()));
        let t = Instant::now();
        let result = plugin.on_response(state, resp_state).await;
        let took = t.elapsed();
        log.plugin_time += took;
        plugin.metrics.called(Hook::Response, took);
        match result {
            Ok(back) => (state, resp_state) = back,
            Err(e) => {
                plugin.metrics.failed(&e.kind);
                (state, resp_state) = before.ok_or_else(|| closed(plugin, e))?;
            }
        }
    }

    let mut resp = Response::new(body);
    *resp.status_mut() = resp_state.status;
    *resp.headers_mut() = resp_state.headers;
    // Framing belongs to the gateway: a plugin cannot desync the body length.
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    if let Some(cl) = framing {
        resp.headers_mut().insert(header::CONTENT_LENGTH, cl);
    }
    Ok(resp)
}

/// The answer of a fail-closed plugin that failed.
fn closed(plugin: &ChainPlugin, error: PluginError) -> GatewayError {
    GatewayError::Plugin {
        error,
        status: plugin.fail.status,
    }
}

async fn forward(
    route: &Route,
    state: &RequestState,
    body: Incoming,
    max_body: u64,
    log: &mut Access,
) -> Result<Response<Body>, GatewayError> {
    let mut pq = state.path.clone();
    if let Some(q) = &state.query {
        pq.push('?');
        pq.push_str(q);
    }
    let mut headers: HeaderMap = state.headers.clone();
    set_forwarded(&mut headers, state.client, state.authority.as_deref());
    let body: Body = Limited::new(body, usize::try_from(max_body).unwrap_or(usize::MAX)).boxed();

    let upstream = &route.upstream;
    let (index, target) = upstream.pick_indexed();
    let metrics = route.metrics.target(index);
    if let Some(m) = metrics {
        log.upstream = Some(m.label.clone());
    }
    let uri = match target {
        Target::Echo => pq.clone(),
        Target::Http(authority) => format!("http://{authority}{pq}"),
    };
    let mut req = Request::builder()
        .method(state.method.clone())
        .uri(uri)
        .body(body)
        .map_err(|e| GatewayError::Internal(format!("cannot build the upstream request: {e}")))?;
    *req.headers_mut() = headers;

    let sent = Instant::now();
    let result = match target {
        Target::Echo => echo::respond(req)
            .await
            .map_err(|e| classify(e, max_body, "builtin:echo")),
        Target::Http(authority) => {
            match tokio::time::timeout(upstream.request_timeout, upstream.client.request(req)).await
            {
                Err(_) => Err(GatewayError::UpstreamTimeout(upstream.request_timeout)),
                Ok(Err(e)) => Err(classify(Box::new(e), max_body, authority.as_str())),
                Ok(Ok(resp)) => Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed())),
            }
        }
    };
    let took = sent.elapsed();
    log.upstream_time = Some(took);
    if let Some(m) = metrics {
        m.exchanged(result.as_ref().map(|_| ()), took);
    }
    result
}

/// Sorts a failed exchange into client-body-too-large or upstream failure.
fn classify(e: BoxError, max_body: u64, target: &str) -> GatewayError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return GatewayError::BodyTooLarge(max_body);
        }
        source = err.source();
    }
    GatewayError::UpstreamUnavailable(format!("{target}: {}", error_chain(e.as_ref())))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
