//! One request through the gateway, phase by phase:
//!
//! 1. **limits**: URI length (414), ambiguous framing (400), a declared body
//!    over `max_body_bytes` (413);
//! 2. **normalise** the path once; every later phase sees that path (400 if malformed);
//! 3. **route** by host (400 when `Host` and the target's authority disagree),
//!    path and method (404/405; `CONNECT` and `TRACE` only where a route lists them);
//! 4. **request chain**: hop-by-hop and underscore headers go and forwarding
//!    headers are set; the body is read whole (decoded, capped: 413) if a
//!    plugin of the route asked for it; then each plugin's `on-request` in
//!    order; a `respond` skips the rest and the upstream;
//! 5. **upstream**: a small body read whole first, admission (`max_requests`, 503), a target picked by the
//!    upstream's balancing, the body streamed through (capped, timed),
//!    retries of connect failures on another target (502/504 on failure); a
//!    WebSocket upgrade the upstream accepts becomes a tunnel;
//! 6. **response chain**: the response body read whole (decoded, capped:
//!    502) if a plugin of the route asked for it; then `on-response` of
//!    every plugin that ran, in reverse, also for early replies;
//! 7. **log and metrics**: one `weir::access` record; route, upstream and
//!    plugin metrics (plugin and upstream ones are taken where they run).
//!
//! Before phase 4 the request gets its `X-Request-Id` and this hop's
//! `traceparent`, so plugins and the upstream see both; the client gets the
//! request id back on every answer, errors included.
//!
//! With `[tracing]`, the sampling decision is made in [`RequestCtx::new`];
//! a sampled request records its hook calls and upstream attempts as plain
//! timings and hands them to the exporter in phase 7. Unsampled ones (and
//! every request without `[tracing]`) carry `None` and record nothing.
//!
//! A plugin failure (trap, deadline, limit) never takes the gateway down: a
//! fail-closed plugin answers its `fail_status` (503) and the upstream is
//! not called; a fail-open plugin is skipped with its changes dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};

use super::ConnInfo;
use super::bodies::{self, BodyError};
use super::headers::{self as edge, set_forwarded, strip_hop_by_hop};
use crate::body::{self, Body, BoxError};
use crate::error::GatewayError;
use crate::plugin::host::body::Buffered;
use crate::plugin::{Chain, Early, Failed, RequestState, ResponseState};
use crate::router::host_of;
use crate::snapshot::{Route, ServerSettings, Snapshot};
use crate::telemetry::metrics::Exchange;
use crate::telemetry::spans::{RequestSpans, ServerSpan};
use crate::telemetry::trace::{self, TraceContext};
use crate::telemetry::{Access, RequestInfo, log_access};
use crate::upstream::{Endpoint, ExchangeError, Target};

/// Request bodies up to this size are read whole before the upstream is
/// asked for a place (nginx buffers 8-16 KiB in memory by default).
const UPLOAD_BUFFER: usize = 64 * 1024;

/// A request body the phases can read: hyper's `Incoming` when serving, a
/// buffered body when `weir test` runs a case in-process.
pub trait RequestBody:
    http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + 'static
{
}
impl<B> RequestBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + 'static
{
}

/// Handles one request against `snap`; never fails: errors become responses.
pub async fn handle<B: RequestBody>(
    snap: Arc<Snapshot>,
    req: Request<B>,
    conn: ConnInfo,
) -> Response<Body> {
    let mut ctx = RequestCtx::new(snap, &req, conn);
    let resp = match ctx.proxy(req).await {
        Ok(resp) => resp,
        Err(e) => ctx.refuse(e),
    };
    ctx.finish(resp)
}

/// What a request's phases decided, beside the response: for `weir test`.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The matched route's id.
    pub route: Option<Arc<str>>,
    /// Who answered when the upstream did not: a plugin's name or `gateway`.
    pub answered_by: Option<Arc<str>>,
    /// The request variables after the request chain.
    pub vars: Vec<(String, String)>,
}

/// [`handle`], also returning what the phases decided.
pub async fn handle_observed<B: RequestBody>(
    snap: Arc<Snapshot>,
    req: Request<B>,
    conn: ConnInfo,
) -> (Response<Body>, Observed) {
    let mut ctx = RequestCtx::new(snap, &req, conn);
    ctx.observed = Some(Observed::default());
    let resp = match ctx.proxy(req).await {
        Ok(resp) => resp,
        Err(e) => ctx.refuse(e),
    };
    let resp = ctx.finish(resp);
    let mut observed = ctx.observed.take().unwrap_or_default();
    observed.route = ctx.route.as_ref().map(|r| r.id.clone());
    observed.answered_by = ctx.access.answered_by.clone();
    (resp, observed)
}

