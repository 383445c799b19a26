//! Regressions for holes found by attacking the gateway from outside: host
//! confusion, response splitting by a plugin, framing and hop-by-hop headers
//! set by plugins, interim statuses, raw backslashes, slow uploads, silent
//! connections and `CONNECT`. Each case asserts what the client saw and what
//! the recording upstream received.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{TestGateway, Upstream, logs, plugin, raw, send};

fn status_of(answer: &str) -> u16 {
    answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

/// `admin.example.com` behind key-auth, `open.example.com` open, both to `up`.
async fn two_hosts(up: &Upstream) -> TestGateway {
    TestGateway::start(&format!(
        r#"[plugins.key-auth]
path = "{}"

[[routes]]
id = "admin"
host = "admin.example.com"
prefix = "/"
upstream = "{url}"
[[routes.plugins]]
name = "key-auth"
config = {{ keys = [{{ key = "k1", consumer = "alice" }}] }}

[[routes]]
id = "open"
host = "open.example.com"
prefix = "/"
upstream = "{url}"
"#,
        plugin("key_auth"),
        url = up.url()
    ))
    .await
}

#[tokio::test]
async fn a_request_target_authority_that_disagrees_with_host_gets_400() {
    let up = Upstream::start("u").await;
    let gw = two_hosts(&up).await;
    for (what, request) in [
        (
            "absolute-form",
            "GET http://open.example.com/secret HTTP/1.1\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n",
        ),
        (
            "two Host headers",
            "GET /secret HTTP/1.1\r\nHost: open.example.com\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let answer = raw(gw.addr, request).await;
        assert_eq!(status_of(&answer), 400, "{what}: {answer}");
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());

    // An absolute-form target that agrees with Host is routed by it, and the upstream sees it.
    let answer = raw(
        gw.addr,
        "GET http://OPEN.example.com/ok HTTP/1.1\r\nHost: open.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(up.last().header("host"), Some("OPEN.example.com"));
    assert_eq!(up.last().header("x-consumer"), None);
    let answer = raw(
        gw.addr,
        "GET http://admin.example.com/secret HTTP/1.1\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 401, "{answer}");
}

#[tokio::test]
async fn an_http2_authority_that_disagrees_with_host_gets_400() {
    let up = Upstream::start("u").await;
    let gw = two_hosts(&up).await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut status = |authority: &'static str, host: &'static str| {
        let req = http::Request::builder()
            .uri(format!("http://{authority}/secret"))
            .header("host", host)
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        async move { resp.await.unwrap().status().as_u16() }
    };
    assert_eq!(status("open.example.com", "admin.example.com").await, 400);
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    assert_eq!(status("open.example.com", "open.example.com").await, 200);
    assert_eq!(up.last().header("host"), Some("open.example.com"));
}

/// A route whose only plugin is the hostile test plugin in `mode`, then an
/// echo route at `/echo` to see what a next request gets.
async fn hostile(mode: &str, up: &Upstream) -> TestGateway {
    TestGateway::start(&format!(
        r#"[plugins.hostile]
path = "{}"

[[routes]]
id = "hostile"
prefix = "/h"
upstream = "{url}"
[[routes.plugins]]
name = "hostile"
config = {{ mode = "{mode}" }}

[[routes]]
id = "echo"
prefix = "/echo"
upstream = "builtin:echo"
"#,
        plugin("test_hostile"),
        url = up.url()
    ))
    .await
}

#[tokio::test]
async fn a_plugin_reply_cannot_split_the_response() {
    let up = Upstream::start("u").await;
    let gw = hostile("reply-split", &up).await;
    // Pipelined: a forged second response would be taken as the answer to /echo.
    let answer = raw(
        gw.addr,
        "GET /h HTTP/1.1\r\nHost: gw\r\n\r\nGET /echo/next HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, rest) = answer.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_string)
        })
        .expect("content-length")
        .parse()
        .unwrap();
    let (body, next) = rest.split_at(length);
    assert!(
        body.ends_with("forged"),
        "the plugin's bytes are the body: {body:?}"
    );
    assert!(next.starts_with("HTTP/1.1 200"), "{next:?}");
    assert!(
        next.contains("/echo/next"),
        "the echo answers the second request: {next:?}"
    );
}

#[tokio::test]
async fn a_plugin_cannot_answer_with_an_interim_status() {
    let up = Upstream::start("u").await;
    let gw = hostile("reply-interim", &up).await;
    let answer = raw(
        gw.addr,
        "GET /h HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("upgrade: websocket"),
        "{answer}"
    );
    assert!(
        logs()
            .lines()
            .any(|l| l.contains("reply status 101 is not in 200..=599")),
        "the log says why"
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn plugins_cannot_set_framing_or_hop_by_hop_headers() {
    let up = Upstream::start("u").await;
    let gw = hostile("edit-framing", &up).await;
    let resp = gw.get("/h/x").await;
    assert_eq!(resp.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-hostile"), Some("refused 9 of 9"));
    for name in [
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "expect",
        "te",
        "keep-alive",
        "proxy-authorization",
        "trailer",
    ] {
        assert_eq!(seen.header(name), None, "{name} reached the upstream");
    }
    // On the way back: 9 headers, removing content-length, and a 1xx status.
    assert_eq!(resp.header("x-hostile-refused"), Some("11"));
    assert_eq!(resp.header("transfer-encoding"), None);
    assert_eq!(
        resp.header("content-length"),
        Some(resp.body.len().to_string().as_str())
    );
    assert!(!resp.body.is_empty());
}

#[tokio::test]
async fn a_raw_backslash_in_the_path_gets_400() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&format!(
        "[[routes]]\nid = \"all\"\nprefix = \"/\"\nupstream = \"{}\"\n",
        up.url()
    ))
    .await;
    let answer = raw(
        gw.addr,
        "GET /x\\..\\admin/users HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(answer.contains("backslash"), "{answer}");
    assert!(up.seen().is_empty(), "{:?}", up.seen());
}

#[tokio::test]
async fn connect_and_trace_get_405_unless_a_route_lists_them() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&format!(
        r#"[[routes]]
id = "trace"
prefix = "/debug"
methods = ["TRACE"]
upstream = "{url}"

[[routes]]
id = "all"
prefix = "/"
upstream = "{url}"
"#,
        url = up.url()
    ))
    .await;
    for request in [
        "CONNECT /path HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        "TRACE /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw(gw.addr, request).await;
        assert_eq!(status_of(&answer), 405, "{request}: {answer}");
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    let resp = send(Method::TRACE, &gw.url("/debug/x"), &[], Bytes::new()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(up.last().method, Method::TRACE);
}

#[tokio::test]
async fn silent_connections_are_cut_at_the_header_timeout() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"60s\"\n\n[[routes]]\nid = \"all\"\nprefix = \"/\"\nupstream = \"{}\"\n",
        up.url()
    ))
    .await;
    for first_bytes in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(first_bytes).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .unwrap_or_else(|_| panic!("still open after 5 s with {first_bytes:?}"))
            .ok();
    }
    assert_eq!(gw.get("/after").await.status, 200);
}

/// Sends a request head and the first `now` bytes of a `total`-byte body,
/// then the rest in 1 KiB steps every `step`, in the background.
fn slow_upload(
    addr: std::net::SocketAddr,
    path: &'static str,
    total: usize,
    now: usize,
    step: Duration,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&vec![b'x'; now]).await.unwrap();
        let mut sent = now;
        let mut out = Vec::new();
        while sent < total {
            let read = tokio::time::timeout(step, s.read_to_end(&mut out)).await;
            if read.is_ok() {
                return String::from_utf8_lossy(&out).into_owned();
            }
            let n = (total - sent).min(1024);
            if s.write_all(&vec![b'x'; n]).await.is_err() {
                break;
            }
            sent += n;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    })
}

