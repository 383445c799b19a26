//! Outbound calls from plugins (`weir:plugin/outbound`) through the
//! manifest's upstreams: admission, balancing, passive health and the pools
//! are the ones proxied requests use. It lives with the snapshot, which
//! knows both sides: the plugin runtime and the upstream client do not
//! know each other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::body::{self, Body};
use crate::plugin::host::outbound::{Exchange, OutboundClient, OutboundError};
use crate::upstream::{ExchangeError, Upstream};

/// The upstreams of one snapshot, as plugins reach them.
pub struct Upstreams(pub HashMap<String, Arc<Upstream>>);

impl OutboundClient for Upstreams {
    fn has(&self, upstream: &str) -> bool {
        self.0.contains_key(upstream)
    }

    fn send<'a>(
        &'a self,
        upstream: &'a str,
        req: http::Request<Bytes>,
        max_body: usize,
        timeout: Duration,
    ) -> Exchange<'a> {
        Box::pin(async move {
            let Some(up) = self.0.get(upstream) else {
                return Err(OutboundError::Unavailable(format!(
                    "no upstream `{upstream}`"
                )));
            };
            let limit = timeout.min(up.settings.request_timeout);
            match tokio::time::timeout(limit, call(up, req, max_body)).await {
                Ok(result) => result,
                Err(_) => Err(OutboundError::Timeout),
            }
        })
    }
}

/// One call: admitted under `max_requests`, sent to a picked target, its
/// outcome reported to passive health.
async fn call(
    up: &Arc<Upstream>,
    req: http::Request<Bytes>,
    max_body: usize,
) -> Result<http::Response<Bytes>, OutboundError> {
    let _admitted = up
        .admit()
        .map_err(|e| OutboundError::Unavailable(e.to_string()))?;
    let index = up.pick(None, &[]);
    let endpoint = &up.endpoints()[index];
    let (mut parts, payload) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    parts.uri = format!("{}{pq}", endpoint.uri_base())
        .parse()
        .map_err(|e| OutboundError::Unavailable(format!("bad target URI: {e}")))?;
    let result = match up
        .exchange(
            endpoint,
            http::Request::from_parts(parts, body::full(payload)),
        )
        .await
    {
        Ok(resp) => {
            let (parts, b) = resp.into_parts();
            read(b, max_body)
                .await
                .map(|b| http::Response::from_parts(parts, b))
        }
        Err(ExchangeError::Connect(e)) => Err(OutboundError::Unavailable(e)),
        Err(ExchangeError::Failed(e)) => Err(OutboundError::Unavailable(format!(
            "{}: {}",
            endpoint.target,
            crate::error::chain(e.as_ref())
        ))),
    };
    let ok = matches!(&result, Ok(r) if !matches!(r.status().as_u16(), 502..=504));
    up.report(index, ok);
    result
}

/// The whole response body, up to `max` bytes.
async fn read(b: Body, max: usize) -> Result<Bytes, OutboundError> {
    body::read_capped(b, max).await.map_err(|e| match e {
        body::ReadCapped::TooLarge => OutboundError::TooLarge(max as u64),
        body::ReadCapped::Failed(e) => OutboundError::Unavailable(crate::error::chain(e.as_ref())),
    })
}