/// What one request carries through its phases; each phase reads it and
/// leaves what it learnt in it.
struct RequestCtx {
    /// The snapshot the request runs on, to the end.
    snap: Arc<Snapshot>,
    conn: ConnInfo,
    started: Instant,
    http1: bool,
    method: Method,
    /// The target as received, for logs when its path cannot be normalised
    /// (a `Uri` clone shares its bytes; a `String` would copy them).
    raw_uri: http::Uri,
    /// Made once, sent upstream and back as it is.
    request_id: HeaderValue,
    trace: TraceContext,
    /// The access log is on: the record is worth filling in.
    logging: bool,
    /// The access record, filled in as phases run.
    access: Access,
    /// The matched route (phase 3).
    route: Option<Arc<Route>>,
    /// The client sent a body that nothing has read yet.
    body_unread: bool,
    /// Filled in for [`handle_observed`] only.
    observed: Option<Observed>,
    /// A sampled request's spans (with `[tracing]`); `None` costs nothing.
    spans: Option<Box<RequestSpans>>,
}

impl RequestCtx {
    fn new<B: RequestBody>(snap: Arc<Snapshot>, req: &Request<B>, conn: ConnInfo) -> RequestCtx {
        let mut trace = TraceContext::from_headers(req.headers());
        // The sampling decision, once, before the traceparent goes anywhere.
        let spans = snap.tracer.as_ref().and_then(|t| t.begin(&mut trace));
        RequestCtx {
            snap,
            conn,
            started: Instant::now(),
            http1: req.version() < http::Version::HTTP_2,
            method: req.method().clone(),
            raw_uri: req.uri().clone(),
            request_id: trace::request_id(req.headers()),
            trace,
            logging: tracing::enabled!(target: "weir::access", tracing::Level::INFO),
            access: Access::default(),
            route: None,
            body_unread: !req.body().is_end_stream(),
            observed: None,
            spans,
        }
    }

    /// The phases, in order; an error from any of them is answered by [`RequestCtx::refuse`].
    async fn proxy<B: RequestBody>(
        &mut self,
        req: Request<B>,
    ) -> Result<Response<Body>, GatewayError> {
        let snap = self.snap.clone();
        let server = &snap.server;
        let (mut parts, body) = req.into_parts();
        check_limits(&parts, server)?;
        let path = normalise(&parts, server)?;
        if self.logging || self.spans.is_some() {
            self.access.path = Some(path.clone());
        }
        let (route, authority) = self.route(&parts, &path)?;
        let upgrade = edge::websocket_upgrade(&parts)
            .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
        let mut state = self.edge_headers(&mut parts, path, authority, &route);
        if let Some(spans) = &mut self.spans {
            spans.client = Some(state.client);
        }
        // A filter asked for the request body: read it now (decoded), before any hook.
        let body = match bodies::request_cap(&route).filter(|_| upgrade.is_none()) {
            Some(cap) => {
                state.body = self.buffer_request(&mut state.headers, body, cap).await?;
                None
            }
            None => Some(body),
        };

        let mut chain = route.start_chain(&state);
        if self.spans.is_some() {
            chain.spans = Some(Vec::new());
        }
        let (mut state, early) = self.request_chain(&mut chain, state).await?;
        if let Some(o) = &mut self.observed {
            o.vars.clone_from(&state.vars);
        }
        let (answer, tunnel) = match early {
            Some(early) => (Answer::early(early), None),
            None => self.upstream(&route, &mut state, body, upgrade).await?,
        };
        let answer = match bodies::response_cap(&route) {
            Some(cap) if tunnel.is_none() => self.buffer_response(&route, answer, cap).await?,
            _ => answer,
        };
        let resp = self.response_chain(&mut chain, state, answer).await?;
        Ok(finish_response(resp, tunnel, &route.id))
    }

    /// Phase 3, **route**: by host, path and method. Leaves the route in the context.
    fn route(
        &mut self,
        parts: &http::request::Parts,
        path: &str,
    ) -> Result<(Arc<Route>, Option<String>), GatewayError> {
        let authority = routed_authority(parts)?;
        let host = authority.as_deref().map(host_of);
        let route = self
            .snap
            .router
            .find(host.as_deref(), path, &parts.method)
            .map_err(|method_mismatch| {
                if method_mismatch {
                    GatewayError::MethodNotAllowed
                } else {
                    GatewayError::NoRoute
                }
            })?
            .clone();
        self.access.route = Some(route.id.clone());
        self.route = Some(route.clone());
        Ok((route, authority))
    }

