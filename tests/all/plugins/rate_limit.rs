use std::time::Duration;

use super::gateway_with;
use crate::support::{Upstream, tally};

#[tokio::test]
async fn burst_is_allowed_then_429_with_headers_then_recovers_after_the_window() {
    let up = Upstream::start("u").await;
    let gw = gateway_with(
        &up,
        "rate-limit",
        "rate_limit",
        "rate = 1\nper = \"1s\"\nburst = 3\n",
    )
    .await;
    for remaining in ["2", "1", "0"] {
        let r = gw.get("/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-limit"), Some("3"));
        assert_eq!(r.header("ratelimit-remaining"), Some(remaining));
    }
    let r = gw.get("/").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_eq!(r.body, "rate limit exceeded\n");
    assert_eq!(up.seen().len(), 3);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        gw.get("/").await.status,
        200,
        "a token came back after a second"
    );
}

#[tokio::test]
async fn concurrent_requests_on_many_instances_share_one_count() {
    let up = Upstream::start("u").await;
    let gw = gateway_with(
        &up,
        "rate-limit",
        "rate_limit",
        "rate = 1\nper = \"1h\"\nburst = 5\n",
    )
    .await;
    let url = gw.url("/");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                crate::support::send(http::Method::GET, &url, &[], Default::default())
                    .await
                    .status
                    .as_u16()
                    .to_string()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let counts = tally(statuses);
    assert_eq!(counts.get("200"), Some(&5), "{counts:?}");
    assert_eq!(counts.get("429"), Some(&15), "{counts:?}");
}

#[tokio::test]
async fn keys_by_header_are_counted_separately() {
    let up = Upstream::start("u").await;
    let gw = gateway_with(
        &up,
        "rate-limit",
        "rate_limit",
        "rate = 1\nper = \"1h\"\nburst = 1\nkey = \"header:x-tenant\"\n",
    )
    .await;
    assert_eq!(gw.get_with("/", &[("x-tenant", "a")]).await.status, 200);
    assert_eq!(gw.get_with("/", &[("x-tenant", "a")]).await.status, 429);
    assert_eq!(gw.get_with("/", &[("x-tenant", "b")]).await.status, 200);
}
