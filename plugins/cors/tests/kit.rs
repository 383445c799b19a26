//! cors on the real Weir runtime (`weir::testkit`).

use http::Method;
use weir::testkit::{Harness, TestRequest, build_plugin};

async fn harness(config: &str) -> Result<Harness, String> {
    Harness::new(&build_plugin(env!("CARGO_MANIFEST_DIR"))?, config).await
}

const CONFIG: &str = r#"allow_origins = ["https://app.example.com", "https://*.example.org"]
allow_methods = ["GET", "PUT"]
allow_headers = ["content-type", "x-request-id"]
expose_headers = ["x-total-count"]
allow_credentials = true
max_age = "1h""#;

fn preflight(origin: &str, method: &str, headers: &str) -> TestRequest {
    TestRequest::new(Method::OPTIONS, "/api/items")
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", headers)
}

#[tokio::test]
async fn an_allowed_preflight_is_answered_by_the_plugin() {
    let h = harness(CONFIG).await.unwrap();
    let out = h
        .send(preflight("https://app.example.com", "PUT", "Content-Type"))
        .await;
    assert_eq!(out.status, 204);
    assert!(
        out.upstream.is_none(),
        "the upstream never sees a preflight"
    );
    assert_eq!(
        out.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(out.header("access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(
        out.header("access-control-allow-headers"),
        Some("content-type, x-request-id")
    );
    assert_eq!(out.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(out.header("access-control-max-age"), Some("3600"));
    assert!(out.header("vary").unwrap().contains("origin"));

    let out = h
        .send(preflight("https://shop.example.org", "GET", ""))
        .await;
    assert_eq!(out.status, 204, "a subdomain of the wildcard origin");
}

#[tokio::test]
async fn a_preflight_for_another_origin_method_or_header_is_refused() {
    let h = harness(CONFIG).await.unwrap();
    for req in [
        preflight("https://evil.example.com", "GET", ""),
        preflight("https://example.org", "GET", ""),
        preflight("https://app.example.com", "DELETE", ""),
        preflight("https://app.example.com", "GET", "x-secret"),
    ] {
        let out = h.send(req).await;
        assert_eq!(out.status, 403);
        assert_eq!(out.header("access-control-allow-origin"), None);
    }
}

#[tokio::test]
async fn responses_to_allowed_origins_carry_the_cors_headers() {
    let h = harness(CONFIG).await.unwrap();
    h.upstream_answers(200, &[("x-total-count", "3")], "[]");
    let out = h
        .send(TestRequest::get("/api/items").header("origin", "https://app.example.com"))
        .await;
    assert_eq!(out.status, 200);
    assert_eq!(
        out.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        out.header("access-control-expose-headers"),
        Some("x-total-count")
    );
    assert_eq!(out.header("vary"), Some("origin"));

    let out = h
        .send(TestRequest::get("/api/items").header("origin", "https://evil.example.com"))
        .await;
    assert_eq!(
        out.status, 200,
        "the browser, not the gateway, withholds the answer"
    );
    assert_eq!(out.header("access-control-allow-origin"), None);

    let out = h.send(TestRequest::get("/api/items")).await;
    assert_eq!(
        out.header("vary"),
        None,
        "same-origin requests are untouched"
    );
}

#[tokio::test]
async fn any_origin_answers_star_and_refuses_credentials_at_load() {
    let h = harness("allow_origins = [\"*\"]").await.unwrap();
    let out = h
        .send(TestRequest::get("/").header("origin", "https://anyone.test"))
        .await;
    assert_eq!(out.header("access-control-allow-origin"), Some("*"));
    let err = harness("allow_origins = [\"*\"]\nallow_credentials = true")
        .await
        .err()
        .unwrap();
    assert!(
        err.contains("allow_credentials: not with the \"*\" origin"),
        "{err}"
    );
    let err = harness("allow_origins = [\"app.example.com\"]")
        .await
        .err()
        .unwrap();
    assert!(
        err.contains("allow_origins[0]: \"app.example.com\" is not an origin"),
        "{err}"
    );
}
