//! basic-auth on the real Weir runtime (`weir::testkit`), with bcrypt and
//! argon2 hashes made here at low cost.

use base64::Engine;
use weir::testkit::{Harness, TestRequest, build_plugin};

/// argon2id of `password`, with cheap parameters (m=1 MiB, t=1) and a fixed salt.
fn argon2id(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(1024, 1, 1, None).unwrap();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap();
    a.hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

fn basic(user: &str, password: &str) -> TestRequest {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    TestRequest::get("/private").header("authorization", &format!("Basic {b64}"))
}

async fn harness() -> Harness {
    let alice = bcrypt::hash("correct horse", 4).unwrap();
    let bob = argon2id("hunter2");
    let config = format!(
        "users = [{{ name = \"alice\", hash = \"{alice}\" }}, {{ name = \"bob\", hash = \"{bob}\" }}]\nrealm = \"staff\""
    );
    Harness::new(&build_plugin(env!("CARGO_MANIFEST_DIR")).unwrap(), &config)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_right_password_passes_as_the_user_without_the_credentials() {
    let h = harness().await;
    for (user, password) in [("alice", "correct horse"), ("bob", "hunter2")] {
        for _ in 0..2 {
            // The second time comes from the instance's cache of verified passwords.
            let out = h.send(basic(user, password)).await;
            assert_eq!(out.status, 200, "{user}");
            assert_eq!(out.var("consumer"), Some(user));
            let up = out.upstream.unwrap();
            assert_eq!(up.headers["x-consumer"], user);
            assert!(up.headers.get("authorization").is_none());
        }
    }
}

#[tokio::test]
async fn a_wrong_password_an_unknown_user_or_no_credentials_get_401() {
    let h = harness().await;
    for req in [
        basic("alice", "wrong"),
        basic("bob", "correct horse"),
        basic("mallory", "hunter2"),
        TestRequest::get("/private"),
        TestRequest::get("/private").header("authorization", "Basic not-base64"),
    ] {
        let out = h.send(req).await;
        assert_eq!(out.status, 401);
        assert_eq!(
            out.header("www-authenticate"),
            Some(r#"Basic realm="staff", charset="UTF-8""#)
        );
        assert!(out.upstream.is_none());
    }
    // A cached good password does not let a wrong one through.
    assert_eq!(h.send(basic("alice", "correct horse")).await.status, 200);
    assert_eq!(h.send(basic("alice", "correct horsE")).await.status, 401);
}

#[tokio::test]
async fn a_password_in_clear_is_refused_at_load() {
    let wasm = build_plugin(env!("CARGO_MANIFEST_DIR")).unwrap();
    let err = Harness::new(
        &wasm,
        r#"users = [{ name = "alice", hash = "correct horse" }]"#,
    )
    .await
    .err()
    .unwrap();
    assert!(
        err.contains("users[0].hash: not a bcrypt or argon2 hash; never write passwords in clear"),
        "{err}"
    );
}
