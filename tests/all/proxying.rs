//! Proxy behaviour: forwarding headers, hop-by-hop stripping, bodies, h2c,
//! upstream failures and round robin.

use bytes::Bytes;
use http::Method;

use crate::support::{TestGateway, Upstream, raw, send, send_h2, tally};

async fn one_route(upstream: &str, extra: &str) -> TestGateway {
    TestGateway::start(&format!(
        "{extra}\n[[routes]]\nid = \"r\"\nprefix = \"/\"\nupstream = \"{upstream}\"\n"
    ))
    .await
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_headers_stripped() {
    let up = Upstream::start("u").await;
    let gw = one_route(&up.url(), "").await;
    let r = gw
        .get_with(
            "/p?q=1",
            &[
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "hop"),
                ("keep-alive", "timeout=5"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-kept", "yes"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "upstream u");
    let seen = up.last();
    assert_eq!(seen.uri, "/p?q=1");
    assert_eq!(
        seen.header("x-secret"),
        None,
        "headers named in Connection are hop-by-hop"
    );
    assert_eq!(seen.header("keep-alive"), None);
    assert_eq!(seen.header("x-kept"), Some("yes"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "a client cannot forge X-Forwarded-For"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(gw.addr.to_string().as_str())
    );
    assert_eq!(
        r.header("server"),
        Some("test-origin"),
        "response headers come back"
    );
}

#[tokio::test]
async fn request_body_streams_through_and_oversized_bodies_get_413() {
    let up = Upstream::start("u").await;
    let gw = one_route(
        &up.url(),
        "[server]\nlisten = [\"127.0.0.1:0\"]\nmax_body_bytes = 100000\n",
    )
    .await;
    let body = Bytes::from(vec![b'x'; 90_000]);
    let r = send(Method::POST, &gw.url("/upload"), &[], body.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body, body);

    let r = send(
        Method::POST,
        &gw.url("/upload"),
        &[],
        Bytes::from(vec![b'x'; 100_001]),
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(
        up.seen().len(),
        1,
        "the oversized body never reached the upstream"
    );

    // Chunked, so the size is only known while streaming.
    let chunk = "a".repeat(60_000);
    let req = format!(
        "POST /chunked HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    let out = raw(gw.addr, &req).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
}

#[tokio::test]
async fn h2c_and_http1_are_served_on_one_port() {
    let gw = one_route("builtin:echo", "").await;
    let r = send_h2(
        Method::GET,
        &gw.url("/via/h2?x=1"),
        &[("x-test", "h2")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    let echo = r.json();
    assert_eq!(echo["path"], "/via/h2");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["headers"]["x-test"], "h2");
    assert_eq!(
        echo["headers"]["host"],
        gw.addr.to_string(),
        "h2 :authority reaches the upstream as Host"
    );
    let r = gw.get("/via/h1").await;
    assert_eq!(r.json()["path"], "/via/h1");
}

/// `[server] workers`: several serving threads share each listening address
/// (`SO_REUSEPORT`), and `0` serves on the shared runtime; either way every
/// connection, HTTP/1.1 or h2c, reaches the upstream with its own path.
#[tokio::test]
async fn every_runtime_shape_serves_every_connection() {
    for workers in [3, 0] {
        let up = Upstream::start("u").await;
        let gw = TestGateway::start(&format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = {workers}\n\n[[routes]]\nid = \"r\"\nprefix = \"/\"\nupstream = \"{}\"\n",
            up.url()
        ))
        .await;
        let mut paths = Vec::new();
        for i in 0..24 {
            let path = format!("/n/{i}");
            // A fresh client (and so a fresh connection) per request.
            let r = if i % 2 == 0 {
                gw.get(&path).await
            } else {
                send_h2(Method::GET, &gw.url(&path), &[], Bytes::new()).await
            };
            assert_eq!(r.status, 200, "workers = {workers}, {path}");
            paths.push(path);
        }
        let mut seen: Vec<String> = up.seen().into_iter().map(|s| s.uri).collect();
        seen.sort();
        paths.sort();
        assert_eq!(seen, paths, "workers = {workers}");
        assert_eq!(gw.gateway.shutdown().await, 0);
    }
}

#[tokio::test]
async fn dead_upstream_gives_502_and_slow_upstream_gives_504() {
    // A port that was just free: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let slow = Upstream::start("slow").await;
    let gw = TestGateway::start(&format!(
        r#"
[upstreams.dead]
targets = ["http://{dead}"]
connect_timeout = "1s"

[upstreams.slow]
targets = ["{slow}"]
request_timeout = "300ms"

[[routes]]
id = "dead"
prefix = "/dead"
upstream = "dead"

[[routes]]
id = "slow"
prefix = "/slow"
upstream = "slow"
"#,
        slow = slow.url()
    ))
    .await;
    let r = gw.get("/dead").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.body, "bad gateway\n");
    let r = gw.get("/slow").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.body, "gateway timeout\n");
}

#[tokio::test]
async fn targets_are_used_round_robin() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = TestGateway::start(&format!(
        "[upstreams.pair]\ntargets = [\"{}\", \"{}\"]\n\n[[routes]]\nid = \"r\"\nprefix = \"/\"\nupstream = \"pair\"\n",
        a.url(),
        b.url()
    ))
    .await;
    let mut who = Vec::new();
    for _ in 0..10 {
        who.push(gw.get("/").await.header("x-upstream").unwrap().to_string());
    }
    let counts = tally(who);
    assert_eq!(counts.get("a"), Some(&5));
    assert_eq!(counts.get("b"), Some(&5));
}

#[tokio::test]
async fn builtin_echo_answers_with_what_it_received() {
    let gw = one_route("builtin:echo", "").await;
    let r = send(
        Method::PUT,
        &gw.url("/things/1?v=2"),
        &[("x-a", "1")],
        Bytes::from_static(b"payload"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let echo = r.json();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/things/1");
    assert_eq!(echo["query"], "v=2");
    assert_eq!(echo["headers"]["x-a"], "1");
    assert_eq!(echo["body"], "payload");
}
