//! Bodies, outbound calls and the cache (`weir:plugin/body`, `outbound`,
//! `cache`), through real gateways with the `test-probe` plugin: what the
//! plugin is handed, what the upstream and the client get, and the limits.

use std::io::Write;
use std::net::SocketAddr;

use bytes::Bytes;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{TestGateway, Upstream, failures, plugin, send};

/// A route `r` to `upstream` with the probe plugin under `config`;
/// `keys` go in `[plugins.probe]`, `extra` at the end of the manifest. The
/// probe imports outbound HTTP, so it is always granted `idp` (defined here
/// unless `extra` defines it).
fn probe(upstream: &str, keys: &str, config: &str, extra: &str) -> String {
    let idp = if extra.contains("[upstreams.idp]") {
        ""
    } else {
        "[upstreams.idp]\ntargets = [\"http://127.0.0.1:9\"]\n"
    };
    format!(
        "[plugins.probe]\npath = \"{}\"\ngrants = {{ http = [\"idp\"] }}\n{keys}\n\n[[routes]]\nid = \"r\"\nprefix = \"/\"\nupstream = \"{upstream}\"\n[[routes.plugins]]\nname = \"probe\"\nconfig = {{ {config} }}\n\n{extra}{idp}",
        plugin("test_probe")
    )
}

fn gzip(data: &[u8]) -> Bytes {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    Bytes::from(enc.finish().unwrap())
}

/// An origin that answers every request with `response` (raw HTTP/1.1) and closes.
async fn canned(response: Vec<u8>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(&response).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

fn http_response(headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[tokio::test]
async fn a_gzip_request_body_is_handed_over_decoded_and_the_upstream_gets_the_replacement() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&probe(
        &up.url(),
        "",
        r#"bodies = "request", upper = true"#,
        "",
    ))
    .await;
    let r = send(
        Method::POST,
        &gw.url("/in"),
        &[("content-encoding", "gzip"), ("content-type", "text/plain")],
        gzip(b"hello body"),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(&seen.body[..], b"HELLO BODY");
    assert_eq!(seen.header("content-length"), Some("10"));
    assert_eq!(seen.header("content-encoding"), None);
    assert_eq!(seen.header("x-body"), Some("10"));
}

#[tokio::test]
async fn a_response_body_is_replaced_and_reframed_and_the_request_is_read_only_by_then() {
    let origin = canned(http_response(
        "content-encoding: gzip\r\ncontent-type: text/plain\r\n",
        &gzip(b"from the origin"),
    ))
    .await;
    let gw = TestGateway::start(&probe(
        &format!("http://{origin}"),
        "",
        r#"bodies = "both", upper = true"#,
        "",
    ))
    .await;
    let r = gw.get_with("/out", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "FROM THE ORIGIN");
    assert_eq!(r.header("content-length"), Some("15"));
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("x-resp-body"), Some("15"));
    assert_eq!(
        r.header("x-req-body-in-response"),
        Some("Err(BodyError::ReadOnly)")
    );
}

#[tokio::test]
async fn a_body_in_an_encoding_the_gateway_does_not_decode_is_named_not_handed_over() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&probe(
        &up.url(),
        "",
        r#"bodies = "request", upper = true"#,
        "",
    ))
    .await;
    let r = send(
        Method::POST,
        &gw.url("/br"),
        &[("content-encoding", "br")],
        Bytes::from_static(b"\x1b\x03raw"),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-body"), Some("BodyError::Encoded(\"br\")"));
    // Sent on as received, encoding and all.
    assert_eq!(&seen.body[..], b"\x1b\x03raw");
    assert_eq!(seen.header("content-encoding"), Some("br"));
}

#[tokio::test]
async fn a_filter_that_did_not_ask_gets_no_body_and_the_body_streams_through() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&probe(&up.url(), "", "", "")).await;
    let r = send(
        Method::POST,
        &gw.url("/s"),
        &[],
        Bytes::from_static(b"untouched"),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(&seen.body[..], b"untouched");
    assert_eq!(seen.header("x-body"), None);
    assert_eq!(r.header("x-resp-body"), None);
}

