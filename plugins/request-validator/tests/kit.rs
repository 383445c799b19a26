//! request-validator on the real Weir runtime (`weir::testkit`).

use weir::testkit::{Harness, TestRequest, build_plugin};

const SCHEMA: &str = r#"
[schema]
type = "object"
required = ["name"]
[schema.properties.name]
type = "string"
minLength = 1
[schema.properties.age]
type = "integer"
minimum = 0
"#;

async fn harness(config: &str) -> Result<Harness, String> {
    Harness::new(&build_plugin(env!("CARGO_MANIFEST_DIR"))?, config).await
}

fn json_post(body: &str) -> TestRequest {
    TestRequest::post("/users", body.to_owned()).header("content-type", "application/json")
}

#[tokio::test]
async fn a_valid_body_reaches_the_upstream_unchanged() {
    let h = harness(SCHEMA).await.unwrap();
    let body = "{ \"name\": \"ann\", \"age\": 3 }";
    let out = h.send(json_post(body)).await;
    assert_eq!(out.status, 200);
    assert_eq!(&out.upstream.unwrap().body[..], body.as_bytes());
}

#[tokio::test]
async fn an_invalid_body_gets_400_problem_json_naming_the_fields() {
    let h = harness(SCHEMA).await.unwrap();
    let out = h.send(json_post(r#"{"age": -1}"#)).await;
    assert_eq!(out.status, 400);
    assert_eq!(out.answered_by.as_deref(), Some("plugin"));
    assert_eq!(out.header("content-type"), Some("application/problem+json"));
    let doc: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(
        doc["errors"],
        serde_json::json!([
            {"field": "name", "message": "is required"},
            {"field": "age", "message": "must be at least 0"},
        ])
    );
    assert!(out.upstream.is_none());
}

#[tokio::test]
async fn other_methods_pass_and_non_json_gets_415() {
    let h = harness(SCHEMA).await.unwrap();
    assert_eq!(h.send(TestRequest::get("/users")).await.status, 200);
    let out = h
        .send(TestRequest::post("/users", "name=ann").header("content-type", "text/plain"))
        .await;
    assert_eq!(out.status, 415);
}

#[tokio::test]
async fn an_unsupported_keyword_is_refused_at_load() {
    let err = harness("schema = { type = \"string\", pattern = \"^a\" }")
        .await
        .err()
        .unwrap();
    assert!(err.contains("unknown field `pattern`"), "{err}");
}
