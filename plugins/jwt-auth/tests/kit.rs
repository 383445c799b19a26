//! jwt-auth on the real Weir runtime (`weir::testkit`), with the
//! quickstart's demo token (HS256, `sub = "alice"`, expires in 2100).

use std::time::Duration;

use weir::testkit::{Harness, TestRequest, advance_clock, build_plugin};

const CONFIG: &str = r#"issuer = "weir-quickstart"
audience = "demo"
forward_token = false
keys = [{ alg = "HS256", secret = "quickstart-secret-change-me-before-production" }]
claims_to_headers = { sub = "x-user" }"#;

fn token() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/quickstart/demo.jwt"
    );
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

async fn harness(config: &str) -> Result<Harness, String> {
    Harness::new(&build_plugin(env!("CARGO_MANIFEST_DIR"))?, config).await
}

fn bearer(t: &str) -> TestRequest {
    TestRequest::get("/me").header("authorization", &format!("Bearer {t}"))
}

// The only test that moves the clock (it is process-wide).
#[tokio::test]
async fn a_valid_token_passes_with_its_claims_until_it_expires() {
    let h = harness(CONFIG).await.unwrap();
    let out = h.send(bearer(&token())).await;
    assert_eq!(out.status, 200);
    let up = out.upstream.unwrap();
    assert_eq!(up.headers["x-user"], "alice");
    assert!(
        up.headers.get("authorization").is_none(),
        "forward_token = false"
    );

    // 2100-01-01 is less than 80 years of 366 days away.
    advance_clock(Duration::from_secs(80 * 366 * 86_400));
    let out = h.send(bearer(&token())).await;
    assert_eq!(out.status, 401);
    assert!(out.upstream.is_none());
}

#[tokio::test]
async fn a_missing_or_tampered_token_gets_401_with_a_challenge() {
    let h = harness(CONFIG).await.unwrap();
    let out = h.send(TestRequest::get("/me")).await;
    assert_eq!(out.status, 401);
    assert!(
        out.header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    let mut t = token();
    t.pop();
    t.push(if t.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(h.send(bearer(&t)).await.status, 401);
}

#[tokio::test]
async fn a_key_without_a_secret_is_refused_at_load() {
    let err = harness("keys = [{ alg = \"HS256\" }]").await.err().unwrap();
    assert!(err.contains("keys[0]"), "{err}");
}
