//! hello-plugin on the real Weir runtime: the compiled component, its config
//! checks and its hooks, with no gateway to run (`weir::testkit`).

use weir::testkit::{Harness, TestRequest, build_plugin};

async fn harness(config: &str) -> Result<Harness, String> {
    let wasm = build_plugin(env!("CARGO_MANIFEST_DIR"))?;
    Harness::new(&wasm, config).await
}

#[tokio::test]
async fn a_request_without_the_header_gets_400_and_never_reaches_the_upstream() {
    let h = harness(r#"required_header = "x-tenant""#).await.unwrap();
    let out = h.send(TestRequest::get("/orders")).await;
    assert_eq!(out.status, 400);
    assert_eq!(out.answered_by.as_deref(), Some("plugin"));
    assert!(out.upstream.is_none());
}

#[tokio::test]
async fn a_request_with_the_header_passes_and_its_response_is_tagged() {
    let h = harness("required_header = \"x-tenant\"\ntag = \"checked\"")
        .await
        .unwrap();
    let out = h
        .send(TestRequest::get("/orders").header("x-tenant", "acme"))
        .await;
    assert_eq!(out.status, 200);
    assert_eq!(out.header("x-tag"), Some("checked"));
    assert_eq!(out.upstream.unwrap().headers["x-tenant"], "acme");
}

#[tokio::test]
async fn an_empty_header_name_is_refused_at_load() {
    let err = harness(r#"required_header = """#).await.err().unwrap();
    assert!(err.contains("required_header: must not be empty"), "{err}");
}
