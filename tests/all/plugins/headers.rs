use super::gateway_with;
use crate::support::Upstream;

#[tokio::test]
async fn request_and_response_headers_are_rewritten_with_placeholders() {
    let up = Upstream::start("u").await;
    let config = r#"
[routes.plugins.config.request]
remove = ["x-internal"]
rename = { "x-old" = "x-new" }
set = { "x-route" = "${route_id}", "x-client" = "${client_ip}", "x-echo" = "from ${header.x-source}" }
add = { "x-tag" = "weir" }
[routes.plugins.config.response]
remove = ["server"]
set = { "x-served-by" = "weir ${route_id}" }
"#;
    let gw = gateway_with(&up, "headers", "headers", config).await;
    let r = gw
        .get_with(
            "/h",
            &[
                ("x-internal", "secret"),
                ("x-old", "v1"),
                ("x-source", "tests"),
                ("x-tag", "client"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-internal"), None);
    assert_eq!(seen.header("x-old"), None);
    assert_eq!(seen.header("x-new"), Some("v1"));
    assert_eq!(seen.header("x-route"), Some("main"));
    assert_eq!(seen.header("x-client"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-echo"), Some("from tests"));
    assert_eq!(seen.header_all("x-tag"), ["client", "weir"]);
    assert_eq!(
        r.header("server"),
        None,
        "the origin's server header was removed"
    );
    assert_eq!(r.header("x-served-by"), Some("weir main"));
}