    /// Phase 4a, **edge headers**: hop-by-hop and underscore headers go,
    /// forwarding headers, the request id and this hop's `traceparent` are
    /// set; what is left becomes the request plugins see (and may change).
    fn edge_headers(
        &self,
        parts: &mut http::request::Parts,
        path: String,
        authority: Option<String>,
        route: &Route,
    ) -> RequestState {
        let server = &self.snap.server;
        let client = edge_rules(parts, self.conn, authority.as_deref(), server);
        parts
            .headers
            .insert(trace::REQUEST_ID, self.request_id.clone());
        self.trace.inject(&mut parts.headers);
        // Only plugins read the variables: a route without any skips making them.
        let vars = if route.chain.is_empty() {
            Vec::new()
        } else {
            vec![
                ("request_id".into(), self.request_id().to_string()),
                ("trace_id".into(), self.trace.trace_id.clone()),
            ]
        };
        RequestState {
            method: parts.method.clone(),
            path,
            // Only plugins read it.
            raw_path: if route.chain.is_empty() {
                String::new()
            } else {
                self.raw_uri.path().to_string()
            },
            query: parts.uri.query().map(str::to_string),
            authority,
            headers: std::mem::take(&mut parts.headers),
            client,
            route_id: route.id.clone(),
            vars,
            read_only: false,
            body: Buffered::Streamed,
        }
    }

    /// Phase 4b, **request chain**: each plugin's `on-request` in order; a
    /// `respond` skips the rest and the upstream.
    async fn request_chain(
        &mut self,
        chain: &mut Chain<'_>,
        state: RequestState,
    ) -> Result<(RequestState, Option<Early>), GatewayError> {
        if chain.is_empty() {
            return Ok((state, None));
        }
        // Boxed: the hook futures are kilobytes, and routes without plugins
        // should not carry (and move) them in every request's future.
        let result = Box::pin(chain.request(state)).await;
        self.access.plugin_time = chain.plugin_time;
        self.take_hooks(chain);
        if let Some(name) = &chain.answered_by {
            self.access.answered_by = Some(name.clone());
            self.access.short_circuit = Some(name.clone());
        }
        result.map_err(plugin_failed)
    }

    /// Phase 5, **upstream**: the body read (small ones whole first),
    /// admission under `max_requests`, then attempts on targets picked by the
    /// upstream's balancing until one answers or the retry policy says stop.
    async fn upstream<B: RequestBody>(
        &mut self,
        route: &Route,
        state: &mut RequestState,
        body: Option<B>,
        upgrade: Option<Option<hyper::upgrade::OnUpgrade>>,
    ) -> Result<(Answer, Option<Tunnel>), GatewayError> {
        let upgrading = upgrade.is_some();
        let (resp, upstream_upgrade) = self.forward(route, state, body, upgrading).await?;
        let (p, b) = resp.into_parts();
        let mut tunnel = None;
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
        let framing = p.headers.get(header::CONTENT_LENGTH).cloned();
        let mut headers = p.headers;
        strip_hop_by_hop(&mut headers);
        Ok((
            Answer {
                status: p.status,
                headers,
                body: b,
                framing,
                buffered: Buffered::Streamed,
            },
            tunnel,
        ))
    }

    /// Phase 6, **response chain**: `on-response` of every plugin that ran,
    /// in reverse, also for early answers.
    async fn response_chain(
        &mut self,
        chain: &mut Chain<'_>,
        state: RequestState,
        answer: Answer,
    ) -> Result<Answer, GatewayError> {
        if chain.is_empty() {
            return Ok(answer);
        }
        let Answer {
            status,
            headers,
            body,
            framing,
            buffered,
        } = answer;
        let resp = ResponseState {
            status,
            headers,
            body: buffered,
        };
        let result = Box::pin(chain.response(state, resp)).await;
        self.access.plugin_time = chain.plugin_time;
        self.take_hooks(chain);
        let (_, resp) = result.map_err(plugin_failed)?;
        // A buffered body goes out as the plugins left it, framed by its length.
        let (body, framing) = match resp.body.bytes() {
            Some(b) => (body::full(b.clone()), Some(HeaderValue::from(b.len()))),
            None => (body, framing),
        };
        Ok(Answer {
            status: resp.status,
            headers: resp.headers,
            body,
            framing,
            buffered: Buffered::Streamed,
        })
    }

