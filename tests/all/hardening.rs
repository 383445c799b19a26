//! Hostile clients: request smuggling, header and URI limits, hop-by-hop
//! abuse, forged forwarding headers, slowloris, stalled bodies, unread
//! bodies after an early answer, and graceful shutdown. Each case asserts on
//! what a recording upstream actually received.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{TestGateway, Upstream, eventually, plugin, raw, send, send_h2};

const SERVER: &str = "[server]\nlisten = [\"127.0.0.1:0\"]\n";

/// An open route to `up` and an `/admin` route behind key-auth.
async fn guarded(up: &Upstream, server: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"{server}
[plugins.key-auth]
path = "{}"

[[routes]]
id = "admin"
prefix = "/admin"
upstream = "{url}"
[[routes.plugins]]
name = "key-auth"
config = {{ keys = [{{ key = "k1", consumer = "alice" }}] }}

[[routes]]
id = "open"
prefix = "/"
upstream = "{url}"
"#,
        plugin("key_auth"),
        url = up.url()
    ))
    .await
}

fn status_of(answer: &str) -> u16 {
    answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

#[tokio::test]
async fn smuggling_attempts_are_refused_and_never_reach_the_upstream() {
    let up = Upstream::start("u").await;
    let gw = guarded(&up, SERVER).await;
    // Were it read as a request of its own, it would reach the upstream on the open route.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "CL.TE",
            format!(
                "POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE.CL",
            format!(
                "POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                smuggled.len()
            ),
        ),
        (
            "TE list",
            format!(
                "POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE not last",
            format!(
                "POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: 3\r\n\r\nabc{smuggled}"
            ),
        ),
        (
            "TE twice",
            format!(
                "POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE xchunked",
            format!(
                "POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: xchunked\r\nContent-Length: 3\r\n\r\nabc{smuggled}"
            ),
        ),
        (
            "TE space before colon",
            format!(
                "POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc{smuggled}"
            ),
        ),
        (
            "TE obs-fold",
            format!(
                "POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 3\r\n\r\nabc{smuggled}"
            ),
        ),
        (
            "CL twice, different",
            format!(
                "POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nContent-Length: 41\r\n\r\nabc{smuggled}"
            ),
        ),
        (
            "CL list",
            format!("POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 3, 3\r\n\r\nabc{smuggled}"),
        ),
        (
            "CL sign",
            format!("POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: +3\r\n\r\nabc{smuggled}"),
        ),
        (
            "bad chunk size",
            format!(
                "POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "huge chunk size",
            format!(
                "POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "bare LF chunk",
            format!(
                "POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n{smuggled}"
            ),
        ),
    ];
    for (name, request) in &cases {
        // Refused, or (CL with TE) normalised to TE alone and the connection
        // closed after one answer (RFC 9112 §6.1): either way one response.
        let answer = raw(gw.addr, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 "),
            "{name}: no answer: {answer:?}"
        );
        let status = status_of(&answer);
        let normalised = status == 200 && ["CL.TE", "TE.CL"].contains(name);
        assert!(
            (400..500).contains(&status) || status == 501 || normalised,
            "{name}: {answer}"
        );
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{name}: {answer}");
    }
    for seen in up.seen() {
        assert!(
            !seen.uri.contains("smuggled"),
            "smuggled request reached the upstream: {seen:?}"
        );
        assert!(
            !(seen.headers.contains_key("content-length")
                && seen.headers.contains_key("transfer-encoding")),
            "the upstream saw both framing headers: {seen:?}"
        );
    }
}

#[tokio::test]
async fn path_tricks_do_not_skip_the_auth_of_a_route() {
    let up = Upstream::start("u").await;
    let gw = guarded(&up, SERVER).await;
    for path in [
        "/x/../admin",
        "//admin",
        "/%2e%2e/admin",
        "/%61dmin",
        "/ADMIN/../admin/users",
        "/public/..%2f..%2fadmin",
        "/admin%2Fusers",
        "/admin%5cusers",
    ] {
        let answer = raw(
            gw.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"),
        )
        .await;
        let status = status_of(&answer);
        assert!(status == 401 || status == 400, "{path}: {answer}");
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());
}

#[tokio::test]
async fn hop_by_hop_abuse_cannot_remove_what_a_plugin_adds() {
    let up = Upstream::start("u").await;
    let gw = guarded(&up, SERVER).await;
    let r = gw
        .get_with(
            "/admin/x",
            &[
                ("x-api-key", "k1"),
                ("connection", "x-consumer, x-api-key"),
                ("x-consumer", "mallory"),
                ("x_consumer", "mallory"),
            ],
        )
        .await;
    // `x-api-key` named in Connection is hop-by-hop: key-auth never sees it.
    assert_eq!(r.status, 401);
    let r = gw
        .get_with(
            "/admin/x",
            &[
                ("x-api-key", "k1"),
                ("connection", "close, X-Consumer"),
                ("x_consumer", "mallory"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(
        seen.header_all("x-consumer"),
        ["alice"],
        "the plugin's header survives"
    );
    assert_eq!(
        seen.header("x_consumer"),
        None,
        "underscore names are dropped"
    );
    assert_eq!(seen.header("connection"), None);
}

#[tokio::test]
async fn header_and_uri_limits_answer_431_and_414() {
    let up = Upstream::start("u").await;
    let gw = guarded(
        &up,
        &format!("{SERVER}max_header_bytes = 8192\nmax_headers = 20\nmax_uri_bytes = 1024\n"),
    )
    .await;
    let big = "a".repeat(9000);
    let answer = raw(
        gw.addr,
        &format!("GET / HTTP/1.1\r\nHost: gw\r\nX-Big: {big}\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&answer), 431, "{answer}");
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw(
        gw.addr,
        &format!("GET / HTTP/1.1\r\nHost: gw\r\n{many}\r\n"),
    )
    .await;
    assert_eq!(status_of(&answer), 431, "{answer}");
    let long = "b".repeat(2000);
    let answer = raw(
        gw.addr,
        &format!("GET /{long} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&answer), 414, "{answer}");
    assert!(up.seen().is_empty());
    assert_eq!(gw.get("/ok").await.status, 200);
}

#[tokio::test]
async fn x_forwarded_for_is_kept_only_from_trusted_proxies() {
    let up = Upstream::start("u").await;
    let trusting = guarded(
        &up,
        &format!("{SERVER}trusted_proxies = [\"127.0.0.0/8\"]\n"),
    )
    .await;
    trusting
        .get_with(
            "/",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await;
    assert_eq!(
        up.last().header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(up.last().header("x-forwarded-proto"), Some("https"));

    let other = guarded(
        &up,
        &format!("{SERVER}trusted_proxies = [\"10.0.0.0/8\"]\n"),
    )
    .await;
    other
        .get_with(
            "/",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await;
    assert_eq!(up.last().header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(up.last().header("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn an_early_answer_with_an_unread_body_closes_the_connection() {
    let up = Upstream::start("u").await;
    let gw = guarded(&up, SERVER).await;
    // The body is a request of its own: it must never be read as the next request.
    let inner = "GET /admin/smuggled HTTP/1.1\r\nHost: gw\r\nx-api-key: k1\r\n\r\n";
    let request = format!(
        "POST /admin/x HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    );
    let answer = raw(gw.addr, &request).await;
    assert_eq!(status_of(&answer), 401, "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    // A body announced but not sent: answered and closed, not left waiting.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /admin/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\npartial")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the connection is closed after the early answer")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&out), 401, "{out}");
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
    assert!(up.seen().is_empty(), "{:?}", up.seen());
}

#[tokio::test]
async fn slowloris_connections_are_closed_while_normal_traffic_flows() {
    let up = Upstream::start("u").await;
    let gw = guarded(&up, &format!("{SERVER}header_read_timeout = \"500ms\"\n")).await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    // Trickle a header line now and then, like slowloris does.
    let started = std::time::Instant::now();
    for _ in 0..5 {
        assert_eq!(gw.get("/normal").await.status, 200);
        for s in &mut slow {
            let _ = s.write_all(b"X-a: b\r\n").await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for mut s in slow {
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
        assert!(
            closed.is_ok(),
            "a slowloris connection was still open after {:?}",
            started.elapsed()
        );
    }
    assert!(up.seen().iter().all(|s| s.uri == "/normal"));
}

#[tokio::test]
async fn a_stalled_request_body_gets_408() {
    let up = Upstream::start("u").await;
    let gw = guarded(&up, &format!("{SERVER}body_read_timeout = \"300ms\"\n")).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nonly-this")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("answered and closed")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&out), 408, "{out}");
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let up = Upstream::start("u").await;
    let gw = guarded(&up, &format!("{SERVER}idle_timeout = \"300ms\"\n")).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the idle connection is closed")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_slot() {
    let up = Upstream::start("u").await;
    let gw = guarded(&up, &format!("{SERVER}max_connections = 2\n")).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /held HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        held.push(s);
    }
    assert_eq!(gw.gateway.open_connections(), 2);
    let url = gw.url("/third");
    let third = tokio::spawn(async move { crate::support::get_url(&url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served over the cap"
    );
    drop(held.pop());
    let r = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let up = Upstream::start("u").await;
    let gw = guarded(
        &up,
        &format!("{SERVER}shutdown_timeout = \"10s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .await;
    let readyz = gw.admin_url("/readyz");
    assert_eq!(crate::support::get_url(&readyz).await.status, 200);
    let url = gw.url("/slow/h1");
    let h1 = tokio::spawn(async move { send(Method::GET, &url, &[], Bytes::new()).await });
    let url = gw.url("/slow/h2");
    let h2 = tokio::spawn(async move { send_h2(Method::GET, &url, &[], Bytes::new()).await });
    let addr = gw.addr;
    eventually(
        Duration::from_secs(5),
        "both requests in flight",
        || async { gw.gateway.open_connections() == 2 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(gw.gateway.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections while draining"
    );
    let r = crate::support::get_url(&readyz).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (503, "draining\n"),
        "load balancers are told"
    );
    assert_eq!(h1.await.unwrap().status, 200);
    assert_eq!(h2.await.unwrap().status, 200);
    assert_eq!(
        stopping.await.unwrap(),
        0,
        "nothing was cut at the deadline"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_plugins_see_the_forwarded_client() {
    let up = Upstream::start("u").await;
    let manifest = |trusted: &str| {
        format!(
            r#"{SERVER}trusted_proxies = ["{trusted}"]

[plugins.headers]
path = "{}"

[[routes]]
id = "r"
prefix = "/"
upstream = "{}"
[[routes.plugins]]
name = "headers"
config = {{ request = {{ set = {{ "x-client" = "${{client_ip}}" }} }} }}
"#,
            plugin("headers"),
            up.url()
        )
    };
    // The test client (127.0.0.1) is the trusted proxy; 198.51.100.7 is a forgery it passed on.
    let behind = TestGateway::start(&manifest("127.0.0.0/8")).await;
    behind
        .get_with("/", &[("x-forwarded-for", "198.51.100.7, 203.0.113.9")])
        .await;
    assert_eq!(up.last().header("x-client"), Some("203.0.113.9"));
    assert_eq!(
        up.last().header("x-forwarded-for"),
        Some("198.51.100.7, 203.0.113.9, 127.0.0.1")
    );

    let direct = TestGateway::start(&manifest("10.0.0.0/8")).await;
    direct
        .get_with("/", &[("x-forwarded-for", "203.0.113.9")])
        .await;
    assert_eq!(up.last().header("x-client"), Some("127.0.0.1"));
}
