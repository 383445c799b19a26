//! `weir:plugin/http`: the request and response resources.
//!
//! The proxy moves its request (or response) state into the instance's
//! resource table for the length of one hook call and takes it back after,
//! so nothing is copied that a plugin does not ask for. Every edit goes
//! through the checked `http` constructors: a plugin can never put CR/LF or
//! an invalid name on the wire.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use wasmtime::component::Resource;

use super::HostState;
use super::body::Buffered;
use crate::plugin::bindings::weir::plugin::http::{
    EditError, Header, Host, HostRequest, HostResponse,
};
use crate::plugin::bindings::weir::plugin::{edit_request, edit_response, rewrite, vars};

use crate::plugin::limits::MAX_HEADER_VALUE;

/// Caps on the headers a plugin leaves on a message or puts in a reply
/// (`max_headers`, `max_header_bytes`). An edit that would pass them is refused
/// with `too-large`; a reply that passes them fails the plugin.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeaderLimits {
    pub max_headers: usize,
    pub max_header_bytes: usize,
}

/// Most per-request variables, and the longest value of one.
const MAX_VARS: usize = 64;
const MAX_VAR_VALUE: usize = 4096;

/// The request as plugins see it; the proxy builds the upstream request from it.
#[derive(Debug, Clone)]
pub struct RequestState {
    /// The method.
    pub method: Method,
    /// The normalised path.
    pub path: String,
    /// The path as the client sent it (read-only for plugins).
    pub raw_path: String,
    /// The raw query, without `?`.
    pub query: Option<String>,
    /// `Host` or `:authority`.
    pub authority: Option<String>,
    /// End-to-end headers (hop-by-hop ones were removed on arrival).
    pub headers: HeaderMap,
    /// The downstream peer.
    pub client: SocketAddr,
    /// The matched route.
    pub route_id: Arc<str>,
    /// Per-request variables shared along the chain.
    pub vars: Vec<(String, String)>,
    /// True during response hooks.
    pub read_only: bool,
    /// The body, when a filter on the route asked for it.
    pub body: Buffered,
}

/// The response as plugins see it.
#[derive(Debug, Clone)]
pub struct ResponseState {
    /// Status code.
    pub status: StatusCode,
    /// Headers (hop-by-hop ones already removed).
    pub headers: HeaderMap,
    /// The body, when a filter on the route asked for it.
    pub body: Buffered,
}

