use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use serde_json::{Value, json};

use super::gateway_with;
use crate::support::Upstream;

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/jwt-auth/testdata");

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hs256(claims: &Value) -> String {
    let signing_input = format!(
        "{}.{}",
        B64.encode(json!({"alg": "HS256", "typ": "JWT"}).to_string()),
        B64.encode(claims.to_string())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        B64.encode(mac.finalize().into_bytes())
    )
}

fn rs256(claims: &Value) -> String {
    let pem = std::fs::read_to_string(format!("{TESTDATA}/rs256-private.pem")).unwrap();
    let key = SigningKey::<sha2::Sha256>::new(rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap());
    let signing_input = format!(
        "{}.{}",
        B64.encode(json!({"alg": "RS256", "typ": "JWT"}).to_string()),
        B64.encode(claims.to_string())
    );
    let sig = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", B64.encode(sig.to_bytes()))
}

fn config() -> String {
    let public = std::fs::read_to_string(format!("{TESTDATA}/rs256-public.pem")).unwrap();
    format!(
        r#"
issuer = "https://issuer.test"
audience = "weir-tests"
keys = [
  {{ kid = "hs", alg = "HS256", secret = "{SECRET}" }},
  {{ kid = "rs", alg = "RS256", public_key_pem = """{public}""" }},
]
claims_to_headers = {{ sub = "x-user", role = "x-role" }}
"#
    )
}

fn claims(exp_offset: i64) -> Value {
    json!({"sub": "alice", "role": "admin", "iss": "https://issuer.test", "aud": "weir-tests", "exp": now() + exp_offset})
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn valid_hs256_and_rs256_tokens_pass_and_claims_become_headers() {
    let up = Upstream::start("u").await;
    let gw = gateway_with(&up, "jwt-auth", "jwt_auth", &config()).await;
    for token in [hs256(&claims(300)), rs256(&claims(300))] {
        let r = gw
            .get_with(
                "/me",
                &[("authorization", &bearer(&token)), ("x-user", "mallory")],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let seen = up.last();
        assert_eq!(
            seen.header_all("x-user"),
            ["alice"],
            "claim headers replace client values"
        );
        assert_eq!(seen.header("x-role"), Some("admin"));
    }
}

#[tokio::test]
async fn invalid_expired_and_foreign_tokens_are_401() {
    let up = Upstream::start("u").await;
    let gw = gateway_with(&up, "jwt-auth", "jwt_auth", &config()).await;

    let r = gw.get("/me").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some(r#"Bearer realm="weir""#));

    // Change a character inside the signature: the last one carries padding
    // bits a decoder may ignore, so changing it need not change the bytes.
    let token = hs256(&claims(300));
    let at = token.len() - 10;
    let flipped = if &token[at..=at] == "A" { "B" } else { "A" };
    let tampered = format!("{}{flipped}{}", &token[..at], &token[at + 1..]);
    let mut wrong_issuer = claims(300);
    wrong_issuer["iss"] = json!("https://evil.test");
    let mut wrong_audience = claims(300);
    wrong_audience["aud"] = json!("someone-else");
    let cases = [
        ("expired", hs256(&claims(-120))),
        ("bad signature", tampered),
        ("wrong issuer", hs256(&wrong_issuer)),
        ("wrong audience", rs256(&wrong_audience)),
        ("malformed", "not.a.jwt".to_string()),
    ];
    for (why, token) in cases {
        let r = gw
            .get_with("/me", &[("authorization", &bearer(&token))])
            .await;
        assert_eq!(r.status, 401, "{why}");
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{why}: {challenge}"
        );
    }
    // Within the clock-skew allowance an just-expired token still passes.
    let r = gw
        .get_with("/me", &[("authorization", &bearer(&hs256(&claims(-5))))])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.seen().len(),
        1,
        "only the token within leeway reached the upstream"
    );
}
