//! Upstream pools: weighted round robin, least-request, consistent hashing,
//! active health checks, passive ejection, retries and their budget, the
//! concurrency limit, h2c to the upstream and WebSocket pass-through.

use std::time::Duration;

use bytes::Bytes;
use http::Method;

use crate::support::{TestGateway, Upstream, eventually, logs, send, tally};

fn route(upstream: &str) -> String {
    format!("\n[[routes]]\nid = \"r\"\nprefix = \"/\"\nupstream = \"{upstream}\"\n")
}

async fn who(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> String {
    let r = gw.get_with(path, headers).await;
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    r.header("x-upstream").unwrap().to_string()
}

#[tokio::test]
async fn weighted_round_robin_spreads_by_weight() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = TestGateway::start(&format!(
        "[upstreams.w]\ntargets = [{{ url = \"{}\", weight = 3 }}, \"{}\"]\n{}",
        a.url(),
        b.url(),
        route("w")
    ))
    .await;
    let mut seq = Vec::new();
    for _ in 0..40 {
        seq.push(who(&gw, "/", &[]).await);
    }
    let counts = tally(seq.clone());
    assert_eq!(counts.get("a"), Some(&30));
    assert_eq!(counts.get("b"), Some(&10));
    // Smooth: b is spread out, never two in a row, a never more than 3 in a row.
    assert!(
        !seq.windows(2).any(|w| w[0] == "b" && w[1] == "b"),
        "{seq:?}"
    );
}

#[tokio::test]
async fn least_request_sends_more_to_the_faster_target() {
    let slow = Upstream::start_with("slow", Duration::from_millis(200)).await;
    let fast = Upstream::start("fast").await;
    let gw = TestGateway::start(&format!(
        "[upstreams.lr]\ntargets = [\"{}\", \"{}\"]\nbalance = \"least_request\"\n{}",
        slow.url(),
        fast.url(),
        route("lr")
    ))
    .await;
    let url = gw.url("/");
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..10 {
                    let r = send(Method::GET, &url, &[], Bytes::new()).await;
                    got.push(r.header("x-upstream").unwrap().to_string());
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }
    let counts = tally(all);
    let (s, f) = (counts.get("slow").copied().unwrap_or(0), counts["fast"]);
    // Round robin would split 30/30; the busy slow target gets far fewer.
    assert!(f >= 3 * s, "fast {f}, slow {s}");
}

#[tokio::test]
async fn consistent_hash_keeps_each_key_on_one_target() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let gw = TestGateway::start(&format!(
        "[upstreams.h]\ntargets = [\"{}\", \"{}\", \"{}\"]\nbalance = \"consistent_hash\"\nhash_on = \"header:x-user\"\n{}",
        ups[0].url(),
        ups[1].url(),
        ups[2].url(),
        route("h")
    ))
    .await;
    let mut used = std::collections::BTreeSet::new();
    for user in 0..20 {
        let user = format!("user-{user}");
        let first = who(&gw, "/", &[("x-user", &user)]).await;
        for _ in 0..3 {
            assert_eq!(
                who(&gw, "/", &[("x-user", &user)]).await,
                first,
                "{user} moved"
            );
        }
        used.insert(first);
    }
    assert!(used.len() >= 2, "20 keys all on {used:?}");
}

#[tokio::test]
async fn an_unhealthy_target_is_skipped_and_comes_back() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = TestGateway::start(&format!(
        r#"[upstreams.hc]
targets = ["{}", "{}"]
[upstreams.hc.health]
path = "/healthz"
interval = "50ms"
timeout = "500ms"
healthy_threshold = 2
unhealthy_threshold = 2

[admin]
listen = "127.0.0.1:0"
{}"#,
        a.url(),
        b.url(),
        route("hc")
    ))
    .await;
    a.set_healthy(false);
    let addr = a.addr.to_string();
    eventually(Duration::from_secs(5), "a taken out", || async {
        logs()
            .lines()
            .any(|l| l.contains("target unhealthy") && l.contains(&addr))
    })
    .await;
    for _ in 0..10 {
        assert_eq!(who(&gw, "/", &[]).await, "b");
    }
    let routes = crate::support::get_url(&gw.admin_url("/routes"))
        .await
        .json();
    let state = &routes[0]["target_state"];
    assert_eq!(state[0]["target"], addr.as_str());
    assert_eq!(state[0]["healthy"], false, "{state}");
    assert_eq!(state[1]["healthy"], true, "{state}");
    a.set_healthy(true);
    eventually(Duration::from_secs(5), "a back in rotation", || async {
        who(&gw, "/", &[]).await == "a"
    })
    .await;
    assert!(
        logs()
            .lines()
            .any(|l| l.contains("target healthy again") && l.contains(&addr))
    );
}

#[tokio::test]
async fn a_killed_target_gives_502_until_ejected_then_the_next_target_serves() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = TestGateway::start(&format!(
        r#"[upstreams.p]
targets = ["{}", "{}"]
retries = 0
connect_timeout = "1s"
[upstreams.p.passive]
consecutive_failures = 2
ejection = "1h"
{}"#,
        a.url(),
        b.url(),
        route("p")
    ))
    .await;
    assert_eq!(who(&gw, "/", &[]).await, "a");
    a.kill();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(gw.get("/").await.status.as_u16());
    }
    let failed = statuses.iter().filter(|s| **s == 502).count();
    assert!((1..=2).contains(&failed), "{statuses:?}");
    assert!(statuses.ends_with(&[200, 200]), "{statuses:?}");
    for _ in 0..10 {
        assert_eq!(who(&gw, "/", &[]).await, "b");
    }
    assert!(logs().contains("target ejected after consecutive failures"));
}

