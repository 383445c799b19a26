//! `weir:plugin/outbound`: HTTP calls from a plugin to the upstreams the
//! manifest grants it (`grants.http`).
//!
//! The plugin runtime knows nothing of the upstream client: the proxy hands
//! it an [`OutboundClient`] for the granted upstreams. Calls wait without
//! holding a worker (the imports are async) and lend the plugin's place
//! under `max_concurrency` while they wait, like a Redis round trip. Each
//! hook call may make `max_outbound_calls`; each is cut by what is left of
//! the hook's `call_timeout`, so the plugin gets `timeout` and can still
//! answer rather than be cut off itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};

use super::HostState;
use super::http::gateway_owned;
use crate::plugin::bindings::weir::plugin::http::Header;
use crate::plugin::bindings::weir::plugin::outbound::{
    CallError, Host, IncomingResponse, OutgoingRequest,
};
use crate::plugin::guard::Guard;

/// Time kept back from a call so the hook can still act on a `timeout`: a
/// tenth of what is left, at least [`MIN_MARGIN`] and at most [`MAX_MARGIN`].
/// A fixed 5 ms was too little on a loaded machine: the plugin could not
/// resume and answer in time, and its own 503 became a failure-policy one.
fn margin(left: Duration) -> Duration {
    (left / 10).clamp(MIN_MARGIN, MAX_MARGIN)
}
const MIN_MARGIN: Duration = Duration::from_millis(5);
const MAX_MARGIN: Duration = Duration::from_millis(50);

/// Why an exchange gave no response (the client's side of [`CallError`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundError {
    /// No answer within the time given.
    Timeout,
    /// No connection, a reset, or a malformed answer.
    Unavailable(String),
    /// The response body is larger than the limit.
    TooLarge(u64),
}

/// A boxed future of one exchange.
pub type Exchange<'a> =
    Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, OutboundError>> + Send + 'a>>;

/// Sends requests to upstreams by name; provided by the proxy.
pub trait OutboundClient: Send + Sync {
    /// Whether `upstream` exists.
    fn has(&self, upstream: &str) -> bool;
    /// Sends `req` (path and query in its URI) to `upstream`, reading at most
    /// `max_body` bytes of the response body, within `timeout`.
    fn send<'a>(
        &'a self,
        upstream: &'a str,
        req: http::Request<Bytes>,
        max_body: usize,
        timeout: Duration,
    ) -> Exchange<'a>;
}

impl std::fmt::Debug for dyn OutboundClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutboundClient")
    }
}

/// What one plugin on one route may call, and how.
pub(crate) struct Outbound {
    /// The client for the manifest's upstreams.
    pub client: Arc<dyn OutboundClient>,
    /// `grants.http`: upstream names this plugin may call.
    pub granted: Arc<[String]>,
    /// `max_outbound_calls` per hook call.
    pub max_calls: u32,
    /// `max_outbound_body`: largest response body handed back.
    pub max_body: usize,
    /// The route's concurrency guard: a waiting call lends its place.
    pub guard: Arc<Guard>,
}