#[tokio::test]
async fn bodies_over_max_body_bytes_are_refused_413_and_502_and_counted() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&probe(
        &up.url(),
        "max_body_bytes = \"16B\"",
        r#"bodies = "request""#,
        "",
    ))
    .await;
    let r = send(
        Method::POST,
        &gw.url("/big"),
        &[],
        Bytes::from(vec![b'x'; 17]),
    )
    .await;
    assert_eq!(r.status, 413);
    assert!(up.seen().is_empty(), "the upstream was called");
    assert_eq!(failures(&gw, "r", "body_limit"), 1);
    // At the cap it passes.
    let r = send(
        Method::POST,
        &gw.url("/ok"),
        &[],
        Bytes::from(vec![b'x'; 16]),
    )
    .await;
    assert_eq!(r.status, 200);

    let origin = canned(http_response("", &[b'y'; 17])).await;
    let gw = TestGateway::start(&probe(
        &format!("http://{origin}"),
        "max_body_bytes = \"16B\"",
        r#"bodies = "response""#,
        "",
    ))
    .await;
    assert_eq!(gw.get("/big").await.status, 502);
    assert_eq!(failures(&gw, "r", "body_limit"), 1);
}

#[tokio::test]
async fn a_gzip_bomb_stops_at_the_cap() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&probe(&up.url(), "", r#"bodies = "request""#, "")).await;
    let bomb = gzip(&vec![0u8; 8 << 20]);
    let r = send(
        Method::POST,
        &gw.url("/bomb"),
        &[("content-encoding", "gzip")],
        bomb,
    )
    .await;
    assert_eq!(r.status, 413);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_granted_upstream_answers_a_plugin_call_through_the_upstream_code() {
    let idp = Upstream::start("idp").await;
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&probe(
        &up.url(),
        "",
        r#"call = { upstream = "idp", path = "/check?x=1", times = 2 }"#,
        &format!("[upstreams.idp]\ntargets = [\"{}\"]\n", idp.url()),
    ))
    .await;
    let r = gw.get("/a").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().header("x-call"),
        Some("200:upstream idp;200:upstream idp")
    );
    let calls = idp.seen();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].uri, "/check?x=1");
    assert_eq!(calls[0].header("x-from"), Some("probe"));
}

#[tokio::test]
async fn calls_past_max_outbound_calls_and_to_ungranted_upstreams_are_errors_not_traps() {
    let idp = Upstream::start("idp").await;
    let up = Upstream::start("u").await;
    let upstreams = format!(
        "[upstreams.idp]\ntargets = [\"{0}\"]\n[upstreams.other]\ntargets = [\"{0}\"]\n",
        idp.url()
    );
    let gw = TestGateway::start(&probe(
        &up.url(),
        "max_outbound_calls = 2",
        r#"call = { upstream = "idp", path = "/", times = 3 }"#,
        &upstreams,
    ))
    .await;
    assert_eq!(gw.get("/").await.status, 200);
    assert_eq!(
        up.last().header("x-call"),
        Some("200:upstream idp;200:upstream idp;CallError::TooManyCalls(2)")
    );
    let gw = TestGateway::start(&probe(
        &up.url(),
        "",
        r#"call = { upstream = "other", path = "/" }"#,
        &upstreams,
    ))
    .await;
    assert_eq!(gw.get("/").await.status, 200);
    assert_eq!(
        up.last().header("x-call"),
        Some("CallError::NotGranted(\"other\")")
    );
    assert_eq!(idp.seen().len(), 2);
}

