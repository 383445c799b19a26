//! The properties Weir's request-facing parsers must keep for any input.
//! Each function is one fuzz target (`cargo +nightly fuzz run path --features libfuzzer`,
//! see fuzz/README.md) and replays its corpus in `cargo test` (tests/corpus.rs):
//! a crash found by fuzzing becomes a corpus file, and so a regression test.

use std::path::Path;

use http::Method;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use weir::config::Manifest;
use weir::path::{has_encoded_slash, normalise};
use weir::proxy::headers::check_framing;
use weir::router::{HostMatch, PathMatch, RouteRule, Router, host_of};

/// Path normalisation: never panics; what it returns is absolute, has no
/// empty, `.` or `..` segment, no byte outside visible ASCII, and is a fixed
/// point (normalising it again changes nothing).
pub fn path(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(n) = normalise(s) else {
        return;
    };
    assert!(n.starts_with('/'), "{s:?} -> {n:?}");
    assert!(
        n.bytes().all(|b| (0x21..=0x7e).contains(&b)),
        "{s:?} -> {n:?}"
    );
    for seg in n[1..].split('/').filter(|_| n.len() > 1) {
        assert!(
            !seg.is_empty() || n.ends_with('/'),
            "empty segment: {s:?} -> {n:?}"
        );
        assert!(
            seg != "." && seg != "..",
            "dot segment left: {s:?} -> {n:?}"
        );
    }
    assert!(!n.contains("//"), "{s:?} -> {n:?}");
    assert_eq!(
        normalise(&n).as_deref(),
        Ok(n.as_str()),
        "not a fixed point: {s:?}"
    );
    // The router and the upstream see the same bytes: a slash that could be
    // decoded later is either refused or visible.
    if n.contains("%2F") || n.contains("%5C") || n.contains('\\') {
        assert!(has_encoded_slash(&n), "{s:?} -> {n:?}");
    }
}

/// Manifest parsing: never panics; an error names the file and a line and
/// column inside the text.
pub fn manifest(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let lines = s.lines().count().max(1);
    if let Err(e) = Manifest::parse(Path::new("fuzz.toml"), s.to_string()) {
        let msg = e.to_string();
        assert!(msg.starts_with("fuzz.toml"), "{msg}");
        if let Some(line) = msg
            .strip_prefix("fuzz.toml:")
            .and_then(|r| r.split(':').next())
            .and_then(|l| l.parse::<usize>().ok())
        {
            assert!(
                line >= 1 && line <= lines + 1,
                "line {line} of {lines}: {msg}"
            );
        }
    }
}

/// Request framing: never panics; when the headers pass, the body length is
/// unambiguous (one numeric `Content-Length` or only `chunked`, never both).
pub fn framing(data: &[u8]) {
    let mut h = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        h.append(name, value);
    }
    if check_framing(&h).is_ok() {
        let cl = h.get_all(http::header::CONTENT_LENGTH).iter().count();
        let te = h.get_all(http::header::TRANSFER_ENCODING).iter().count();
        assert!(cl <= 1, "{h:?}");
        assert!(cl == 0 || te == 0, "{h:?}");
        if let Some(v) = h.get(http::header::CONTENT_LENGTH) {
            assert!(
                v.as_bytes().iter().all(u8::is_ascii_digit) && !v.is_empty(),
                "{h:?}"
            );
        }
    }
}

/// Route matching: never panics; a match is a rule whose host, path and
/// method all fit the request, and no more specific rule that fits was passed over.
pub fn route(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let request_path = parts.next().unwrap_or("/").to_string();
    let authority = parts.next().unwrap_or("");
    let host = (!authority.is_empty()).then(|| host_of(authority));
    let method = match parts.next().unwrap_or("GET") {
        "POST" => Method::POST,
        "CONNECT" => Method::CONNECT,
        "TRACE" => Method::TRACE,
        _ => Method::GET,
    };
    // Each further line is a rule: `host path [METHOD]`; `*.x` and `=` prefixes as in the manifest.
    let rules: Vec<RouteRule<usize>> = parts
        .take(16)
        .enumerate()
        .map(|(i, line)| {
            let mut w = line.split(' ');
            let h = w.next().unwrap_or("");
            let p = w.next().unwrap_or("/");
            let host = match h {
                "" | "-" => HostMatch::Any,
                h if h.starts_with("*.") => HostMatch::Wildcard(h[1..].to_string()),
                h => HostMatch::Exact(h.to_string()),
            };
            let path = match p.strip_prefix('=') {
                Some(exact) => PathMatch::Exact(exact.to_string()),
                None => PathMatch::Prefix(p.to_string()),
            };
            let methods = match w.next() {
                Some("CONNECT") => vec![Method::CONNECT],
                Some("POST") => vec![Method::POST],
                _ => vec![],
            };
            RouteRule {
                host,
                path,
                methods,
                target: i.into(),
            }
        })
        .collect();
    let router = Router::new(rules);
    if let Ok(hit) = router.find(host.as_deref(), &request_path, &method) {
        let rule = router
            .rules()
            .iter()
            .find(|r| std::sync::Arc::ptr_eq(&r.target, hit))
            .expect("the match is one of the rules");
        match &rule.path {
            PathMatch::Exact(p) => assert_eq!(p, &request_path),
            PathMatch::Prefix(p) => assert!(request_path.starts_with(p.as_str())),
        }
        if method == Method::CONNECT || method == Method::TRACE {
            assert!(rule.methods.contains(&method), "{method} needs an opt-in");
        }
    }
}
