//! Header rules at the gateway's edges: hop-by-hop removal and forwarding headers.

use std::net::SocketAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

use crate::error::GatewayError;

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the usual legacy ones), and
/// `Transfer-Encoding`: hyper frames bodies itself, and a stale framing
/// header must never be forwarded. A match on the name's text (a length
/// switch, then one compare), not nine `HeaderName` comparisons per header.
fn is_hop_by_hop(n: &HeaderName) -> bool {
    matches!(
        n.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "upgrade"
            | "transfer-encoding"
    )
}

/// Removes hop-by-hop headers, including those named in `Connection`.
///
/// Runs when a message arrives, before any plugin: it can never remove a
/// header that the gateway or a plugin adds afterwards.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the (few) names present instead of a hashed remove per
    // hop-by-hop name: most messages carry none of them.
    let mut gone: Vec<HeaderName> = h.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    if gone.is_empty() {
        return;
    }
    let listed = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok());
    gone.extend(listed);
    for n in gone {
        h.remove(n);
    }
}

/// Sets `X-Forwarded-For/Proto/Host`. From a `trusted` peer (a
/// `[server] trusted_proxies` entry) the client's values are kept and the
/// peer is appended to `X-Forwarded-For`; from anyone else they are replaced,
/// so a client cannot forge its address.
pub fn set_forwarded(
    h: &mut HeaderMap,
    client: SocketAddr,
    authority: Option<&str>,
    tls: bool,
    trusted: bool,
) {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
    let (xff, xfp, xfh) = (XFF, XFP, XFH);
    let ip = crate::net::ip_text(client.ip());
    let chain = trusted
        .then(|| {
            let prior: Vec<&str> = h
                .get_all(&xff)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!prior.is_empty()).then(|| format!("{}, {ip}", prior.join(", ")))
        })
        .flatten()
        .unwrap_or(ip);
    // The header takes the string's buffer: no second copy.
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(chain.into_bytes())) {
        h.insert(xff, v);
    }
    if !(trusted && h.contains_key(&xfp)) {
        h.insert(
            xfp,
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
    }
    // Usually the authority came from `Host` itself: share that value, do not copy it.
    let same = |v: &HeaderValue| authority.is_some_and(|a| v.as_bytes() == a.as_bytes());
    let host = match h.get(header::HOST).filter(|v| same(v)) {
        Some(v) => Some(v.clone()),
        None => {
            let host = authority.and_then(|a| HeaderValue::from_str(a).ok());
            if let Some(v) = &host {
                // The upstream sees the authority that was routed (HTTP/2 clients
                // send `:authority`, not `Host`; upstreams expect `Host`).
                h.insert(header::HOST, v.clone());
            }
            host
        }
    };
    if !(trusted && h.contains_key(&xfh)) {
        match host {
            Some(v) => {
                h.insert(xfh, v);
            }
            None => {
                h.remove(xfh);
            }
        }
    }
}

/// The client a request from a trusted proxy is for: the rightmost
/// `X-Forwarded-For` address that is not itself a trusted proxy (each proxy
/// appends the address it saw, so only entries right of an untrusted one can
/// be believed). An unparsable entry stops the walk at the last believed
/// hop. The port is the peer's when the client is the peer, else 0.
pub fn forwarded_client(h: &HeaderMap, peer: SocketAddr, trusted: &[ipnet::IpNet]) -> SocketAddr {
    let entries: Vec<&str> = h
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer.ip();
    for entry in entries.iter().rev() {
        let Ok(ip) = entry.parse::<std::net::IpAddr>() else {
            break;
        };
        client = ip;
        if !trusted.iter().any(|n| n.contains(&ip)) {
            break;
        }
    }
    let port = if client == peer.ip() { peer.port() } else { 0 };
    SocketAddr::new(client, port)
}

/// Refuses requests whose body length is ambiguous, the root of request
/// smuggling: `Content-Length` together with `Transfer-Encoding`, more than
/// one `Content-Length`, or a transfer coding other than plain `chunked`.
pub fn check_framing(h: &HeaderMap) -> Result<(), GatewayError> {
    let te = h.get_all(header::TRANSFER_ENCODING);
    let has_te = te.iter().next().is_some();
    if has_te && h.contains_key(header::CONTENT_LENGTH) {
        return Err(GatewayError::BadFraming(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    let mut lengths = h.get_all(header::CONTENT_LENGTH).iter();
    if let Some(cl) = lengths.next() {
        if lengths.next().is_some() {
            return Err(GatewayError::BadFraming("more than one Content-Length"));
        }
        if cl.is_empty() || !cl.as_bytes().iter().all(u8::is_ascii_digit) {
            return Err(GatewayError::BadFraming("Content-Length is not a number"));
        }
    }
    let mut codings = te
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|c| c.trim_ascii());
    if has_te
        && !(codings
            .next()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none())
    {
        return Err(GatewayError::BadFraming(
            "Transfer-Encoding other than `chunked`",
        ));
    }
    Ok(())
}

/// Whether `req` asks for a WebSocket upgrade (the only upgrade passed
/// through; `Upgrade: h2c` and others are dropped as hop-by-hop).
pub fn websocket_upgrade(req: &http::request::Parts) -> bool {
    let has_token = |name: HeaderName, token: &str| {
        h_tokens(&req.headers, name).any(|t| t.eq_ignore_ascii_case(token))
    };
    req.method == http::Method::GET
        && req.version == http::Version::HTTP_11
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
}

fn h_tokens(h: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    h.get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
}

/// Drops header names containing `_`: some servers treat `X_User` as
/// `X-User`, which would let a client slip past a plugin that removes `X-User`.
pub fn drop_underscore_names(h: &mut HeaderMap) {
    let odd: Vec<HeaderName> = h
        .keys()
        .filter(|n| n.as_str().as_bytes().contains(&b'_'))
        .cloned()
        .collect();
    for n in odd {
        tracing::debug!(header = %n, "dropped a header name with an underscore");
        h.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_client_is_the_rightmost_untrusted_address() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let client = |xff: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
            forwarded_client(&h, peer, &trusted).ip().to_string()
        };
        assert_eq!(client("203.0.113.9"), "203.0.113.9");
        // The leftmost entry is the client's own claim: only the hop our proxy saw counts.
        assert_eq!(client("6.6.6.6, 203.0.113.9, 10.0.0.3"), "203.0.113.9");
        assert_eq!(client("10.0.0.4, 10.0.0.3"), "10.0.0.4");
        assert_eq!(client("203.0.113.9, not-an-ip"), "10.0.0.2");
        assert_eq!(forwarded_client(&HeaderMap::new(), peer, &trusted), peer);
    }

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
