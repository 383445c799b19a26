//! One request through the gateway, phase by phase:
//!
//! 1. **limits**: URI length (414), ambiguous framing (400), a declared body
//!    over `max_body_bytes` (413);
//! 2. **normalise** the path once; every later phase sees that path (400 if malformed);
//! 3. **route** by host (400 when `Host` and the target's authority disagree),
//!    path and method (404/405; `CONNECT` and `TRACE` only where a route lists them);
//! 4. **request chain**: hop-by-hop and underscore headers go and forwarding
//!    headers are set, then each plugin's `on-request` in order; a `respond`
//!    skips the rest and the upstream;
//! 5. **upstream**: a small body read whole first, admission (`max_requests`, 503), a target picked by the
//!    upstream's balancing, the body streamed through (capped, timed),
//!    retries of connect failures on another target (502/504 on failure); a
//!    WebSocket upgrade the upstream accepts becomes a tunnel;
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

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::ConnInfo;
use super::headers::{self as edge, set_forwarded, strip_hop_by_hop};
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

/// Request bodies up to this size are read whole before the upstream is
/// asked for a place (nginx buffers 8-16 KiB in memory by default).
const UPLOAD_BUFFER: usize = 64 * 1024;

/// Handles one request against `snap`; never fails: errors become responses.
pub async fn handle(snap: Arc<Snapshot>, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
    let peer = conn.peer;
    let started = Instant::now();
    let http1 = req.version() < http::Version::HTTP_2;
    let body_pending = !req.body().is_end_stream();
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
    let mut resp = match proxy(&snap, req, conn, ids, &mut log, &mut matched).await {
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
            let mut resp = e.to_response();
            if http1 && e.closes_connection() {
                // The rest of what the client sent cannot be trusted as a next request.
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    };
    if http1 && body_pending && log.upstream_time.is_none() {
        // Answered without reading the body (a plugin's 401, an error): close
        // rather than let its bytes be read as the next request.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
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
    conn: ConnInfo,
    ids: Ids<'_>,
    log: &mut Access,
    matched: &mut Option<Arc<Route>>,
) -> Result<Response<Body>, GatewayError> {
    let (mut parts, body) = req.into_parts();
    let server = &snap.server;

    // 1. limits and framing
    if parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len()) > server.max_uri_bytes {
        return Err(GatewayError::UriTooLong(server.max_uri_bytes));
    }
    edge::check_framing(&parts.headers)?;
    let max_body = server.max_body_bytes;
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
    if !server.allow_encoded_slashes && crate::path::has_encoded_slash(&path) {
        return Err(crate::path::PathError::EncodedSlash.into());
    }
    log.path = Some(path.clone());

    // 3. route
    let authority = routed_authority(&parts)?;
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

    // 4. request chain: edge rules first, so plugins see (and may change) what the upstream gets
    let upgrade = edge::websocket_upgrade(&parts)
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    // `TE: trailers` is the one TE value passed on: gRPC needs it end to end.
    let te_trailers = parts
        .headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip_hop_by_hop(&mut parts.headers);
    if te_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if !server.allow_underscore_headers {
        edge::drop_underscore_names(&mut parts.headers);
    }
    let tls = conn.tls;
    let trusted = server
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&conn.peer.ip()));
    // Behind trusted proxies, plugins (rate limits by client...) see the real client.
    let client = if trusted {
        edge::forwarded_client(&parts.headers, conn.peer, &server.trusted_proxies)
    } else {
        conn.peer
    };
    set_forwarded(
        &mut parts.headers,
        conn.peer,
        authority.as_deref(),
        tls,
        trusted,
    );
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
        client,
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
    let mut tunnel = None;
    let (status, mut headers, body) = match early {
        Some((status, headers, bytes)) => (status, headers, body::full(bytes)),
        None => {
            let upgrading = upgrade.is_some();
            let (resp, upstream_upgrade) =
                forward(&route, &mut state, body, server, upgrading, log).await?;
            let (p, b) = resp.into_parts();
            if p.status == http::StatusCode::SWITCHING_PROTOCOLS {
                // Only a WebSocket request the upstream accepted becomes a tunnel.
                match (upgrade.flatten(), upstream_upgrade) {
                    (Some(client), Some(upstream)) => tunnel = Some((client, upstream)),
                    _ => {
                        return Err(GatewayError::UpstreamUnavailable(
                            "the upstream switched protocols without being asked".into(),
                        ));
                    }
                }
            }
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
    // Plugins cannot set hop-by-hop or framing headers; strip again all the same.
    strip_hop_by_hop(resp.headers_mut());
    if let Some((client, upstream)) = tunnel {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        resp.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        tokio::spawn(splice(client, upstream, route.id.clone()));
    }
    // Framing belongs to the gateway: a plugin cannot desync the body length.
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    if let Some(cl) = framing {
        resp.headers_mut().insert(header::CONTENT_LENGTH, cl);
    }
    Ok(resp)
}

/// The authority the request is routed by, and the only one the upstream
/// sees: the request-target's (absolute-form, HTTP/2 `:authority`) or the
/// one `Host` header. Two `Host` headers, or a target authority that
/// disagrees with `Host`, are refused: otherwise the router and the upstream
/// could each believe a different host.
fn routed_authority(parts: &http::request::Parts) -> Result<Option<String>, GatewayError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::AmbiguousHost("several Host headers"));
    }
    let host = host
        .map(|v| v.to_str())
        .transpose()
        .map_err(|_| GatewayError::AmbiguousHost("the Host header is not visible ASCII"))?;
    match (parts.uri.authority().map(|a| a.as_str()), host) {
        (Some(target), Some(host)) if !target.eq_ignore_ascii_case(host) => Err(
            GatewayError::AmbiguousHost("the request target's authority and Host disagree"),
        ),
        (Some(target), _) => Ok(Some(target.to_string())),
        (None, host) => Ok(host.map(str::to_string)),
    }
}