/// Framing and hop-by-hop headers: the gateway owns them on both sides, so a
/// plugin can never desync a message's length or its connection (the list
/// wasmtime's wasi-http forbids, plus `content-length` and `expect`).
const GATEWAY_OWNED: [&str; 9] = [
    "connection",
    "content-length",
    "expect",
    "http2-settings",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether plugins may read but never set, add or remove header `n`
/// (any case); such headers in a reply are dropped.
pub fn gateway_owned(n: &str) -> bool {
    GATEWAY_OWNED.iter().any(|g| g.eq_ignore_ascii_case(n))
        || n.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
}

/// A header name a plugin may edit.
fn name(n: &str) -> Result<HeaderName, EditError> {
    let name =
        HeaderName::from_bytes(n.as_bytes()).map_err(|_| EditError::InvalidName(n.to_string()))?;
    if owned_name(&name) {
        return Err(EditError::ReadOnly);
    }
    Ok(name)
}

/// [`gateway_owned`] for a parsed (lower-case) name: the standard ones
/// compare as constants, without a string comparison each.
fn owned_name(name: &HeaderName) -> bool {
    use http::header;
    [
        header::CONNECTION,
        header::CONTENT_LENGTH,
        header::EXPECT,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ]
    .contains(name)
        || matches!(name.as_str(), "http2-settings" | "keep-alive")
        || name.as_str().starts_with("proxy-")
}

/// Statuses a plugin may set: interim (1xx) answers belong to the protocol.
fn final_status(status: u16) -> Option<StatusCode> {
    StatusCode::from_u16(status)
        .ok()
        .filter(|_| (200..=599).contains(&status))
}

fn value(v: &str) -> Result<HeaderValue, EditError> {
    if v.len() > MAX_HEADER_VALUE {
        return Err(EditError::TooLarge);
    }
    HeaderValue::from_str(v).map_err(|_| EditError::InvalidValue(v.escape_debug().to_string()))
}

fn lossy(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

fn get(h: &HeaderMap, n: &str) -> Option<String> {
    h.get(n).map(lossy)
}

fn get_all(h: &HeaderMap, n: &str) -> Vec<String> {
    h.get_all(n).iter().map(lossy).collect()
}

fn all(h: &HeaderMap) -> Vec<Header> {
    h.iter()
        .map(|(n, v)| Header {
            name: n.as_str().to_string(),
            value: lossy(v),
        })
        .collect()
}

fn header_bytes(h: &HeaderMap) -> usize {
    h.iter().map(|(n, v)| n.as_str().len() + v.len()).sum()
}

fn set(h: &mut HeaderMap, n: &str, v: &str, lim: HeaderLimits) -> Result<(), EditError> {
    let (n, v) = (name(n)?, value(v)?);
    let (count, bytes) = (h.len(), header_bytes(h));
    let (replaced, replaced_bytes) = h
        .get_all(&n)
        .iter()
        .fold((0, 0), |(c, b), o| (c + 1, b + n.as_str().len() + o.len()));
    let new_count = count - replaced + 1;
    let new_bytes = bytes - replaced_bytes + n.as_str().len() + v.len();
    // A message already over a limit (as the client sent it) may still be edited, not grown.
    if (new_count > lim.max_headers && new_count > count)
        || (new_bytes > lim.max_header_bytes && new_bytes > bytes)
    {
        return Err(EditError::TooLarge);
    }
    h.insert(n, v);
    Ok(())
}

fn append(h: &mut HeaderMap, n: &str, v: &str, lim: HeaderLimits) -> Result<(), EditError> {
    let (n, v) = (name(n)?, value(v)?);
    if h.len() >= lim.max_headers
        || header_bytes(h) + n.as_str().len() + v.len() > lim.max_header_bytes
    {
        return Err(EditError::TooLarge);
    }
    h.append(n, v);
    Ok(())
}

fn remove(h: &mut HeaderMap, n: &str) -> Result<bool, EditError> {
    Ok(h.remove(name(n)?).is_some())
}

// A hook's request and response live in the store's data, not its resource
// table: each hook call has at most one of each, so handles are borrows the
// host hands out with rep 0 and never looks up. The component model type-checks
// them and ends them with the call.
impl HostState {
    pub(super) fn req(
        &mut self,
        r: &Resource<RequestState>,
    ) -> wasmtime::Result<&mut RequestState> {
        let _ = r;
        self.charge()?;
        self.request
            .as_deref_mut()
            .ok_or_else(|| wasmtime::format_err!("no request in this hook call"))
    }

    fn req_mut(
        &mut self,
        r: &Resource<RequestState>,
    ) -> wasmtime::Result<Result<&mut RequestState, EditError>> {
        let req = self.req(r)?;
        Ok(if req.read_only {
            Err(EditError::ReadOnly)
        } else {
            Ok(req)
        })
    }

    pub(super) fn resp(
        &mut self,
        r: &Resource<ResponseState>,
    ) -> wasmtime::Result<&mut ResponseState> {
        let _ = r;
        self.charge()?;
        self.response
            .as_deref_mut()
            .ok_or_else(|| wasmtime::format_err!("no response in this hook call"))
    }
}

impl Host for HostState {}

impl HostRequest for HostState {
    fn method(&mut self, r: Resource<RequestState>) -> wasmtime::Result<String> {
        Ok(self.req(&r)?.method.as_str().to_string())
    }
    fn path(&mut self, r: Resource<RequestState>) -> wasmtime::Result<String> {
        Ok(self.req(&r)?.path.clone())
    }
    fn raw_path(&mut self, r: Resource<RequestState>) -> wasmtime::Result<String> {
        Ok(self.req(&r)?.raw_path.clone())
    }
    fn query(&mut self, r: Resource<RequestState>) -> wasmtime::Result<Option<String>> {
        Ok(self.req(&r)?.query.clone())
    }
    fn authority(&mut self, r: Resource<RequestState>) -> wasmtime::Result<Option<String>> {
        Ok(self.req(&r)?.authority.clone())
    }
    fn client_addr(&mut self, r: Resource<RequestState>) -> wasmtime::Result<String> {
        Ok(crate::net::addr_text(self.req(&r)?.client))
    }
    fn route_id(&mut self, r: Resource<RequestState>) -> wasmtime::Result<String> {
        Ok(self.req(&r)?.route_id.to_string())
    }
    fn header(&mut self, r: Resource<RequestState>, n: String) -> wasmtime::Result<Option<String>> {
        Ok(get(&self.req(&r)?.headers, &n))
    }
    fn header_all(
        &mut self,
        r: Resource<RequestState>,
        n: String,
    ) -> wasmtime::Result<Vec<String>> {
        Ok(get_all(&self.req(&r)?.headers, &n))
    }
    fn headers(&mut self, r: Resource<RequestState>) -> wasmtime::Result<Vec<Header>> {
        Ok(all(&self.req(&r)?.headers))
    }
    fn get_var(
        &mut self,
        r: Resource<RequestState>,
        n: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self
            .req(&r)?
            .vars
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.clone()))
    }
    fn drop(&mut self, r: Resource<RequestState>) -> wasmtime::Result<()> {
        // Handles are owned by the host and taken back after each call; a
        // guest can only drop a borrow, which never reaches here.
        let _ = r;
        Ok(())
    }
}

