//! oauth2-introspect through a real gateway, against a real identity provider
//! (a scripted origin on 127.0.0.1) and a recording upstream.

use std::time::Duration;

use serde_json::json;

use crate::support::{Script, Scripted, Seen, TestGateway, Upstream, eventually, logs, plugin};

const GRANTED: &str = r#"grants = { http = ["idp"] }"#;
const CONFIG: &str = r#"
client_id = "gateway"
client_secret = "s3cret"
timeout = "200ms"
claims = { sub = "x-user", scope = "x-scopes" }
"#;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The token in an introspection request's form body.
fn token_of(seen: &Seen) -> String {
    let body = String::from_utf8_lossy(&seen.body);
    body.split('&')
        .find_map(|p| p.strip_prefix("token="))
        .unwrap_or_default()
        .to_string()
}

/// An IdP that knows a few tokens: `good` (read write), `reader` (read),
/// `exp-SECS` (active until SECS); any other is inactive.
fn idp_answer(seen: &Seen) -> Script {
    let active = |scope: &str, exp: u64| {
        Script::json(
            200,
            &json!({"active": true, "sub": "alice", "scope": scope, "exp": exp, "client_id": "app"}),
        )
    };
    let token = token_of(seen);
    if let Some(exp) = token.strip_prefix("exp-").and_then(|e| e.parse().ok()) {
        return active("read write", exp);
    }
    match token.as_str() {
        "good" => active("read write", now() + 300),
        "reader" => active("read", now() + 300),
        _ => Script::json(200, &json!({"active": false})),
    }
}

/// One route `id` whose plugin is also named `id`: host state (the cache) is
/// per plugin name and process, so each test gets its own.
fn manifest(id: &str, idp: &str, up: &Upstream, grants: &str, config: &str) -> String {
    format!(
        r#"[upstreams.idp]
targets = ["{idp}"]

[upstreams.other]
targets = ["{idp}"]

[plugins.{id}]
path = "{plugin}"
{grants}

[[routes]]
id = "{id}"
prefix = "/"
upstream = "{up}"
[[routes.plugins]]
name = "{id}"
[routes.plugins.config]
{config}
"#,
        plugin = plugin("oauth2_introspect"),
        up = up.url(),
    )
}