impl Outbound {
    fn check(
        &self,
        req: OutgoingRequest,
    ) -> Result<(String, http::Request<Bytes>, Option<Duration>), CallError> {
        if !self.granted.contains(&req.upstream) || !self.client.has(&req.upstream) {
            return Err(CallError::NotGranted(req.upstream));
        }
        let invalid = |what: String| CallError::InvalidRequest(what);
        let method = Method::from_bytes(req.method.as_bytes())
            .map_err(|_| invalid(format!("bad method {:?}", req.method)))?;
        if !req.path.starts_with('/') {
            return Err(invalid(format!(
                "the path {:?} does not start with `/`",
                req.path
            )));
        }
        let uri: http::Uri = req
            .path
            .parse()
            .map_err(|_| invalid(format!("bad path {:?}", req.path)))?;
        let mut out = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Bytes::from(req.body))
            .map_err(|e| invalid(e.to_string()))?;
        for Header { name, value } in req.headers {
            if gateway_owned(&name) || name.eq_ignore_ascii_case("host") {
                continue;
            }
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("bad header name {name:?}")))?;
            let v = HeaderValue::from_str(&value)
                .map_err(|_| invalid(format!("bad value for header {name}")))?;
            out.headers_mut().append(n, v);
        }
        let timeout = req.timeout_ms.map(|ms| Duration::from_millis(ms.into()));
        Ok((req.upstream, out, timeout))
    }

    /// Sends one checked request within `left`.
    async fn exchange(
        &self,
        upstream: &str,
        req: http::Request<Bytes>,
        timeout: Option<Duration>,
        left: Duration,
    ) -> Result<IncomingResponse, CallError> {
        let limit = timeout.map_or(left, |t| t.min(left));
        if limit.is_zero() {
            return Err(CallError::Timeout);
        }
        let resp = self
            .client
            .send(upstream, req, self.max_body, limit)
            .await
            .map_err(|e| match e {
                OutboundError::Timeout => CallError::Timeout,
                OutboundError::Unavailable(why) => CallError::Unavailable(why),
                OutboundError::TooLarge(n) => CallError::TooLarge(n),
            })?;
        let (parts, body) = resp.into_parts();
        Ok(IncomingResponse {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| Header {
                    name: n.as_str().to_string(),
                    value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
                })
                .collect(),
            body: body.to_vec(),
        })
    }
}

impl HostState {
    /// Counts `n` calls against `max_outbound_calls`; the time left for
    /// them. `None` with `grants = { http = [] }`: it loads, and may call nothing.
    fn outbound_calls(&mut self, n: usize) -> Option<Result<(Arc<Outbound>, Duration), CallError>> {
        let out = self.outbound.clone()?;
        Some(self.count_calls(out, n))
    }

    fn count_calls(
        &mut self,
        out: Arc<Outbound>,
        n: usize,
    ) -> Result<(Arc<Outbound>, Duration), CallError> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let used = self.budget.outbound_calls.saturating_add(n);
        if used > out.max_calls {
            return Err(CallError::TooManyCalls(out.max_calls));
        }
        self.budget.outbound_calls = used;
        let left = self.budget.deadline.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        });
        let left = left.saturating_sub(margin(left));
        Ok((out, left))
    }
}

impl Host for HostState {
    async fn send(
        &mut self,
        req: OutgoingRequest,
    ) -> wasmtime::Result<Result<IncomingResponse, CallError>> {
        self.charge()?;
        let (out, left) = match self.outbound_calls(1) {
            None => return Ok(Err(CallError::NotGranted(req.upstream))),
            Some(Ok(v)) => v,
            Some(Err(e)) => return Ok(Err(e)),
        };
        let (upstream, req, timeout) = match out.check(req) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        let lent = out.guard.lend();
        let result = out.exchange(&upstream, req, timeout, left).await;
        lent.resume().await;
        Ok(result)
    }

    async fn send_all(
        &mut self,
        reqs: Vec<OutgoingRequest>,
    ) -> wasmtime::Result<Vec<Result<IncomingResponse, CallError>>> {
        self.charge()?;
        let n = reqs.len();
        let (out, left) = match self.outbound_calls(n) {
            None => {
                return Ok(reqs
                    .into_iter()
                    .map(|r| Err(CallError::NotGranted(r.upstream)))
                    .collect());
            }
            Some(Ok(v)) => v,
            Some(Err(e)) => return Ok(vec![Err(e); n]),
        };
        let checked: Vec<_> = reqs.into_iter().map(|r| out.check(r)).collect();
        let lent = out.guard.lend();
        let results = futures_util::future::join_all(checked.into_iter().map(|c| {
            let out = &out;
            async move {
                let (upstream, req, timeout) = c?;
                out.exchange(&upstream, req, timeout, left).await
            }
        }))
        .await;
        lent.resume().await;
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_leaves_the_hook_a_tenth_of_its_time_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(margin(ms(1000)), ms(50));
        assert_eq!(margin(ms(300)), ms(30));
        assert_eq!(margin(ms(20)), ms(5));
        assert_eq!(margin(Duration::ZERO), ms(5));
    }
}
