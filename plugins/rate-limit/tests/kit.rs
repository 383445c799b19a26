//! rate-limit on the real Weir runtime (`weir::testkit`): buckets in the
//! host's state, plans, the draft headers, and time moved by the test.

use std::time::Duration;

use weir::testkit::{Harness, TestRequest, advance_clock, build_plugin};

async fn harness(config: &str) -> Result<Harness, String> {
    let wasm = build_plugin(env!("CARGO_MANIFEST_DIR"))?;
    Harness::new(&wasm, config).await
}

// One test moves the clock: it is process-wide, so the timing assertions live together.
#[tokio::test]
async fn a_bucket_refuses_when_empty_and_refills_with_time() {
    let h = harness("rate = 2\nper = \"1m\"").await.unwrap();
    let get = || TestRequest::get("/x");
    for left in ["1", "0"] {
        let out = h.send(get()).await;
        assert_eq!(out.status, 200);
        assert_eq!(out.header("ratelimit-remaining"), Some(left));
        assert_eq!(
            out.header("ratelimit-policy"),
            Some(r#""default";q=2;w=60"#)
        );
    }
    let out = h.send(get()).await;
    assert_eq!(out.status, 429);
    assert_eq!(out.answered_by.as_deref(), Some("plugin"));
    assert_eq!(out.header("retry-after"), Some("30"));
    assert_eq!(out.header("ratelimit"), Some(r#""default";r=0;t=30"#));
    assert!(out.upstream.is_none());

    // Another client has its own bucket.
    let other = get().client("198.51.100.7:1234".parse().unwrap());
    assert_eq!(h.send(other).await.status, 200);

    advance_clock(Duration::from_secs(30));
    let out = h.send(get()).await;
    assert_eq!(out.status, 200, "one token is back after 30 s");
    assert_eq!(h.send(get()).await.status, 429);
}

#[tokio::test]
async fn plans_pick_the_limit_by_consumer() {
    let h = harness(
        r#"key = "header:x-user"
default_plan = "free"
consumers = { carol = "pro" }
plans = { free = { rate = 1, per = "1h" }, pro = { rate = 3, per = "1h" } }
legacy_headers = false"#,
    )
    .await
    .unwrap();
    let as_user = |u: &str| TestRequest::get("/x").header("x-user", u);
    assert_eq!(h.send(as_user("dave")).await.status, 200);
    let out = h.send(as_user("dave")).await;
    assert_eq!(out.status, 429);
    assert_eq!(out.header("ratelimit-policy"), Some(r#""free";q=1;w=3600"#));
    assert_eq!(out.header("ratelimit-remaining"), None);
    for _ in 0..3 {
        let out = h.send(as_user("carol")).await;
        assert_eq!(out.status, 200);
        assert_eq!(out.header("ratelimit-policy"), Some(r#""pro";q=3;w=3600"#));
    }
    assert_eq!(h.send(as_user("carol")).await.status, 429);
}

#[tokio::test]
async fn a_bad_config_is_refused_at_load_naming_the_field() {
    let err = harness("rate = 0").await.err().unwrap();
    assert!(
        err.contains("rate: must be between 1 and 4294967295 (got 0)"),
        "{err}"
    );
    let err = harness("rate = 1\nper = \"1d\"").await.err().unwrap();
    assert!(err.contains("per: invalid duration `1d`"), "{err}");
    let err = harness("plans = { free = { rate = 1 } }")
        .await
        .err()
        .unwrap();
    assert!(err.contains("default_plan: required"), "{err}");
}