impl edit_request::Host for HostState {
    fn set_header(
        &mut self,
        r: Resource<RequestState>,
        n: String,
        v: String,
    ) -> wasmtime::Result<Result<(), EditError>> {
        let lim = self.headers;
        Ok(self
            .req_mut(&r)?
            .and_then(|q| set(&mut q.headers, &n, &v, lim)))
    }
    fn set_headers(
        &mut self,
        r: Resource<RequestState>,
        headers: Vec<Header>,
    ) -> wasmtime::Result<Result<(), (u32, EditError)>> {
        let lim = self.headers;
        Ok(match self.req_mut(&r)? {
            Ok(q) => set_each(&mut q.headers, &headers, lim),
            Err(e) => Err((0, e)),
        })
    }
    fn append_header(
        &mut self,
        r: Resource<RequestState>,
        n: String,
        v: String,
    ) -> wasmtime::Result<Result<(), EditError>> {
        let lim = self.headers;
        Ok(self
            .req_mut(&r)?
            .and_then(|q| append(&mut q.headers, &n, &v, lim)))
    }
    fn remove_header(
        &mut self,
        r: Resource<RequestState>,
        n: String,
    ) -> wasmtime::Result<Result<bool, EditError>> {
        Ok(self.req_mut(&r)?.and_then(|q| remove(&mut q.headers, &n)))
    }
}

impl rewrite::Host for HostState {
    fn set_path(
        &mut self,
        r: Resource<RequestState>,
        path: String,
    ) -> wasmtime::Result<Result<(), EditError>> {
        Ok(self.req_mut(&r)?.and_then(|q| {
            let p = crate::path::normalise(&path)
                .map_err(|e| EditError::InvalidPath(format!("{path:?}: {e}")))?;
            q.path = p;
            Ok(())
        }))
    }
    fn set_query(
        &mut self,
        r: Resource<RequestState>,
        query: Option<String>,
    ) -> wasmtime::Result<Result<(), EditError>> {
        Ok(self.req_mut(&r)?.and_then(|q| {
            if let Some(s) = &query {
                // Must stay a valid query once put back in a URI.
                if s.bytes().any(|b| !(0x21..=0x7e).contains(&b) || b == b'#') {
                    return Err(EditError::InvalidPath(format!(
                        "query {s:?} has characters that must be percent-encoded"
                    )));
                }
            }
            q.query = query.filter(|s| !s.is_empty());
            Ok(())
        }))
    }
}

impl vars::Host for HostState {
    fn set_var(
        &mut self,
        r: Resource<RequestState>,
        n: String,
        v: String,
    ) -> wasmtime::Result<Result<(), EditError>> {
        Ok(self.req_mut(&r)?.and_then(|q| set_var(&mut q.vars, n, v)))
    }
    fn set_vars(
        &mut self,
        r: Resource<RequestState>,
        pairs: Vec<(String, String)>,
    ) -> wasmtime::Result<Result<(), (u32, EditError)>> {
        Ok(match self.req_mut(&r)? {
            Ok(q) => pairs
                .into_iter()
                .zip(0u32..)
                .try_for_each(|((n, v), i)| set_var(&mut q.vars, n, v).map_err(|e| (i, e))),
            Err(e) => Err((0, e)),
        })
    }
}

fn set_var(vars: &mut Vec<(String, String)>, n: String, v: String) -> Result<(), EditError> {
    if v.len() > MAX_VAR_VALUE || n.len() > 128 {
        return Err(EditError::TooLarge);
    }
    if let Some(slot) = vars.iter_mut().find(|(k, _)| *k == n) {
        slot.1 = v;
    } else if vars.len() < MAX_VARS {
        vars.push((n, v));
    } else {
        return Err(EditError::TooLarge);
    }
    Ok(())
}

/// `set` for each header in order; the first refusal stops it, with its index.
fn set_each(
    h: &mut HeaderMap,
    headers: &[Header],
    lim: HeaderLimits,
) -> Result<(), (u32, EditError)> {
    headers
        .iter()
        .zip(0u32..)
        .try_for_each(|(x, i)| set(h, &x.name, &x.value, lim).map_err(|e| (i, e)))
}

