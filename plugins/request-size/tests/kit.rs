//! request-size on the real Weir runtime (`weir::testkit`).

use weir::testkit::{Harness, TestRequest, build_plugin};

async fn harness(config: &str) -> Result<Harness, String> {
    Harness::new(&build_plugin(env!("CARGO_MANIFEST_DIR"))?, config).await
}

#[tokio::test]
async fn a_declared_body_over_max_body_gets_413_before_the_upstream() {
    let h = harness("max_body = \"1KiB\"").await.unwrap();
    let out = h.send(TestRequest::post("/upload", vec![b'a'; 1024])).await;
    assert_eq!(out.status, 200);
    assert_eq!(out.upstream.unwrap().body.len(), 1024);
    let out = h.send(TestRequest::post("/upload", vec![b'a'; 1025])).await;
    assert_eq!(out.status, 413);
    assert!(out.upstream.is_none());
}

#[tokio::test]
async fn header_lists_and_targets_over_their_limits_are_refused() {
    // Counted as the upstream would get the request: with the gateway's
    // X-Forwarded-*, X-Request-Id and traceparent (6 fields, about 200 bytes).
    let h = harness("max_headers = 12\nmax_header_bytes = \"1KiB\"\nmax_url = \"32B\"")
        .await
        .unwrap();
    let status = async |req: TestRequest| h.send(req).await.status;
    assert_eq!(status(TestRequest::get("/short")).await, 200);
    let long = format!("/{}", "x".repeat(40));
    assert_eq!(status(TestRequest::get(&long)).await, 414);
    assert_eq!(
        status(TestRequest::get("/q?a=1234567890123456789012345678901")).await,
        414
    );
    let many = (0..12).fold(TestRequest::get("/"), |r, i| {
        r.header(&format!("x-{i}"), "v")
    });
    assert_eq!(status(many).await, 431);
    let big = TestRequest::get("/").header("x-big", &"v".repeat(1000));
    assert_eq!(status(big).await, 431);
}

#[tokio::test]
async fn a_config_without_limits_or_with_a_bad_size_is_refused_at_load() {
    let err = harness("").await.err().unwrap();
    assert!(err.contains("give at least one of max_body"), "{err}");
    let err = harness("max_body = \"1MB\"").await.err().unwrap();
    assert!(err.contains("max_body: invalid size `1MB`"), "{err}");
}