/// The answer of a fail-closed plugin that failed.
fn closed(plugin: &ChainPlugin, error: PluginError) -> GatewayError {
    GatewayError::Plugin {
        error,
        status: plugin.fail.status,
    }
}

/// Sends the request to a target of the route's upstream: admission under
/// `max_requests`, target choice, retries of connect failures (idempotent
/// requests without a body, within the retry budget), passive health
/// reports. Returns the response and, for a WebSocket upgrade, the
/// upstream side of the tunnel.
async fn forward(
    route: &Route,
    state: &mut RequestState,
    body: Incoming,
    server: &crate::snapshot::ServerSettings,
    upgrading: bool,
    log: &mut Access,
) -> Result<(Response<Body>, Option<hyper::upgrade::OnUpgrade>), GatewayError> {
    let upstream = &route.upstream;
    let max_body = server.max_body_bytes;
    // A request without a body can be sent again; one with a body streams once.
    let replayable = body.is_end_stream();
    // A small body is read whole before a place under `max_requests` is
    // taken: a client trickling its body must not hold one.
    let mut upload = None;
    let mut client_done = None;
    if !replayable {
        let limited = Limited::new(body, usize::try_from(max_body).unwrap_or(usize::MAX));
        let timed = body::Timed::new(limited, server.body_read_timeout).boxed();
        let up = body::Upload::begin(timed, UPLOAD_BUFFER)
            .await
            .map_err(|e| classify(e, server, "the client"))?;
        client_done = Some(up.client_done());
        upload = Some(up);
    }
    let mut admitted = upstream.admit()?;
    let mut pq = state.path.clone();
    if let Some(q) = &state.query {
        pq.push('?');
        pq.push_str(q);
    }
    let key = upstream.hash_key(state.client.ip(), &state.headers);
    // Response hooks see the request's headers; without a chain they can move.
    let mut headers: HeaderMap = if route.chain.is_empty() {
        std::mem::take(&mut state.headers)
    } else {
        state.headers.clone()
    };
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let mut next_body = || -> Body { upload.take().map_or_else(body::empty, |u| u.boxed()) };
    let retry = replayable && state.method.is_idempotent();
    let mut tried = Vec::new();
    loop {
        let index = upstream.pick(key, &tried);
        let endpoint = &upstream.endpoints()[index];
        let target = &endpoint.target;
        upstream.begin(&mut admitted, index);
        let metrics = route.metrics.target(index);
        if let Some(m) = metrics {
            log.upstream = Some(m.label.clone());
        }
        let mut uri = String::with_capacity(endpoint.base_url.len() + pq.len());
        uri.push_str(&endpoint.base_url);
        uri.push_str(&pq);
        let mut req = Request::builder()
            .method(state.method.clone())
            .uri(uri)
            .body(next_body())
            .map_err(|e| {
                GatewayError::Internal(format!("cannot build the upstream request: {e}"))
            })?;
        let may_retry = retry
            && tried.len() < upstream.settings.retries as usize
            && tried.len() + 1 < upstream.endpoints().len();
        *req.headers_mut() = if may_retry {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };

        let sent = Instant::now();
        let mut connect_failed = false;
        let result = match target {
            Target::Echo => echo::respond(req)
                .await
                .map(|r| (r, None))
                .map_err(|e| classify(e, server, "builtin:echo")),
            Target::Http { .. } => {
                match tokio::time::timeout(
                    upstream.settings.request_timeout,
                    upstream.client.request(req),
                )
                .await
                {
                    // Still waiting for the client's body: the client is slow, not the target.
                    Err(_)
                        if client_done
                            .as_ref()
                            .is_some_and(|d| !d.load(Ordering::Relaxed)) =>
                    {
                        Err(GatewayError::BodyTimeout(upstream.settings.request_timeout))
                    }
                    Err(_) => Err(GatewayError::UpstreamTimeout(
                        upstream.settings.request_timeout,
                    )),
                    Ok(Err(e)) => {
                        connect_failed = e.is_connect();
                        Err(classify(Box::new(e), server, &target.to_string()))
                    }
                    Ok(Ok(mut resp)) => {
                        let up = (resp.status() == http::StatusCode::SWITCHING_PROTOCOLS)
                            .then(|| hyper::upgrade::on(&mut resp));
                        Ok((
                            resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()),
                            up,
                        ))
                    }
                }
            }
        };
        let took = sent.elapsed();
        log.upstream_time = Some(log.upstream_time.unwrap_or_default() + took);
        if let Some(m) = metrics {
            m.exchanged(result.as_ref().map(|_| ()), took);
        }
        let failed = match &result {
            Ok((r, _)) => matches!(r.status().as_u16(), 502..=504),
            Err(e) => e.blame() == crate::error::Blame::Upstream,
        };
        upstream.report(index, !failed);
        // Retries go to another target: one that refused a connection just now would again.
        if connect_failed && may_retry && upstream.take_retry() {
            tracing::debug!(upstream = %upstream.name, target = %target, "connect failed; retrying on another target");
            tried.push(index);
            continue;
        }
        // The place under `max_requests` is held until the response body ends.
        return result.map(|(resp, up)| (resp.map(|b| body::Hold::new(b, admitted).boxed()), up));
    }
}

/// Copies bytes both ways between a client and an upstream that agreed to
/// switch to WebSocket, until either side closes.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    route: Arc<str>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(%route, error = %e, "websocket upgrade failed");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%route, error = %e, "websocket tunnel ended with an error");
    }
}

/// Sorts a failed exchange into client-body-too-large or upstream failure.
fn classify(e: BoxError, server: &crate::snapshot::ServerSettings, target: &str) -> GatewayError {
    let err: &(dyn std::error::Error + 'static) = e.as_ref();
    if has::<http_body_util::LengthLimitError>(err) {
        GatewayError::BodyTooLarge(server.max_body_bytes)
    } else if has::<body::ReadTimeout>(err) {
        GatewayError::BodyTimeout(server.body_read_timeout)
    } else if has::<body::ClientBody>(err) {
        GatewayError::BadFraming("the request body is malformed or ended early")
    } else {
        GatewayError::UpstreamUnavailable(format!("{target}: {}", crate::error::chain(err)))
    }
}

/// Whether `E` is anywhere in the source chain of `err`.
fn has<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if e.is::<E>() {
            return true;
        }
        source = e.source();
    }
    false
}