/// An origin that holds each request until `n` are in flight at once, then
/// answers them all `together`; a request still alone after 1 s gets `alone`.
async fn gather(n: usize) -> SocketAddr {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let arrived = Arc::new(AtomicUsize::new(0));
    let all_in = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (arrived, all_in) = (arrived.clone(), all_in.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let (arrived, all_in) = (arrived.clone(), all_in.clone());
                    async move {
                        let waiting = all_in.notified();
                        let body = if arrived.fetch_add(1, Ordering::SeqCst) + 1 >= n {
                            all_in.notify_waiters();
                            "together"
                        } else if tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
                            .await
                            .is_ok()
                        {
                            "together"
                        } else {
                            "alone"
                        };
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from_static(body.as_bytes())),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn send_all_calls_in_parallel_and_a_hanging_upstream_is_a_timeout_value() {
    let origin = gather(4).await;
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&probe(
        &up.url(),
        "call_timeout = \"3s\"",
        r#"call = { upstream = "idp", path = "/", times = 4, all = true }"#,
        &format!("[upstreams.idp]\ntargets = [\"http://{origin}\"]\n"),
    ))
    .await;
    assert_eq!(gw.get("/").await.status, 200);
    // All four were in flight at once.
    assert_eq!(
        up.last().header("x-call"),
        Some("200:together;200:together;200:together;200:together")
    );

    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            conns.push(s);
        }
    });
    let gw = TestGateway::start(&probe(
        &up.url(),
        "",
        r#"call = { upstream = "idp", path = "/", timeout_ms = 100 }"#,
        &format!("[upstreams.idp]\ntargets = [\"http://{hang_addr}\"]\n"),
    ))
    .await;
    assert_eq!(gw.get("/").await.status, 200);
    assert_eq!(up.last().header("x-call"), Some("CallError::Timeout"));
}

#[tokio::test]
async fn a_reset_or_garbage_from_the_called_upstream_is_unavailable() {
    let up = Upstream::start("u").await;
    let garbage = canned(b"NOT HTTP AT ALL\r\n\r\n".to_vec()).await;
    let reset = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reset_addr = reset.local_addr().unwrap();
    tokio::spawn(async move {
        // Accept and drop at once: the caller sees the connection closed.
        while let Ok((s, _)) = reset.accept().await {
            drop(s);
        }
    });
    for origin in [garbage, reset_addr] {
        let gw = TestGateway::start(&probe(
            &up.url(),
            "",
            r#"call = { upstream = "idp", path = "/" }"#,
            &format!("[upstreams.idp]\ntargets = [\"http://{origin}\"]\n"),
        ))
        .await;
        assert_eq!(gw.get("/").await.status, 200);
        let shown = up.last().header("x-call").unwrap().to_string();
        assert!(shown.starts_with("CallError::Unavailable("), "{shown}");
    }
}

#[tokio::test]
async fn a_plugin_that_calls_out_without_a_grant_is_refused_at_load_and_an_empty_grant_calls_nothing()
 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let manifest = |grants: &str| {
        format!(
            "[plugins.probe]\npath = \"{}\"\n{grants}\n[upstreams.idp]\ntargets = [\"http://127.0.0.1:9\"]\n",
            plugin("test_probe")
        )
    };
    std::fs::write(&path, manifest("")).unwrap();
    let err = weir::Gateway::start(&path)
        .await
        .err()
        .expect("it started")
        .to_string();
    assert!(
        err.contains(
            "(outbound HTTP), but the manifest says nothing of what it may call (`grants.http`)"
        ),
        "{err}"
    );
    assert!(err.contains(r#"grants = { http = ["idp"] }"#), "{err}");

    // Said explicitly: it loads, and every call it makes is refused.
    let up = Upstream::start("u").await;
    let none = TestGateway::start(
        &probe(
            &up.url(),
            "",
            r#"call = { upstream = "idp", path = "/" }"#,
            "",
        )
        .replace(r#"grants = { http = ["idp"] }"#, "grants = { http = [] }"),
    )
    .await;
    assert_eq!(none.get("/").await.status, 200);
    assert_eq!(
        up.last().header("x-call"),
        Some("CallError::NotGranted(\"idp\")")
    );

    std::fs::write(&path, manifest(r#"grants = { http = ["nope"] }"#)).unwrap();
    let err = weir::Gateway::start(&path)
        .await
        .err()
        .expect("it started")
        .to_string();
    assert!(
        err.contains("`grants.http` names `nope`, which is not an `[upstreams.*]` (defined: idp)"),
        "{err}"
    );
}

#[tokio::test]
async fn the_cache_keeps_a_value_for_later_requests() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&probe(&up.url(), "", "cache = true", "")).await;
    gw.get_with("/k", &[("x-value", "remembered")]).await;
    assert_eq!(up.last().header("x-cached"), Some("miss"));
    gw.get("/k").await;
    assert_eq!(up.last().header("x-cached"), Some("remembered"));
    gw.get("/other").await;
    assert_eq!(up.last().header("x-cached"), Some("miss"));
}