async fn gateway(id: &str, idp: &Scripted, up: &Upstream, config: &str) -> TestGateway {
    TestGateway::start(&manifest(
        id,
        &idp.url(),
        up,
        GRANTED,
        &format!("upstream = \"idp\"\n{config}"),
    ))
    .await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn an_active_token_reaches_the_upstream_with_its_claims_as_headers() {
    let (idp, up) = (
        Scripted::start(idp_answer).await,
        Upstream::start("api").await,
    );
    let gw = gateway(
        "in-claims",
        &idp,
        &up,
        &format!("{CONFIG}\nstrip_token = true"),
    )
    .await;
    let r = gw
        .get_with(
            "/orders",
            &[("authorization", &bearer("good")), ("x-user", "mallory")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.last();
    assert_eq!(
        seen.header("x-user"),
        Some("alice"),
        "the claim wins over the client's header"
    );
    assert_eq!(seen.header("x-scopes"), Some("read write"));
    assert_eq!(
        seen.header("authorization"),
        None,
        "strip_token removes the token"
    );

    let asked = &idp.seen()[0];
    assert_eq!(asked.method, "POST");
    assert_eq!(asked.uri, "/introspect");
    assert_eq!(
        asked.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        String::from_utf8_lossy(&asked.body),
        "token=good&token_type_hint=access_token"
    );
    // "gateway:s3cret" in base64: RFC 7662 §2.1 client authentication.
    assert_eq!(
        asked.header("authorization"),
        Some("Basic Z2F0ZXdheTpzM2NyZXQ=")
    );
}

#[tokio::test]
async fn a_second_request_with_the_same_token_does_not_ask_the_idp_again() {
    let (idp, up) = (
        Scripted::start(idp_answer).await,
        Upstream::start("api").await,
    );
    let gw = gateway("in-cached", &idp, &up, CONFIG).await;
    for _ in 0..3 {
        let r = gw
            .get_with("/", &[("authorization", &bearer("good"))])
            .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(idp.hits(), 1, "the answer is cached");
    assert_eq!(up.seen().len(), 3);
    // Claims come from the cache as they came from the IdP.
    assert_eq!(up.last().header("x-user"), Some("alice"));
    // The token itself is kept (no strip_token).
    assert_eq!(up.last().header("authorization"), Some("Bearer good"));

    let r = gw
        .get_with("/", &[("authorization", &bearer("reader"))])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(idp.hits(), 2, "another token is asked about");
}

#[tokio::test]
async fn a_request_without_a_token_gets_401_with_a_bare_bearer_challenge() {
    let (idp, up) = (
        Scripted::start(idp_answer).await,
        Upstream::start("api").await,
    );
    let gw = gateway(
        "in-missing",
        &idp,
        &up,
        &format!("{CONFIG}\nrealm = \"api\""),
    )
    .await;
    for headers in [vec![], vec![("authorization", "Basic Zm9vOmJhcg==")]] {
        let r = gw.get_with("/", &headers).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.header("www-authenticate"), Some(r#"Bearer realm="api""#));
    }
    let r = gw.get_with("/", &[("authorization", "Bearer a b")]).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="api", error="invalid_request""#)
    );
    assert_eq!(idp.hits(), 0);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn an_inactive_token_gets_401_invalid_token_and_the_answer_is_cached() {
    let (idp, up) = (
        Scripted::start(idp_answer).await,
        Upstream::start("api").await,
    );
    let gw = gateway("in-inactive", &idp, &up, CONFIG).await;
    for _ in 0..2 {
        let r = gw
            .get_with("/", &[("authorization", &bearer("revoked"))])
            .await;
        assert_eq!(r.status, 401);
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer realm="weir", error="invalid_token""#)
        );
    }
    assert_eq!(
        idp.hits(),
        1,
        "inactive answers are cached too (negative_ttl)"
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_token_without_the_required_scopes_gets_403_insufficient_scope() {
    let (idp, up) = (
        Scripted::start(idp_answer).await,
        Upstream::start("api").await,
    );
    let gw = gateway(
        "in-scope",
        &idp,
        &up,
        &format!("{CONFIG}\nrequired_scopes = [\"read\", \"write\"]"),
    )
    .await;
    let r = gw
        .get_with("/", &[("authorization", &bearer("reader"))])
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="weir", error="insufficient_scope", scope="read write""#)
    );
    let r = gw
        .get_with("/", &[("authorization", &bearer("good"))])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn a_token_is_cached_only_until_its_exp_and_refused_after_it() {
    let (idp, up) = (
        Scripted::start(idp_answer).await,
        Upstream::start("api").await,
    );
    let gw = gateway("in-exp", &idp, &up, CONFIG).await;
    // Active for one to two seconds more, and the IdP keeps saying so after.
    let auth = bearer(&format!("exp-{}", now() + 2));
    let r = gw.get_with("/", &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(idp.hits(), 1);
    eventually(Duration::from_secs(10), "the token expires", || async {
        gw.get_with("/", &[("authorization", &auth)]).await.status == 401
    })
    .await;
    assert!(
        idp.hits() >= 2,
        "the IdP was asked again once the cached answer expired"
    );
}

/// The IdP cannot answer: the client gets the plugin's 503 (fail closed, not
/// a plugin failure), and the upstream never sees the request.
async fn idp_failure_gets_503(id: &str, script: Script) {
    let idp = Scripted::start(move |_| script.clone()).await;
    let up = Upstream::start("api").await;
    let gw = gateway(id, &idp, &up, CONFIG).await;
    let r = gw
        .get_with("/", &[("authorization", &bearer("good"))])
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "token introspection unavailable\n");
    assert!(idp.hits() >= 1);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn an_idp_that_hangs_gets_503_within_the_call_timeout() {
    idp_failure_gets_503("in-hang", Script::Hang).await;
}

#[tokio::test]
async fn an_idp_slower_than_the_call_timeout_still_gets_the_plugins_own_503() {
    // The plugin would wait 5 s, but its hook may take 300 ms: the host cuts
    // the call short enough for the plugin to answer itself, rather than be
    // cut off and fail under its failure policy.
    let idp = Scripted::start(|_| Script::Hang).await;
    let up = Upstream::start("api").await;
    let gw = TestGateway::start(&manifest(
        "in-call-timeout",
        &idp.url(),
        &up,
        &format!("{GRANTED}\ncall_timeout = \"300ms\""),
        "upstream = \"idp\"\ntimeout = \"5s\"",
    ))
    .await;
    let r = gw
        .get_with("/", &[("authorization", &bearer("good"))])
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "token introspection unavailable\n");
    let logs = logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("in-call-timeout") && l.contains("the IdP did not answer in time")),
        "the plugin saw a timeout: {logs}"
    );
}

#[tokio::test]
async fn an_idp_that_resets_the_connection_gets_503() {
    idp_failure_gets_503("in-reset", Script::Reset).await;
}

#[tokio::test]
async fn an_idp_answering_garbage_or_an_error_gets_503() {
    idp_failure_gets_503(
        "in-html",
        Script::Answer(200, "text/html", "<html>ok</html>".into()),
    )
    .await;
    idp_failure_gets_503("in-noactive", Script::json(200, &json!({"sub": "alice"}))).await;
    idp_failure_gets_503(
        "in-401",
        Script::json(401, &json!({"error": "invalid_client"})),
    )
    .await;
}

#[tokio::test]
async fn an_idp_upstream_missing_from_the_grants_gets_503_and_an_error_log() {
    let (idp, up) = (
        Scripted::start(idp_answer).await,
        Upstream::start("api").await,
    );
    // `other` exists but only `idp` is granted.
    let gw = TestGateway::start(&manifest(
        "in-ungranted",
        &idp.url(),
        &up,
        GRANTED,
        &format!("upstream = \"other\"\n{CONFIG}"),
    ))
    .await;
    let r = gw
        .get_with("/", &[("authorization", &bearer("good"))])
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(idp.hits(), 0);
    assert!(
        logs().contains("upstream `other` is not in this plugin's grants.http"),
        "{}",
        logs()
    );
}

#[tokio::test]
async fn the_plugin_without_an_http_grant_is_refused_at_load() {
    let up = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        manifest(
            "in-nogrant",
            "http://127.0.0.1:9",
            &up,
            "",
            "upstream = \"idp\"",
        ),
    )
    .unwrap();
    let err = match weir::check(&path).await {
        Ok(_) => panic!("the manifest must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("(outbound HTTP), but the manifest says nothing of what it may call"),
        "{err}"
    );
    assert!(err.contains("grants = { http = [\"idp\"] }"), "{err}");
}
