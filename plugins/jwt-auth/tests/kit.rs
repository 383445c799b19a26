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
    // Static keys only: the plugin may not call out (`jwks` would need an upstream).
    Harness::with_settings(
        &build_plugin(env!("CARGO_MANIFEST_DIR"))?,
        config,
        "grants = { http = [] }",
    )
    .await
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

/// ES256 and EdDSA keys given as JWKs in the config; test keys from fixed
/// seeds (no RNG, no key files).
mod public_key_algorithms {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use ed25519_dalek::Signer as _;
    use serde_json::json;

    use super::{bearer, harness};

    fn es_key(seed: u8) -> p256::ecdsa::SigningKey {
        p256::ecdsa::SigningKey::from_bytes(&[seed; 32].into()).unwrap()
    }
    fn ed_key(seed: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
    }

    fn config() -> String {
        let point = es_key(1).verifying_key().to_encoded_point(false);
        let (x, y) = (
            B64.encode(point.x().unwrap()),
            B64.encode(point.y().unwrap()),
        );
        let ed = B64.encode(ed_key(2).verifying_key().to_bytes());
        format!(
            r#"claims_to_headers = {{ sub = "x-user" }}
keys = [
  {{ kid = "ec", alg = "ES256", jwk = {{ kty = "EC", crv = "P-256", x = "{x}", y = "{y}" }} }},
  {{ alg = "EdDSA", jwk = {{ kty = "OKP", crv = "Ed25519", x = "{ed}", kid = "ed" }} }},
]"#
        )
    }

    fn input(alg: &str, kid: &str) -> String {
        let header = json!({"alg": alg, "kid": kid});
        // Far in the future: the first test of this binary moves the
        // plugins' clock by 80 years.
        let claims = json!({"sub": "alice", "exp": 10_000_000_000u64});
        format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        )
    }

    fn es256(seed: u8, kid: &str) -> String {
        let input = input("ES256", kid);
        let sig: p256::ecdsa::Signature = es_key(seed).sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.to_bytes()))
    }

    fn eddsa(seed: u8, kid: &str) -> String {
        let input = input("EdDSA", kid);
        let sig = ed_key(seed).sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.to_bytes()))
    }

    #[tokio::test]
    async fn es256_and_eddsa_tokens_signed_by_the_configured_keys_pass() {
        let h = harness(&config()).await.unwrap();
        for token in [es256(1, "ec"), eddsa(2, "ed")] {
            let out = h.send(bearer(&token)).await;
            assert_eq!(out.status, 200, "{:?}", out.header("www-authenticate"));
            assert_eq!(out.upstream.unwrap().headers["x-user"], "alice");
        }
    }

    #[tokio::test]
    async fn es256_and_eddsa_tokens_signed_by_other_keys_get_401() {
        let h = harness(&config()).await.unwrap();
        for token in [es256(7, "ec"), eddsa(7, "ed")] {
            let out = h.send(bearer(&token)).await;
            assert_eq!(out.status, 401);
            assert!(
                out.header("www-authenticate")
                    .unwrap()
                    .contains("bad signature")
            );
        }
        // The key decides the algorithm: an EdDSA token naming the EC key.
        let out = h.send(bearer(&eddsa(2, "ec"))).await;
        assert!(
            out.header("www-authenticate")
                .unwrap()
                .contains("alg mismatch")
        );
    }

    #[tokio::test]
    async fn a_jwk_of_the_wrong_type_is_refused_at_load() {
        let ed = B64.encode(ed_key(2).verifying_key().to_bytes());
        let config = format!(
            r#"keys = [{{ alg = "ES256", jwk = {{ kty = "OKP", crv = "Ed25519", x = "{ed}" }} }}]"#
        );
        let err = harness(&config).await.err().unwrap();
        assert!(err.contains("keys[0].jwk: not a ES256 key"), "{err}");
    }
}
