//! Request ids and W3C trace context (`traceparent`, `tracestate`).
//!
//! Every request gets an `X-Request-Id` (the client's if it is sane, else a
//! random 128-bit hex id) that goes upstream and back to the client. The
//! gateway is one hop of a trace: it keeps the caller's trace id (or starts a
//! trace when there is no valid `traceparent`) and sends the upstream a new
//! span id of its own as the parent.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// `x-request-id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest client-supplied request id kept; longer ones are replaced.
pub const MAX_REQUEST_ID: usize = 128;

/// The client's `X-Request-Id` if it is 1..=128 bytes of `[A-Za-z0-9._:+/=-]`,
/// else a new one; as a header value, made once per request (the client's
/// is shared rather than copied).
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&REQUEST_ID)
        .filter(|v| v.to_str().is_ok_and(valid_request_id))
        .cloned()
        .unwrap_or_else(|| hex_value(hex_id(&random_nonzero_u128().to_be_bytes())))
}

/// A header value from hex text, without copying it.
fn hex_value(hex: String) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(hex.into_bytes()))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn valid_request_id(v: &str) -> bool {
    (1..=MAX_REQUEST_ID).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:+/=-".contains(&b))
}

/// Lower-case hex of `bytes`. Runs several times per request: a table
/// lookup per nibble, not `format!` or a char-by-char collect.
fn hex_id(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // Written into a stack buffer, checked once and copied once.
    let mut out = [0u8; 64];
    let n = bytes.len().min(32);
    for (i, b) in bytes[..n].iter().enumerate() {
        out[2 * i] = DIGITS[(b >> 4) as usize];
        out[2 * i + 1] = DIGITS[(b & 15) as usize];
    }
    std::str::from_utf8(&out[..2 * n])
        .unwrap_or_default()
        .to_owned()
}

fn random_nonzero_u128() -> u128 {
    // Ids need to be unique, not secret: a fast thread-local generator is enough.
    fastrand::u128(1..)
}

fn random_nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

/// This hop of a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits, shared by every hop.
    pub trace_id: String,
    /// The caller's span id (16 hex digits), if it sent a valid `traceparent`.
    pub parent_id: Option<String>,
    /// The span id this gateway hands the upstream as its parent.
    pub span_id: String,
    /// Trace flags, 2 hex digits (`01`: sampled).
    pub flags: String,
    /// The caller's `tracestate`, kept only with a valid `traceparent`.
    pub state: Option<HeaderValue>,
}

impl TraceContext {
    /// Continues the caller's trace, or starts one (sampled) when
    /// `traceparent` is absent or invalid.
    pub fn from_headers(headers: &HeaderMap) -> TraceContext {
        let span_id = hex_id(&random_nonzero_u64().to_be_bytes());
        let parsed = headers
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        match parsed {
            Some((trace_id, parent_id, flags)) => TraceContext {
                trace_id,
                parent_id: Some(parent_id),
                span_id,
                flags,
                // Only one tracestate line is expected; several are joined by the spec's rules
                // only when valid, so the first is passed on as received.
                state: headers.get(&TRACESTATE).cloned(),
            },
            None => TraceContext {
                trace_id: hex_id(&random_nonzero_u128().to_be_bytes()),
                parent_id: None,
                span_id,
                flags: "01".into(),
                state: None,
            },
        }
    }

    /// The `traceparent` value sent upstream: same trace, this hop's span.
    pub fn traceparent(&self) -> String {
        self.traceparent_with(&self.span_id)
    }

    /// A `traceparent` in this trace naming `span_id` (an upstream attempt's span) as the parent.
    pub fn traceparent_with(&self, span_id: &str) -> String {
        let mut v = String::with_capacity(55);
        for part in ["00", &self.trace_id, span_id, &self.flags] {
            if !v.is_empty() {
                v.push('-');
            }
            v.push_str(part);
        }
        v
    }

    /// Replaces the trace headers in `headers` with this hop's.
    pub fn inject(&self, headers: &mut HeaderMap) {
        // The header takes the string's buffer: no second copy.
        if let Ok(v) =
            HeaderValue::from_maybe_shared(bytes::Bytes::from(self.traceparent().into_bytes()))
        {
            headers.insert(TRACEPARENT, v);
        }
        match &self.state {
            Some(s) => {
                headers.insert(TRACESTATE, s.clone());
            }
            None => {
                headers.remove(TRACESTATE);
            }
        }
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Parses `version-traceid-parentid-flags` (W3C Trace Context, level 1).
fn parse_traceparent(v: &str) -> Option<(String, String, String)> {
    let v = v.trim();
    let mut parts = v.splitn(5, '-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next();
    let ok = is_hex(version, 2)
        && version != "ff"
        // Version 00 has exactly four fields; later versions may append more.
        && (version != "00" || rest.is_none())
        && is_hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && is_hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && is_hex(flags, 2);
    ok.then(|| (trace_id.into(), parent_id.into(), flags.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn valid_traceparent_keeps_trace_and_flags_with_a_new_span() {
        let h = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=x"),
        ]);
        let t = TraceContext::from_headers(&h);
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        assert!(is_hex(&t.span_id, 16));
        assert_eq!(t.state.as_ref().unwrap(), "vendor=x");
        assert!(
            t.traceparent()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert!(t.traceparent().ends_with("-01"));
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace_and_drop_tracestate() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let h = headers(&[("traceparent", bad), ("tracestate", "vendor=x")]);
            let t = TraceContext::from_headers(&h);
            assert_ne!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert!(is_hex(&t.trace_id, 32), "{bad}");
            assert_eq!(t.parent_id, None, "{bad}");
            assert_eq!(t.state, None, "{bad}");
        }
        // A future version may carry more fields.
        let h = headers(&[(
            "traceparent",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more",
        )]);
        assert_eq!(
            TraceContext::from_headers(&h).trace_id,
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_generated_otherwise() {
        let keep = headers(&[("x-request-id", "req-123.abc")]);
        assert_eq!(request_id(&keep), "req-123.abc");
        let id = |h: &HeaderMap| request_id(h).to_str().unwrap().to_string();
        let long = "a".repeat(MAX_REQUEST_ID + 1);
        for bad in ["", "has space", "semi;colon", long.as_str()] {
            let id = id(&headers(&[("x-request-id", bad)]));
            assert!(is_hex(&id, 32), "{bad:?} -> {id}");
        }
        let a = request_id(&HeaderMap::new());
        let b = request_id(&HeaderMap::new());
        assert_ne!(a, b);
    }
}
