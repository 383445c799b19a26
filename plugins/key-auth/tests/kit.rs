//! key-auth on the real Weir runtime (`weir::testkit`): the compiled
//! component, its config checks and its hooks, with no gateway to run.

use weir::testkit::{Harness, TestRequest, build_plugin};

const KEYS: &str =
    r#"keys = [{ key = "k-alice", consumer = "alice" }, { key = "k-bob", consumer = "bob" }]"#;

async fn harness(config: &str) -> Result<Harness, String> {
    let wasm = build_plugin(env!("CARGO_MANIFEST_DIR"))?;
    Harness::new(&wasm, config).await
}

#[tokio::test]
async fn a_request_without_a_key_gets_401_and_never_reaches_the_upstream() {
    let h = harness(KEYS).await.unwrap();
    let out = h.send(TestRequest::get("/orders")).await;
    assert_eq!(out.status, 401);
    assert_eq!(out.answered_by.as_deref(), Some("plugin"));
    assert_eq!(
        out.header("www-authenticate"),
        Some(r#"ApiKey realm="weir""#)
    );
    assert!(out.upstream.is_none());

    let out = h
        .send(TestRequest::get("/orders").header("x-api-key", "nope"))
        .await;
    assert_eq!(out.status, 401);
}

#[tokio::test]
async fn a_known_key_reaches_the_upstream_as_its_consumer_without_the_key() {
    let h = harness(KEYS).await.unwrap();
    let out = h
        .send(TestRequest::get("/orders?page=2").header("x-api-key", "k-bob"))
        .await;
    assert_eq!(out.status, 200);
    assert_eq!(out.answered_by, None);
    assert_eq!(out.var("consumer"), Some("bob"));
    let up = out.upstream.expect("the upstream is called");
    assert_eq!(up.target, "/orders?page=2");
    assert_eq!(up.headers["x-consumer"], "bob");
    assert!(
        up.headers.get("x-api-key").is_none(),
        "the key is not forwarded"
    );
}

#[tokio::test]
async fn the_key_can_come_from_the_query_and_is_removed_from_it() {
    let h = harness(&format!("query = \"api_key\"\n{KEYS}"))
        .await
        .unwrap();
    let out = h
        .send(TestRequest::get("/orders?api_key=k-alice&page=2"))
        .await;
    assert_eq!(out.status, 200);
    let up = out.upstream.unwrap();
    assert_eq!(up.headers["x-consumer"], "alice");
    assert!(!up.target.contains("k-alice"), "{}", up.target);
}

#[tokio::test]
async fn a_bad_config_is_refused_at_load_naming_the_field() {
    let err = harness("keys = []").await.err().unwrap();
    assert!(err.contains("keys: at least one key is required"), "{err}");
    let err = harness(r#"keys = [{ key = "k", consumer = "" }]"#)
        .await
        .err()
        .unwrap();
    assert!(err.contains("keys[0].consumer: must not be empty"), "{err}");
    let err = harness(&format!("{KEYS}\nheadr = \"x\""))
        .await
        .err()
        .unwrap();
    assert!(err.contains("unknown field `headr`"), "{err}");
}
