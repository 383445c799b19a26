//! json-transform on the real Weir runtime (`weir::testkit`): the compiled
//! component, its config checks and its hooks, with no gateway to run.

use weir::testkit::{Harness, TestRequest, build_plugin};

async fn harness(config: &str) -> Result<Harness, String> {
    Harness::new(&build_plugin(env!("CARGO_MANIFEST_DIR"))?, config).await
}

fn json_post(body: &str) -> TestRequest {
    TestRequest::post("/orders", body.to_owned()).header("content-type", "application/json")
}

#[tokio::test]
async fn a_request_body_reaches_the_upstream_edited() {
    let h =
        harness(r#"request = { remove = ["password"], set = [{ path = "via", value = "gw" }] }"#)
            .await
            .unwrap();
    let out = h.send(json_post(r#"{"user":"ann","password":"p"}"#)).await;
    assert_eq!(out.status, 200);
    let up = out.upstream.unwrap();
    assert_eq!(&up.body[..], br#"{"user":"ann","via":"gw"}"#);
}

#[tokio::test]
async fn a_response_body_reaches_the_client_redacted() {
    let h = harness(r#"response = { redact = ["cards[*].number"] }"#)
        .await
        .unwrap();
    h.upstream_answers(
        200,
        &[("content-type", "application/json"), ("etag", "\"v1\"")],
        r#"{"cards":[{"number":"4111","exp":"12/30"}]}"#,
    );
    let out = h.send(TestRequest::get("/cards")).await;
    assert_eq!(out.status, 200);
    assert_eq!(
        &out.body[..],
        br#"{"cards":[{"number":"***","exp":"12/30"}]}"#
    );
    assert_eq!(out.header("etag"), None);
}

#[tokio::test]
async fn non_json_passes_or_is_refused_as_configured() {
    let pass = harness(r#"request = { remove = ["a"] }"#).await.unwrap();
    let out = pass
        .send(TestRequest::post("/x", "a=1").header("content-type", "text/plain"))
        .await;
    assert_eq!(out.status, 200);
    assert_eq!(&out.upstream.unwrap().body[..], b"a=1");

    let refuse = harness("non_json = \"refuse\"\nrequest = { remove = [\"a\"] }")
        .await
        .unwrap();
    let out = refuse.send(json_post("{\"a\":")).await;
    assert_eq!(out.status, 415);
    assert_eq!(out.header("content-type"), Some("application/problem+json"));
    assert!(out.upstream.is_none());
}

#[tokio::test]
async fn a_bad_path_is_refused_at_load_naming_the_field() {
    let err = harness(r#"response = { redact = ["ok", "items[x]"] }"#)
        .await
        .err()
        .unwrap();
    assert!(err.contains("response.redact[1]: `items[x]`"), "{err}");
}

#[tokio::test]
async fn a_response_body_in_an_encoding_the_gateway_cannot_decode_never_goes_out_under_refuse() {
    let h = harness("non_json = \"refuse\"\nresponse = { redact = [\"ssn\"] }")
        .await
        .unwrap();
    h.upstream_answers(
        200,
        &[
            ("content-type", "application/json"),
            ("content-encoding", "br"),
        ],
        "\u{1b}secret",
    );
    let out = h.send(TestRequest::get("/people")).await;
    assert_eq!(out.status, 502, "refused with a problem document");
    assert_eq!(out.header("content-type"), Some("application/problem+json"));
    assert_eq!(out.header("content-encoding"), None);
    assert!(!String::from_utf8_lossy(&out.body).contains("secret"));

    let pass = harness("response = { redact = [\"ssn\"] }").await.unwrap();
    pass.upstream_answers(200, &[("content-encoding", "br")], "\u{1b}x");
    assert_eq!(pass.send(TestRequest::get("/people")).await.status, 200);
}