    /// Reads the request body whole for the filters that asked for it (phase 4).
    async fn buffer_request<B: RequestBody>(
        &mut self,
        headers: &mut HeaderMap,
        body: B,
        cap: bodies::Cap,
    ) -> Result<Buffered, GatewayError> {
        let server = &self.snap.server;
        let limit = cap
            .bytes
            .min(usize::try_from(server.max_body_bytes).unwrap_or(usize::MAX));
        let timed = body::Timed::new(body, server.body_read_timeout).boxed();
        let buffered = match bodies::read(timed, headers, limit).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                if limit == cap.bytes
                    && let Some(p) = self.route.as_ref().and_then(|r| r.chain.get(cap.plugin))
                {
                    p.body_too_large("on-request");
                }
                return Err(GatewayError::BodyTooLarge(limit as u64));
            }
            Err(BodyError::Corrupt(_)) => {
                return Err(GatewayError::BadFraming(
                    "the request body does not decode as its content-encoding says",
                ));
            }
            Err(BodyError::Read(e)) => return Err(classify(e, server, "the client")),
        };
        self.body_unread = false;
        Ok(buffered)
    }

    /// Reads the response body whole for the filters that asked for it
    /// (phase 6); not for `HEAD` or bodiless statuses.
    async fn buffer_response(
        &mut self,
        route: &Route,
        answer: Answer,
        cap: bodies::Cap,
    ) -> Result<Answer, GatewayError> {
        if self.method == Method::HEAD || matches!(answer.status.as_u16(), 100..=199 | 204 | 304) {
            return Ok(answer);
        }
        let Answer {
            status,
            mut headers,
            body,
            ..
        } = answer;
        let timeout = route.upstream.settings.request_timeout;
        let read = tokio::time::timeout(timeout, bodies::read(body, &mut headers, cap.bytes)).await;
        let buffered = match read {
            Err(_) => return Err(GatewayError::UpstreamTimeout(timeout)),
            Ok(Ok(b)) => b,
            Ok(Err(BodyError::TooLarge)) => {
                let plugin = &route.chain[cap.plugin];
                plugin.body_too_large("on-response");
                return Err(GatewayError::UpstreamUnavailable(format!(
                    "the response body is larger than the {} bytes plugin `{}` may be handed (`max_body_bytes`)",
                    cap.bytes,
                    plugin.name()
                )));
            }
            Ok(Err(BodyError::Corrupt(why))) => {
                return Err(GatewayError::UpstreamUnavailable(format!(
                    "the upstream sent a {why}"
                )));
            }
            Ok(Err(BodyError::Read(e))) => {
                return Err(GatewayError::UpstreamUnavailable(format!(
                    "reading the response body: {}",
                    crate::error::chain(&*e)
                )));
            }
        };
        let bytes = buffered.bytes().cloned().unwrap_or_default();
        Ok(Answer {
            status,
            headers,
            framing: Some(HeaderValue::from(bytes.len())),
            body: body::full(bytes),
            buffered,
        })
    }

    /// Moves the chain's hook records into the request's spans.
    fn take_hooks(&mut self, chain: &mut Chain<'_>) {
        if let (Some(spans), Some(hooks)) = (&mut self.spans, &mut chain.spans) {
            spans.hooks.append(hooks);
        }
    }

    /// Sends the request upstream: the body (a small one read whole first),
    /// admission under `max_requests`, then [`attempt`]s on targets picked by
    /// the upstream's balancing, retried on another target while the error is
    /// retryable, the request can be sent again and the budget allows.
    /// Passive health is reported per attempt.
    async fn forward<B: RequestBody>(
        &mut self,
        route: &Route,
        state: &mut RequestState,
        body: Option<B>,
        upgrading: bool,
    ) -> Result<(Response<Body>, Option<hyper::upgrade::OnUpgrade>), GatewayError> {
        let server = &self.snap.server;
        let upstream = &route.upstream;
        // A body read whole for plugins (`None` here) goes as they left it.
        let buffered = state.body.bytes().cloned();
        // A request without a body can be sent again; one with a body streams once.
        let replayable = body.as_ref().is_none_or(http_body::Body::is_end_stream);
        let mut upload = None;
        if let Some(body) = body.filter(|b| !b.is_end_stream()) {
            self.body_unread = false;
            let limit = usize::try_from(server.max_body_bytes).unwrap_or(usize::MAX);
            let timed = body::Timed::new(Limited::new(body, limit), server.body_read_timeout);
            // Read before a place under `max_requests` is taken: a client
            // trickling a small body must not hold one.
            let up = body::Upload::begin(timed.boxed(), UPLOAD_BUFFER)
                .await
                .map_err(|e| classify(e, server, "the client"))?;
            upload = Some(up);
        }
        let client_done = upload.as_ref().map(body::Upload::client_done);
        let mut admitted = upstream.admit()?;
        let pq = self.upstream_target(state)?;
        let key = upstream.hash_key(state.client.ip(), &state.headers);
        let mut headers = upstream_headers(route, state, buffered.as_ref());
        if upgrading {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        let retry = replayable && state.method.is_idempotent();
        let mut tried = Vec::new();
        loop {
            let index = upstream.pick(key, &tried);
            let endpoint = &upstream.endpoints()[index];
            upstream.begin(&mut admitted, index);
            let metrics = route.metrics.target(index);
            if let Some(m) = metrics {
                self.access.upstream = Some(m.label.clone());
            }
            let may_retry = retry
                && tried.len() < upstream.settings.retries as usize
                && tried.len() + 1 < upstream.endpoints().len();
            let mut req = Request::new(upload.take().map_or_else(
                || buffered.clone().map_or_else(body::empty, body::full),
                BodyExt::boxed,
            ));
            *req.method_mut() = state.method.clone();
            *req.uri_mut() = upstream_uri(endpoint.uri_base(), &pq)?;
            *req.headers_mut() = if may_retry {
                headers.clone()
            } else {
                std::mem::take(&mut headers)
            };
            if let Some(spans) = &mut self.spans {
                attempt_span(spans, &self.trace, &mut req, endpoint, metrics);
            }

            let sent = Instant::now();
            let result = attempt(upstream, endpoint, req, server, client_done.as_deref()).await;
            let took = sent.elapsed();
            if let Some(spans) = &mut self.spans {
                spans.attempt_done(result.as_ref().map(|(r, _)| r.status().as_u16()));
            }
            self.access.upstream_time = Some(self.access.upstream_time.unwrap_or_default() + took);
            if let Some(m) = metrics {
                m.exchanged(exchange(result.as_ref().map(|_| ())), took);
            }
            let failed = match &result {
                Ok((r, _)) => matches!(r.status().as_u16(), 502..=504),
                Err(e) => e.blame() == crate::error::Blame::Upstream,
            };
            upstream.report(index, !failed);
            // Retries go to another target: one that refused a connection just now would again.
            if let Err(e) = &result
                && e.retryable()
                && may_retry
                && upstream.take_retry()
            {
                tracing::debug!(upstream = %upstream.name, target = %endpoint.target, "connect failed; retrying on another target");
                tried.push(index);
                continue;
            }
            // The place under `max_requests` is held until the response body ends.
            return result
                .map(|(resp, up)| (resp.map(|b| body::Hold::new(b, admitted).boxed()), up));
        }
    }

    /// The path and query sent upstream: the client's own, shared rather
    /// than copied and parsed again, unless normalising or a plugin changed them.
    fn upstream_target(
        &self,
        state: &RequestState,
    ) -> Result<http::uri::PathAndQuery, GatewayError> {
        if let Some(pq) = self.raw_uri.path_and_query()
            && pq.path() == state.path
            && pq.query() == state.query.as_deref()
        {
            return Ok(pq.clone());
        }
        let mut text = state.path.clone();
        if let Some(q) = &state.query {
            text.push('?');
            text.push_str(q);
        }
        http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::from(text))
            .map_err(|e| GatewayError::Internal(format!("cannot build the upstream request: {e}")))
    }

    /// Answers an error of any phase; the log line's level follows whose fault it was.
    fn refuse(&mut self, e: GatewayError) -> Response<Body> {
        self.access.answered_by = Some("gateway".into());
        let (peer, path, route) = (
            self.conn.peer,
            self.raw_uri.path(),
            self.access.route.as_deref(),
        );
        match e.blame() {
            crate::error::Blame::Downstream => {
                tracing::debug!(%peer, path, error = %e, "request refused")
            }
            // Already logged by the plugin layer, with hook and reason.
            crate::error::Blame::Plugin => {
                tracing::debug!(%peer, path, route, error = %e, "request failed")
            }
            _ => {
                tracing::warn!(%peer, path, route, request_id = self.request_id(), error = %e, "request failed")
            }
        }
        let mut resp = e.to_response().map(body::full);
        if self.http1 && e.closes_connection() {
            // The rest of what the client sent cannot be trusted as a next request.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// The request id as text (it is visible ASCII by construction).
    fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or_default()
    }

    /// Phase 7, **finish**: connection handling after an unread body, the
    /// request id on the answer, route metrics and the access record.
    fn finish(&mut self, mut resp: Response<Body>) -> Response<Body> {
        if self.http1 && self.body_unread {
            // Answered without reading the body (a plugin's 401, an error): close
            // rather than let its bytes be read as the next request.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp.headers_mut()
            .insert(trace::REQUEST_ID, self.request_id.clone());
        let elapsed = self.started.elapsed();
        self.route
            .as_ref()
            .map_or_else(|| self.snap.metrics.unrouted(), |r| &r.metrics)
            .answered(resp.status(), elapsed);
        // Exact for replies, errors and upstream bodies with a Content-Length; never buffered to count.
        let bytes = resp.body().size_hint().exact();
        let info = RequestInfo {
            method: &self.method,
            raw_path: self.raw_uri.path(),
            peer: self.conn.peer,
            request_id: self.request_id(),
            trace_id: &self.trace.trace_id,
        };
        log_access(&info, &self.access, resp.status(), bytes, elapsed);
        if let Some(spans) = self.spans.take() {
            self.export_spans(*spans, resp.status());
        }
        resp
    }

    /// Queues a sampled request's spans for export.
    fn export_spans(&self, spans: RequestSpans, status: http::StatusCode) {
        let Some(tracer) = &self.snap.tracer else {
            return;
        };
        let server = ServerSpan {
            method: self.method.as_str(),
            route: self.access.route.as_deref(),
            path: self.access.path.as_deref().unwrap_or(self.raw_uri.path()),
            status: status.as_u16(),
            peer: self.conn.peer,
            request_id: self.request_id(),
            answered_by: self.access.answered_by.as_deref(),
        };
        let chain = self.route.as_ref().map_or(&[][..], |r| &r.chain[..]);
        spans.finish(tracer, &server, |i| {
            chain
                .get(i)
                .map_or(("?", ""), |p| (&*p.plugin.name, p.plugin.sha256.as_str()))
        });
    }
}

/// A response on its way back: from the upstream or a plugin's early answer.
struct Answer {
    status: http::StatusCode,
    headers: HeaderMap,
    body: Body,
    /// The upstream's `Content-Length`: framing stays the gateway's, whatever plugins do.
    framing: Option<HeaderValue>,
    /// The body read whole for plugins that asked for it.
    buffered: Buffered,
}

impl Answer {
    fn early(e: Early) -> Answer {
        Answer {
            status: e.status,
            headers: e.headers,
            body: body::full(e.body),
            // The reply's length is its body's: hyper frames it.
            framing: None,
            buffered: Buffered::Streamed,
        }
    }
}

/// The headers sent upstream. Response hooks see the request's headers;
/// without a chain they can move.
fn upstream_headers(
    route: &Route,
    state: &mut RequestState,
    buffered: Option<&Bytes>,
) -> HeaderMap {
    let mut headers = if route.chain.is_empty() {
        std::mem::take(&mut state.headers)
    } else {
        state.headers.clone()
    };
    if let Some(b) = buffered {
        bodies::set_length(&mut headers, b.len());
    }
    // Plugins are handed plain bodies: ask the upstream for one.
    if bodies::response_cap(route).is_some() {
        headers.remove(header::ACCEPT_ENCODING);
    }
    headers
}

/// The upstream request's URI: origin form for pooled targets (empty
/// `base`), else `base` (`http[s]://host:port`) and the path.
fn upstream_uri(base: &str, pq: &http::uri::PathAndQuery) -> Result<http::Uri, GatewayError> {
    let uri = if base.is_empty() {
        Ok(http::Uri::from(pq.clone()))
    } else {
        http::Uri::try_from(format!("{base}{pq}"))
    };
    uri.map_err(|e| GatewayError::Internal(format!("cannot build the upstream request: {e}")))
}

/// Both sides of a WebSocket upgrade the upstream accepted.
type Tunnel = (hyper::upgrade::OnUpgrade, hyper::upgrade::OnUpgrade);

/// The response the client gets: plugin-proof framing, and the tunnel started.
fn finish_response(answer: Answer, tunnel: Option<Tunnel>, route: &Arc<str>) -> Response<Body> {
    let mut resp = Response::new(answer.body);
    *resp.status_mut() = answer.status;
    *resp.headers_mut() = answer.headers;
    // Plugins cannot set hop-by-hop or framing headers; strip again all the same.
    strip_hop_by_hop(resp.headers_mut());
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    if let Some(cl) = answer.framing {
        resp.headers_mut().insert(header::CONTENT_LENGTH, cl);
    }
    if let Some((client, upstream)) = tunnel {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        resp.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        tokio::spawn(splice(client, upstream, route.clone()));
    }
    resp
}

/// Phase 1, **limits**: URI length (414), ambiguous framing (400), a
/// declared body over `max_body_bytes` (413).
fn check_limits(parts: &http::request::Parts, server: &ServerSettings) -> Result<(), GatewayError> {
    if parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len()) > server.max_uri_bytes {
        return Err(GatewayError::UriTooLong(server.max_uri_bytes));
    }
    edge::check_framing(&parts.headers)?;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > server.max_body_bytes) {
        return Err(GatewayError::BodyTooLarge(server.max_body_bytes));
    }
    Ok(())
}

