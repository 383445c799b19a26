//! headers on the real Weir runtime (`weir::testkit`).

use weir::testkit::{Harness, TestRequest, build_plugin};

async fn harness(config: &str) -> Result<Harness, String> {
    Harness::new(&build_plugin(env!("CARGO_MANIFEST_DIR"))?, config).await
}

#[tokio::test]
async fn request_and_response_headers_are_edited_with_placeholders() {
    let h = harness(
        r#"[request]
remove = ["x-internal"]
set = { "x-client" = "${client_ip}" }
[response]
remove = ["server"]
set = { "x-served-by" = "weir" }"#,
    )
    .await
    .unwrap();
    h.upstream_answers(200, &[("server", "origin/1.0")], "ok");
    let out = h
        .send(
            TestRequest::get("/api")
                .header("x-internal", "secret")
                .client("203.0.113.9:5555".parse().unwrap()),
        )
        .await;
    assert_eq!(out.status, 200);
    assert_eq!(out.header("x-served-by"), Some("weir"));
    assert_eq!(out.header("server"), None);
    let up = out.upstream.unwrap();
    assert_eq!(up.headers["x-client"], "203.0.113.9");
    assert!(up.headers.get("x-internal").is_none());
}

#[tokio::test]
async fn bad_names_and_placeholders_are_refused_at_load() {
    let err = harness("[request]\nset = { \"X-Foo\" = \"1\" }")
        .await
        .err()
        .unwrap();
    assert!(err.contains("x-foo"), "{err}");
    let err = harness("[request]\nset = { \"x-a\" = \"${nope}\" }")
        .await
        .err()
        .unwrap();
    assert!(err.contains("unknown placeholder \"${nope}\""), "{err}");
}