impl HostResponse for HostState {
    fn status(&mut self, r: Resource<ResponseState>) -> wasmtime::Result<u16> {
        Ok(self.resp(&r)?.status.as_u16())
    }
    fn header(
        &mut self,
        r: Resource<ResponseState>,
        n: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(get(&self.resp(&r)?.headers, &n))
    }
    fn header_all(
        &mut self,
        r: Resource<ResponseState>,
        n: String,
    ) -> wasmtime::Result<Vec<String>> {
        Ok(get_all(&self.resp(&r)?.headers, &n))
    }
    fn headers(&mut self, r: Resource<ResponseState>) -> wasmtime::Result<Vec<Header>> {
        Ok(all(&self.resp(&r)?.headers))
    }
    fn drop(&mut self, r: Resource<ResponseState>) -> wasmtime::Result<()> {
        let _ = r;
        Ok(())
    }
}

impl edit_response::Host for HostState {
    fn set_status(
        &mut self,
        r: Resource<ResponseState>,
        status: u16,
    ) -> wasmtime::Result<Result<(), EditError>> {
        let resp = self.resp(&r)?;
        Ok(match final_status(status) {
            Some(s) => {
                resp.status = s;
                Ok(())
            }
            None => Err(EditError::InvalidStatus(status)),
        })
    }
    fn set_header(
        &mut self,
        r: Resource<ResponseState>,
        n: String,
        v: String,
    ) -> wasmtime::Result<Result<(), EditError>> {
        let lim = self.headers;
        Ok(set(&mut self.resp(&r)?.headers, &n, &v, lim))
    }
    fn set_headers(
        &mut self,
        r: Resource<ResponseState>,
        headers: Vec<Header>,
    ) -> wasmtime::Result<Result<(), (u32, EditError)>> {
        let lim = self.headers;
        Ok(set_each(&mut self.resp(&r)?.headers, &headers, lim))
    }
    fn append_header(
        &mut self,
        r: Resource<ResponseState>,
        n: String,
        v: String,
    ) -> wasmtime::Result<Result<(), EditError>> {
        let lim = self.headers;
        Ok(append(&mut self.resp(&r)?.headers, &n, &v, lim))
    }
    fn remove_header(
        &mut self,
        r: Resource<ResponseState>,
        n: String,
    ) -> wasmtime::Result<Result<bool, EditError>> {
        Ok(remove(&mut self.resp(&r)?.headers, &n))
    }
}

/// Checks a filter's early reply against the plugin's limits and turns it
/// into status, headers and body.
pub(crate) fn reply_parts(
    reply: crate::plugin::bindings::Reply,
    lim: HeaderLimits,
    max_body: usize,
) -> Result<(StatusCode, HeaderMap, Vec<u8>), String> {
    let status = final_status(reply.status)
        .ok_or_else(|| format!("reply status {} is not in 200..=599", reply.status))?;
    if reply.headers.len() > lim.max_headers {
        return Err(format!(
            "reply has {} headers, more than `max_headers` ({})",
            reply.headers.len(),
            lim.max_headers
        ));
    }
    if reply.body.len() > max_body {
        return Err(format!(
            "reply body is {} bytes, more than `max_reply_body` ({max_body})",
            reply.body.len()
        ));
    }
    let mut headers = HeaderMap::with_capacity(reply.headers.len());
    // Framing and hop-by-hop headers are the host's: `content-length` comes from the body.
    for h in reply.headers.iter().filter(|h| !gateway_owned(&h.name)) {
        append(&mut headers, &h.name, &h.value, lim).map_err(|e| match e {
            EditError::TooLarge => format!(
                "reply headers are over `max_header_bytes` ({})",
                lim.max_header_bytes
            ),
            e => format!("reply header {:?}: {e:?}", h.name),
        })?;
    }
    Ok((status, headers, reply.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_refuse_exactly_the_headers_the_gateway_owns() {
        let names = GATEWAY_OWNED.iter().copied().chain([
            "proxy-authorization",
            "Proxy-Foo",
            "Connection",
            "TE",
        ]);
        for n in names {
            assert!(gateway_owned(n), "{n}");
            assert!(matches!(name(n), Err(EditError::ReadOnly)), "{n}");
        }
        for n in ["x-proxy", "content-type", "host", "x-te", "keep-alive-x"] {
            assert!(!gateway_owned(n), "{n}");
            assert!(name(n).is_ok(), "{n}");
        }
    }
}
