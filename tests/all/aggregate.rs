//! aggregate through a real gateway, fanning out to real (scripted) JSON
//! services on 127.0.0.1.

use serde_json::json;

use crate::support::{Script, Scripted, TestGateway, logs, plugin};

/// `users` and `orders` JSON services.
async fn services() -> (Scripted, Scripted) {
    let users =
        Scripted::start(|s| Script::json(200, &json!({"path": s.uri, "name": "alice"}))).await;
    let orders = Scripted::start(|_| Script::json(200, &json!([{"id": 1}, {"id": 2}]))).await;
    (users, orders)
}

/// `orders` answering with `script`; `users` as in [`services`].
async fn with_orders(script: Script) -> (Scripted, Scripted) {
    let (users, _) = services().await;
    let orders = Scripted::start(move |_| script.clone()).await;
    (users, orders)
}

fn manifest(
    users: &Scripted,
    orders: &Scripted,
    id: &str,
    on_partial: &str,
    extra: &str,
) -> String {
    format!(
        r#"[upstreams.users]
targets = ["{users}"]
[upstreams.orders]
targets = ["{orders}"]
retries = 0
[upstreams.secret]
targets = ["{orders}"]

[plugins.aggregate]
path = "{plugin}"
grants = {{ http = ["users", "orders"] }}

[[routes]]
id = "{id}"
prefix = "/"
upstream = "builtin:echo"
[[routes.plugins]]
name = "aggregate"
[routes.plugins.config]
on_partial = "{on_partial}"
calls = [
  {{ name = "user", upstream = "users", path = "/users/{{segment.1}}", forward_headers = ["authorization"] }},
  {{ name = "orders", upstream = "orders", path = "/orders?user={{segment.1}}&{{query}}", timeout = "200ms" }},
  {extra}
]
"#,
        users = users.url(),
        orders = orders.url(),
        plugin = plugin("aggregate"),
    )
}

async fn gateway(users: &Scripted, orders: &Scripted, id: &str, on_partial: &str) -> TestGateway {
    TestGateway::start(&manifest(users, orders, id, on_partial, "")).await
}

#[tokio::test]
async fn one_request_fans_out_and_answers_one_merged_document() {
    let (users, orders) = services().await;
    let gw = gateway(&users, &orders, "agg-ok", "error").await;
    let r = gw
        .get_with("/me/42?limit=5", &[("authorization", "Bearer t")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"user": {"path": "/users/42", "name": "alice"}, "orders": [{"id": 1}, {"id": 2}]})
    );
    let u = &users.seen()[0];
    assert_eq!(u.header("authorization"), Some("Bearer t"));
    let o = &orders.seen()[0];
    assert_eq!(o.uri, "/orders?user=42&limit=5");
    assert_eq!(
        o.header("authorization"),
        None,
        "only forward_headers are copied"
    );

    // No query: the template's trailing `&` goes.
    gw.get("/me/7").await;
    assert_eq!(orders.seen()[1].uri, "/orders?user=7");
}

#[tokio::test]
async fn a_call_that_times_out_makes_a_502_problem_in_error_mode() {
    let (users, orders) = with_orders(Script::Hang).await;
    let gw = gateway(&users, &orders, "agg-hang", "error").await;
    let r = gw.get("/me/42").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let body = r.json();
    assert_eq!(body["status"], 502);
    assert_eq!(body["errors"], json!({"orders": "timeout"}));
    assert_eq!(users.hits(), 1, "the other call was made all the same");
}

#[tokio::test]
async fn failed_calls_are_null_with_errors_in_partial_mode() {
    for (script, reason) in [
        (Script::Hang, "timeout"),
        (Script::Reset, "unavailable"),
        (
            Script::Answer(200, "text/plain", "hello".into()),
            "not JSON",
        ),
        (Script::json(500, &json!({"oops": true})), "status 500"),
    ] {
        let (users, orders) = with_orders(script).await;
        let gw = gateway(&users, &orders, "agg-partial", "partial").await;
        let r = gw.get("/me/42").await;
        assert_eq!(r.status, 200, "{reason}: {}", r.body);
        assert_eq!(
            r.json(),
            json!({
                "user": {"path": "/users/42", "name": "alice"},
                "orders": null,
                "errors": {"orders": reason},
            }),
        );
    }
}

#[tokio::test]
async fn every_call_failing_is_a_502_even_in_partial_mode() {
    let down = Scripted::start(|_| Script::Reset).await;
    let gw = gateway(&down, &down, "agg-down", "partial").await;
    let r = gw.get("/me/42").await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.json()["errors"],
        json!({"user": "unavailable", "orders": "unavailable"})
    );
}

#[tokio::test]
async fn a_call_to_an_ungranted_upstream_fails_as_not_granted_and_is_never_sent() {
    let (users, orders) = services().await;
    let secret = r#"{ name = "secret", upstream = "secret", path = "/secret" },"#;
    let gw = TestGateway::start(&manifest(&users, &orders, "agg-grant", "partial", secret)).await;
    let r = gw.get("/me/42").await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["secret"], json!(null));
    assert_eq!(body["errors"], json!({"secret": "not granted"}));
    assert_eq!(
        orders.hits(),
        1,
        "`secret` points at the orders service: only `orders` called it"
    );
    assert!(logs().contains("`secret` is not in this plugin's grants.http"));
}

#[tokio::test]
async fn a_template_value_the_request_lacks_fails_that_call_only() {
    let (users, orders) = services().await;
    let by_header = r#"{ name = "me", upstream = "users", path = "/users/{header.x-user}" },"#;
    let gw = TestGateway::start(&manifest(&users, &orders, "agg-tpl", "partial", by_header)).await;
    let r = gw.get("/me/42").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["errors"], json!({"me": "missing header x-user"}));
    let r = gw.get_with("/me/42", &[("x-user", "../admin")]).await;
    assert_eq!(r.json()["me"]["path"], "/users/..%2Fadmin");
}

#[tokio::test]
async fn a_bad_template_is_refused_at_load_naming_the_call() {
    let (users, orders) = services().await;
    let bad = r#"{ name = "x", upstream = "users", path = "/u/{user}" },"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, manifest(&users, &orders, "agg-bad", "error", bad)).unwrap();
    let err = match weir::check(&path).await {
        Ok(_) => panic!("the manifest must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("calls[2].path:"), "{err}");
    assert!(err.contains("unknown placeholder `{user}`"), "{err}");
}