/// Phase 2, **normalise** the path once; every later phase sees that path.
fn normalise(
    parts: &http::request::Parts,
    server: &ServerSettings,
) -> Result<String, GatewayError> {
    let path = crate::path::normalise(parts.uri.path()).map_err(bad_path)?;
    if !server.allow_encoded_slashes && crate::path::has_encoded_slash(&path) {
        return Err(bad_path(crate::path::PathError::EncodedSlash));
    }
    Ok(path)
}

fn bad_path(e: crate::path::PathError) -> GatewayError {
    GatewayError::BadPath(e.reason())
}

/// The header rules of phase 4a: hop-by-hop headers go (but `TE: trailers`,
/// which gRPC needs end to end), underscore names go unless allowed,
/// `X-Forwarded-*` are set. Returns the client plugins see: the peer, or
/// behind trusted proxies the forwarded client.
fn edge_rules(
    parts: &mut http::request::Parts,
    conn: ConnInfo,
    authority: Option<&str>,
    server: &ServerSettings,
) -> std::net::SocketAddr {
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
    set_forwarded(&mut parts.headers, conn.peer, authority, conn.tls, trusted);
    client
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

/// One exchange with one target, under the upstream's `request_timeout`.
/// A timeout while the client is still sending its body is the client's
/// fault (408), not the target's.
async fn attempt(
    upstream: &crate::upstream::Upstream,
    endpoint: &Endpoint,
    req: Request<Body>,
    server: &ServerSettings,
    client_done: Option<&AtomicBool>,
) -> Result<(Response<Body>, Option<hyper::upgrade::OnUpgrade>), GatewayError> {
    let target = &endpoint.target;
    let timeout = upstream.settings.request_timeout;
    let timed_out = || {
        if client_done.is_some_and(|d| !d.load(Ordering::Relaxed)) {
            GatewayError::BodyTimeout(timeout)
        } else {
            GatewayError::UpstreamTimeout(timeout)
        }
    };
    let resp = match endpoint.target {
        // The demo upstream answers at once: no timeout to race.
        Target::Echo => upstream.exchange(endpoint, req).await,
        _ => match tokio::time::timeout(timeout, upstream.exchange(endpoint, req)).await {
            Err(_) => return Err(timed_out()),
            Ok(r) => r,
        },
    };
    let resp = match resp {
        Ok(resp) => resp,
        Err(ExchangeError::Connect(e)) => return Err(GatewayError::UpstreamConnect(e)),
        Err(ExchangeError::Failed(e)) => return Err(classify(e, server, &target.to_string())),
    };
    let mut resp = resp;
    let up = (resp.status() == http::StatusCode::SWITCHING_PROTOCOLS)
        .then(|| hyper::upgrade::on(&mut resp));
    Ok((resp, up))
}

/// Starts a sampled request's span for one upstream attempt; the
/// upstream's parent is that span.
fn attempt_span(
    spans: &mut RequestSpans,
    tc: &TraceContext,
    req: &mut Request<Body>,
    endpoint: &Endpoint,
    metrics: Option<&crate::telemetry::metrics::TargetMetrics>,
) {
    let target = metrics.map_or_else(
        || Arc::from(endpoint.target.to_string()),
        |m| m.label.clone(),
    );
    let id = spans.attempt(target);
    if let Ok(v) = HeaderValue::from_str(&tc.traceparent_with(&id)) {
        req.headers_mut().insert(trace::TRACEPARENT, v);
    }
}

/// A fail-closed plugin's failure, as the request's error.
fn plugin_failed(f: Failed) -> GatewayError {
    GatewayError::Plugin {
        error: Box::new(f.error),
        status: f.status,
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

/// How an exchange ended, for the target's metrics.
fn exchange(result: Result<(), &GatewayError>) -> Exchange {
    match result {
        Ok(()) => Exchange::Answered,
        Err(GatewayError::UpstreamTimeout(_)) => Exchange::TimedOut,
        Err(GatewayError::UpstreamConnect(_) | GatewayError::UpstreamUnavailable(_)) => {
            Exchange::Unavailable
        }
        // The client's fault (e.g. body too large): says nothing about the target.
        Err(_) => Exchange::NotTheTarget,
    }
}

/// Sorts a failed exchange into client-body-too-large or upstream failure.
fn classify(e: BoxError, server: &ServerSettings, target: &str) -> GatewayError {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::request::Builder) -> http::request::Parts {
        req.body(()).unwrap().into_parts().0
    }

    fn server() -> ServerSettings {
        ServerSettings::from_raw(&crate::config::Server::default())
    }

    fn conn(peer: &str) -> ConnInfo {
        ConnInfo {
            peer: peer.parse().unwrap(),
            tls: false,
        }
    }

    #[test]
    fn limits_refuse_long_targets_ambiguous_framing_and_big_declared_bodies() {
        let s = server();
        let long = format!("/{}", "a".repeat(s.max_uri_bytes));
        assert!(matches!(
            check_limits(&parts(Request::get(long)), &s),
            Err(GatewayError::UriTooLong(_))
        ));
        let both = Request::post("/")
            .header("content-length", "3")
            .header("content-length", "4");
        assert!(matches!(
            check_limits(&parts(both), &s),
            Err(GatewayError::BadFraming(_))
        ));
        let big = Request::post("/").header("content-length", (s.max_body_bytes + 1).to_string());
        assert!(matches!(
            check_limits(&parts(big), &s),
            Err(GatewayError::BodyTooLarge(_))
        ));
        assert!(check_limits(&parts(Request::get("/ok")), &s).is_ok());
    }

    #[test]
    fn normalise_resolves_dots_and_refuses_encoded_slashes_and_backslashes() {
        let s = server();
        assert_eq!(
            normalise(&parts(Request::get("/a/./b/../c//d")), &s).unwrap(),
            "/a/c/d"
        );
        for bad in ["/a%2Fb", "/a%5cb", "/x\\..\\admin"] {
            assert!(normalise(&parts(Request::get(bad)), &s).is_err(), "{bad}");
        }
        let mut open = server();
        open.allow_encoded_slashes = true;
        assert_eq!(
            normalise(&parts(Request::get("/a%2Fb")), &open).unwrap(),
            "/a%2Fb"
        );
    }

    #[test]
    fn the_routed_authority_is_the_one_host_there_is() {
        let host = |h: &str| Request::get("/").header("host", h);
        assert_eq!(
            routed_authority(&parts(host("a.example")))
                .unwrap()
                .as_deref(),
            Some("a.example")
        );
        let absolute = Request::get("http://a.example/x").header("host", "A.example");
        assert_eq!(
            routed_authority(&parts(absolute)).unwrap().as_deref(),
            Some("a.example")
        );
        let disagree = Request::get("http://a.example/x").header("host", "b.example");
        assert!(routed_authority(&parts(disagree)).is_err());
        let two = host("a.example").header("host", "b.example");
        assert!(routed_authority(&parts(two)).is_err());
        assert_eq!(routed_authority(&parts(Request::get("/"))).unwrap(), None);
    }

    #[test]
    fn edge_rules_strip_hop_by_hop_keep_te_trailers_and_replace_forwarding() {
        let mut p = parts(
            Request::get("/")
                .header("connection", "x-secret")
                .header("x-secret", "1")
                .header("te", "trailers")
                .header("x_user", "admin")
                .header("x-forwarded-for", "6.6.6.6"),
        );
        let client = edge_rules(&mut p, conn("10.1.2.3:5000"), Some("gw.example"), &server());
        assert_eq!(client, "10.1.2.3:5000".parse().unwrap());
        let h = &p.headers;
        assert!(h.get("connection").is_none() && h.get("x-secret").is_none());
        assert_eq!(h["te"], "trailers");
        assert!(h.get("x_user").is_none());
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["host"], "gw.example");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}
