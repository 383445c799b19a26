//! Routing by host, path and method; the longest, most specific match wins.

use crate::support::{TestGateway, Upstream};

#[tokio::test]
async fn longest_prefix_exact_path_and_host_pick_the_route() {
    let (a, b, c, d) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
        Upstream::start("d").await,
    );
    let gw = TestGateway::start(&format!(
        r#"
[[routes]]
id = "root"
prefix = "/"
upstream = "{a}"

[[routes]]
id = "api"
prefix = "/api"
upstream = "{b}"

[[routes]]
id = "api-health"
path = "/api/health"
upstream = "{c}"

[[routes]]
id = "host"
host = "admin.example.test"
prefix = "/"
upstream = "{d}"
"#,
        a = a.url(),
        b = b.url(),
        c = c.url(),
        d = d.url()
    ))
    .await;

    for (path, want) in [
        ("/", "a"),
        ("/apis", "a"),
        ("/api", "b"),
        ("/api/users", "b"),
        ("/api/health", "c"),
        ("/api/health/x", "b"),
    ] {
        let r = gw.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.header("x-upstream"),
            Some(want),
            "{path} went to the wrong upstream"
        );
    }
    let r = gw
        .get_with("/api/users", &[("host", "Admin.Example.Test:8080")])
        .await;
    assert_eq!(
        r.header("x-upstream"),
        Some("d"),
        "an exact host beats any path on any host"
    );
    let uris: Vec<String> = b.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(
        uris,
        ["/api", "/api/users", "/api/health/x"],
        "the upstream sees each path unchanged"
    );
}

#[tokio::test]
async fn unmatched_path_is_404_and_wrong_method_is_405() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&format!(
        r#"
[[routes]]
id = "write"
path = "/submit"
methods = ["POST"]
upstream = "{}"
"#,
        up.url()
    ))
    .await;
    assert_eq!(gw.get("/nothing").await.status, 404);
    assert_eq!(gw.get("/submit").await.status, 405);
    let r = crate::support::send(http::Method::POST, &gw.url("/submit"), &[], "hi".into()).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.seen().len(), 1, "only the POST reached the upstream");
    assert_eq!(up.last().method, http::Method::POST);
    assert_eq!(&up.last().body[..], b"hi");
}

#[tokio::test]
async fn dot_segments_and_encodings_cannot_skip_the_auth_of_admin() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&format!(
        r#"
[plugins.key-auth]
path = "{key_auth}"

[[routes]]
id = "public"
prefix = "/"
upstream = "{u}"

[[routes]]
id = "admin"
prefix = "/admin"
upstream = "{u}"
[[routes.plugins]]
name = "key-auth"
config = {{ keys = [{{ key = "s3cret", consumer = "ops" }}] }}
"#,
        key_auth = crate::support::plugin("key_auth"),
        u = up.url()
    ))
    .await;

    for path in [
        "/admin",
        "/public/../admin",
        "//admin",
        "/%61dmin",
        "/%2e%2e/admin",
        "/x/%2E%2E/admin/",
        "/./admin",
    ] {
        let r = gw.get(path).await;
        assert_eq!(r.status, 401, "{path} must hit the admin route's key-auth");
    }
    assert!(
        up.seen().is_empty(),
        "no unauthenticated request reached the upstream"
    );

    let r = gw
        .get_with("/public/../admin//users/./list", &[("x-api-key", "s3cret")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().uri,
        "/admin/users/list",
        "the upstream sees the normalised path"
    );
    // An encoded slash never reaches an origin that might decode it into `/admin`.
    let before = up.seen().len();
    for path in [
        "/public%2F..%2Fadmin",
        "/admin%2fusers",
        "/public%5C..%5Cadmin",
    ] {
        let r = gw.get(path).await;
        assert_eq!(r.status, 400, "{path}");
        assert!(r.body.contains("encoded slash"), "{path}: {}", r.body);
    }
    assert_eq!(up.seen().len(), before);
}
