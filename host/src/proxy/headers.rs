//! Header rules at the gateway's edges: hop-by-hop removal and forwarding headers.

use std::net::SocketAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the usual legacy ones).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those named in `Connection`.
///
/// Runs when a message arrives, before any plugin: it can never remove a
/// header that the gateway or a plugin adds afterwards.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    // hyper frames bodies itself; a stale framing header must never be forwarded.
    h.remove(header::TRANSFER_ENCODING);
}

/// Sets `X-Forwarded-For/Proto/Host`, replacing what the client sent.
pub fn set_forwarded(h: &mut HeaderMap, client: SocketAddr, authority: Option<&str>) {
    let xff = HeaderName::from_static("x-forwarded-for");
    let xfp = HeaderName::from_static("x-forwarded-proto");
    let xfh = HeaderName::from_static("x-forwarded-host");
    if let Ok(v) = HeaderValue::from_str(&client.ip().to_string()) {
        h.insert(xff, v);
    }
    h.insert(xfp, HeaderValue::from_static("http"));
    match authority.and_then(|a| HeaderValue::from_str(a).ok()) {
        Some(v) => {
            h.insert(xfh, v.clone());
            // HTTP/2 clients send `:authority`, not `Host`; upstreams expect `Host`.
            h.entry(header::HOST).or_insert(v);
        }
        None => {
            h.remove(xfh);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_listed_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Consumer"),
        );
        h.insert("x-consumer", HeaderValue::from_static("forged"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
