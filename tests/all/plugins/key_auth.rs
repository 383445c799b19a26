use super::gateway_with;
use crate::support::Upstream;

const CONFIG: &str = r#"
query = "api_key"
keys = [
  { key = "k-alice", consumer = "alice" },
  { key = "k+bob/=", consumer = "bob" },
]
"#;

#[tokio::test]
async fn missing_or_wrong_key_is_401_with_a_challenge_and_never_reaches_upstream() {
    let up = Upstream::start("u").await;
    let gw = gateway_with(&up, "key-auth", "key_auth", CONFIG).await;
    let r = gw.get("/x").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some(r#"ApiKey realm="weir""#));
    assert_eq!(r.body, "missing API key\n");
    let r = gw.get_with("/x", &[("x-api-key", "k-mallory")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body, "invalid API key\n");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn valid_header_key_passes_the_consumer_and_removes_the_key() {
    let up = Upstream::start("u").await;
    let gw = gateway_with(&up, "key-auth", "key_auth", CONFIG).await;
    let r = gw
        .get_with(
            "/x",
            &[("x-api-key", "k-alice"), ("x-consumer", "forged-admin")],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(
        seen.header_all("x-consumer"),
        ["alice"],
        "the consumer header cannot be forged"
    );
    assert_eq!(seen.header("x-api-key"), None, "the key is not forwarded");
}

#[tokio::test]
async fn valid_query_key_is_removed_from_the_query_and_others_are_kept() {
    let up = Upstream::start("u").await;
    let gw = gateway_with(&up, "key-auth", "key_auth", CONFIG).await;
    let r = gw.get("/x?z=1&api_key=k%2Bbob%2F%3D&y=2").await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/x?z=1&y=2");
    assert_eq!(seen.header("x-consumer"), Some("bob"));
    let r = gw.get("/only?api_key=k-alice").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/only");
}