#[tokio::test]
async fn connect_failures_of_idempotent_requests_are_retried_within_the_budget() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    a.kill();
    let gw = TestGateway::start(&format!(
        r#"[upstreams.rt]
targets = ["{}", "{}"]
retries = 1
retry_budget = 0.0
[upstreams.rt.passive]
consecutive_failures = 0
{}"#,
        a.url(),
        b.url(),
        route("rt")
    ))
    .await;
    // A POST with a body is never replayed: the one sent to the dead target fails.
    let mut post = Vec::new();
    for _ in 0..2 {
        post.push(
            send(Method::POST, &gw.url("/"), &[], Bytes::from_static(b"x"))
                .await
                .status,
        );
    }
    assert!(post.contains(&http::StatusCode::BAD_GATEWAY), "{post:?}");
    // GETs are retried on the other target while the budget lasts (10 retries when full,
    // and a budget of 0 never refills): then the dead target's 502s show.
    let mut get = Vec::new();
    for _ in 0..30 {
        get.push(gw.get("/").await.status.as_u16());
    }
    assert!(get[..10].iter().all(|s| *s == 200), "{get:?}");
    assert!(get.contains(&502), "the budget ran out: {get:?}");
    assert_eq!(
        b.seen().iter().filter(|s| s.method == Method::GET).count(),
        get.iter().filter(|s| **s == 200).count()
    );
}

#[tokio::test]
async fn requests_over_max_requests_get_503() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&format!(
        "[upstreams.cb]\ntargets = [\"{}\"]\nmax_requests = 2\n{}",
        up.url(),
        route("cb")
    ))
    .await;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = gw.url("/slow");
            tokio::spawn(async move { send(Method::GET, &url, &[], Bytes::new()).await.status })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = gw.get("/fast").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "service unavailable\n");
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
    assert_eq!(gw.get("/fast").await.status, 200, "places are given back");
}

#[tokio::test]
async fn h2c_upstreams_get_http2() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&format!(
        "[upstreams.h2]\ntargets = [\"{}\"]\nprotocol = \"h2c\"\n{}",
        up.url(),
        route("h2")
    ))
    .await;
    assert_eq!(who(&gw, "/x", &[]).await, "u");
    assert_eq!(up.last().version, http::Version::HTTP_2);
    // gRPC over h2c needs `te: trailers` end to end; other TE values are hop-by-hop.
    who(&gw, "/grpc", &[("te", "trailers")]).await;
    assert_eq!(up.last().header("te"), Some("trailers"));
    who(&gw, "/gzip", &[("te", "gzip")]).await;
    assert_eq!(up.last().header("te"), None);
}

#[tokio::test]
async fn websocket_echo_works_through_the_gateway_after_the_chain() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let up = Upstream::start("ws").await;
    let gw = TestGateway::start(&format!(
        r#"[plugins.key-auth]
path = "{}"
[[routes]]
id = "ws"
prefix = "/"
upstream = "{}"
[[routes.plugins]]
name = "key-auth"
config = {{ keys = [{{ key = "k1", consumer = "alice" }}] }}
"#,
        crate::support::plugin("key_auth"),
        up.url()
    ))
    .await;
    // Without a key the handshake is refused by the plugin.
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr)).await;
    assert!(refused.is_err());
    assert!(up.seen().is_empty());

    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/ws", gw.addr),
    )
    .unwrap();
    req.headers_mut().insert("x-api-key", "k1".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    for text in ["hello", "second message"] {
        ws.send(Message::text(text)).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), text);
    }
    assert_eq!(up.last().header("x-consumer"), Some("alice"));
    assert_eq!(up.last().header("upgrade"), Some("websocket"));
}

#[tokio::test]
async fn upgrade_h2c_from_a_client_is_not_forwarded() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&route(&up.url())).await;
    let answer = crate::support::raw(
        gw.addr,
        "GET /x HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.last();
    assert_eq!(seen.header("upgrade"), None);
    assert_eq!(seen.header("http2-settings"), None);
    assert_eq!(seen.version, http::Version::HTTP_11);
}

#[tokio::test]
async fn a_reload_that_leaves_an_upstream_alone_keeps_its_health_state() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let manifest = |extra: &str| {
        format!(
            r#"[upstreams.keep]
targets = ["{}", "{}"]
[upstreams.keep.health]
path = "/healthz"
interval = "300ms"
unhealthy_threshold = 1
{}{extra}"#,
            a.url(),
            b.url(),
            route("keep")
        )
    };
    let gw = TestGateway::start(&manifest("")).await;
    a.set_healthy(false);
    eventually(Duration::from_secs(5), "a taken out", || async {
        who(&gw, "/", &[]).await == "b" && who(&gw, "/", &[]).await == "b"
    })
    .await;
    // An unrelated change: the upstream's pool and what its checks learned stay.
    gw.rewrite(&manifest(
        "\n[[routes]]\nid = \"other\"\nprefix = \"/other\"\nupstream = \"builtin:echo\"\n",
    ));
    gw.gateway.reload().await.unwrap();
    // A new upstream would start with both targets healthy for one interval.
    assert_eq!(gw.get("/other").await.status, 200, "the reload applied");
    for _ in 0..6 {
        assert_eq!(who(&gw, "/", &[]).await, "b");
    }
}