#[tokio::test]
async fn slow_small_uploads_hold_no_upstream_place() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\nmax_requests = 2\n\n[[routes]]\nid = \"all\"\nprefix = \"/\"\nupstream = \"u\"\n",
        up.url()
    ))
    .await;
    // Ten clients trickling 2 KiB bodies, 1 KiB every 1.5 s: none holds a place meanwhile.
    let slow: Vec<_> = (0..10)
        .map(|_| slow_upload(gw.addr, "/upload", 2048, 10, Duration::from_millis(1500)))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        assert_eq!(
            gw.get("/benign").await.status,
            200,
            "a benign GET got a place"
        );
    }
    // Whole bodies then go upstream (those finishing together compete for the 2 places).
    let mut done = 0;
    for s in slow {
        let answer = s.await.unwrap();
        let status = status_of(&answer);
        assert!(status == 200 || status == 503, "{answer}");
        done += usize::from(status == 200);
    }
    let uploads = up
        .seen()
        .into_iter()
        .filter(|s| s.uri == "/upload")
        .collect::<Vec<_>>();
    assert_eq!(uploads.len(), done);
    assert!(done >= 2 && uploads.iter().all(|s| s.body.len() == 2048));
}

#[tokio::test]
async fn a_slow_client_is_not_counted_against_the_target() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = TestGateway::start(&format!(
        r#"[upstreams.p]
targets = ["{}", "{}"]
retries = 0
request_timeout = "300ms"
[upstreams.p.passive]
consecutive_failures = 1
ejection = "1h"

[[routes]]
id = "p"
prefix = "/"
upstream = "p"
"#,
        a.url(),
        b.url()
    ))
    .await;
    // 100 KiB: past the part read before the exchange, then 1 KiB every 100 ms.
    for _ in 0..4 {
        let answer = slow_upload(
            gw.addr,
            "/big",
            100 << 10,
            80 << 10,
            Duration::from_millis(100),
        )
        .await
        .unwrap();
        assert_eq!(status_of(&answer), 408, "{answer}");
    }
    // Neither target was ejected: both still get traffic.
    let mut who = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let resp = gw.get("/").await;
        assert_eq!(resp.status, 200);
        who.insert(resp.header("x-upstream").unwrap_or_default().to_string());
    }
    assert_eq!(who.len(), 2, "{who:?}");
}
