//! Body plugins through the gateway: `json-transform` and
//! `request-validator` on real origins, what the upstream received (bytes),
//! what the client saw, gzip bodies, the `max_body_bytes` caps (413/502,
//! counted as the plugin's `body_limit` failures), and a route without body
//! plugins streaming as before.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

use crate::support::{Seen, TestGateway, Upstream, failures, plugin, send};

/// An origin that records each request and answers every one with the same
/// status, headers and body (bytes as given: a gzip body is sent as is).
struct Origin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Origin {
    async fn start(headers: &[(&'static str, &'static str)], body: impl Into<Bytes>) -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (log, headers, body) = (seen.clone(), headers.to_vec(), body.into());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, headers, body) = (log.clone(), headers.clone(), body.clone());
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (log, headers, body) = (log.clone(), headers.clone(), body.clone());
                    async move {
                        let (parts, incoming) = req.into_parts();
                        let received = incoming.collect().await.unwrap().to_bytes();
                        log.lock().unwrap().push(Seen {
                            method: parts.method,
                            uri: parts.uri.to_string(),
                            version: parts.version,
                            headers: parts.headers,
                            body: received,
                        });
                        let mut resp = Response::builder();
                        for (k, v) in headers {
                            resp = resp.header(k, v);
                        }
                        Ok::<_, Infallible>(resp.body(Full::new(body)).unwrap())
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin { addr, seen }
    }

    /// An origin answering `body` as `application/json`.
    async fn json(body: &'static str) -> Origin {
        Origin::start(&[("content-type", "application/json")], body).await
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the origin received no request")
    }
}

fn gzip(data: &[u8]) -> Bytes {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    Bytes::from(enc.finish().unwrap())
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// A manifest with `[plugins.NAME]` for both body plugins (plus `settings`
/// lines under each) and one route `id` on `upstream` with `plugin` and its
/// inline `config`.
fn manifest(settings: &str, routes: &[(&str, &str, &str, &str)]) -> String {
    let mut m = format!(
        "[plugins.json-transform]\npath = {jt:?}\n{settings}\n\n[plugins.request-validator]\npath = {rv:?}\n{settings}\n",
        jt = plugin("json_transform"),
        rv = plugin("request_validator"),
    );
    for (id, upstream, name, config) in routes {
        m.push_str(&format!(
            "\n[[routes]]\nid = \"{id}\"\nprefix = \"/{id}\"\nupstream = \"{upstream}\"\n"
        ));
        if !name.is_empty() {
            m.push_str(&format!(
                "[[routes.plugins]]\nname = \"{name}\"\nconfig = {config}\n"
            ));
        }
    }
    m
}

const JSON: (&str, &str) = ("content-type", "application/json");

const TRANSFORM_REQUEST: &str = r#"{ request = { remove = ["user.password"], rename = [{ from = "user.name", to = "user.full_name" }], set = [{ path = "meta.via", value = "weir" }], redact = ["cards[*].number"] } }"#;

#[tokio::test]
async fn json_transform_edits_the_request_body_the_upstream_receives() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&manifest(
        "",
        &[
            ("t", &up.url(), "json-transform", TRANSFORM_REQUEST),
            (
                "r",
                &up.url(),
                "json-transform",
                r#"{ request = { remove = ["a"] } }"#,
            ),
        ],
    ))
    .await;
    let body = r#"{"user": {"name": "Ann", "password": "hunter2", "age": 30}, "cards": [{"number": "4111", "exp": "12/30"}]}"#;
    let r = send(
        Method::POST,
        &gw.url("/t/orders"),
        &[JSON],
        Bytes::from(body),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    let expected = r#"{"user":{"full_name":"Ann","age":30},"cards":[{"number":"***","exp":"12/30"}],"meta":{"via":"weir"}}"#;
    assert_eq!(std::str::from_utf8(&seen.body).unwrap(), expected);
    assert_eq!(
        seen.header("content-length"),
        Some(expected.len().to_string().as_str())
    );
    assert_eq!(seen.header("content-type"), Some("application/json"));

    // A body no edit matches goes on byte for byte (spaces and all).
    let untouched = "{ \"other\" : [1, 2.50] }";
    let r = send(
        Method::POST,
        &gw.url("/r/x"),
        &[JSON],
        Bytes::from(untouched),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body, untouched);
}

#[tokio::test]
async fn a_gzip_request_body_is_decoded_edited_and_sent_on_plain() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&manifest(
        "",
        &[("t", &up.url(), "json-transform", TRANSFORM_REQUEST)],
    ))
    .await;
    let body = gzip(br#"{"user":{"password":"p","id":7}}"#);
    let r = send(
        Method::POST,
        &gw.url("/t/orders"),
        &[JSON, ("content-encoding", "gzip")],
        body,
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.body, r#"{"user":{"id":7},"meta":{"via":"weir"}}"#);
    assert_eq!(seen.header("content-encoding"), None);
}

#[tokio::test]
async fn json_transform_redacts_the_response_body_the_client_sees_even_gzipped() {
    let up = Origin::json(r#"{"id":1,"card":{"number":"4111"},"items":[{"ssn":"1"},{"ssn":"2"}]}"#)
        .await;
    let zipped = Origin::start(
        &[JSON, ("content-encoding", "gzip"), ("etag", "\"v1\"")],
        gzip(br#"{"items":[{"ssn":"9","n":1}]}"#),
    )
    .await;
    let config = r#"{ mask = "[hidden]", response = { redact = ["card", "items[*].ssn"] } }"#;
    let gw = TestGateway::start(&manifest(
        "",
        &[
            ("plain", &up.url(), "json-transform", config),
            ("zipped", &zipped.url(), "json-transform", config),
        ],
    ))
    .await;
    let r = gw.get("/plain/x").await;
    assert_eq!(r.status, 200);
    let expected = r#"{"id":1,"card":"[hidden]","items":[{"ssn":"[hidden]"},{"ssn":"[hidden]"}]}"#;
    assert_eq!(r.body, expected);
    assert_eq!(
        r.header("content-length"),
        Some(expected.len().to_string().as_str())
    );

    let r = gw
        .get_with("/zipped/x", &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, r#"{"items":[{"ssn":"[hidden]","n":1}]}"#);
    assert_eq!(r.header("content-encoding"), None, "sent on decoded");
    assert_eq!(
        r.header("etag"),
        None,
        "the origin's etag no longer describes the body"
    );
    assert_eq!(
        zipped.last().header("accept-encoding"),
        None,
        "the gateway asks the origin for a plain body"
    );
}

#[tokio::test]
async fn malformed_and_non_json_bodies_pass_or_are_refused_as_configured() {
    let up = Upstream::start("u").await;
    let text = Origin::start(&[("content-type", "text/html")], "<p>hi</p>").await;
    let broken = Origin::json(r#"{"id": "#).await;
    let pass = r#"{ request = { remove = ["a"] }, response = { remove = ["a"] } }"#;
    let refuse =
        r#"{ non_json = "refuse", request = { remove = ["a"] }, response = { remove = ["a"] } }"#;
    let gw = TestGateway::start(&manifest(
        "",
        &[
            ("pass", &up.url(), "json-transform", pass),
            ("refuse", &up.url(), "json-transform", refuse),
            (
                "refusereq",
                &up.url(),
                "json-transform",
                r#"{ non_json = "refuse", request = { remove = ["a"] } }"#,
            ),
            ("passtext", &text.url(), "json-transform", pass),
            ("refusetext", &text.url(), "json-transform", refuse),
            ("refusebroken", &broken.url(), "json-transform", refuse),
        ],
    ))
    .await;

    // Requests: passed untouched, or 415 before the upstream.
    for (ct, body) in [("text/plain", "a=1"), ("application/json", "{\"a\": ")] {
        let r = send(
            Method::POST,
            &gw.url("/pass/x"),
            &[("content-type", ct)],
            Bytes::from(body),
        )
        .await;
        assert_eq!(r.status, 200, "{ct}");
        assert_eq!(up.last().body, body);
        let before = up.seen().len();
        let r = send(
            Method::POST,
            &gw.url("/refuse/x"),
            &[("content-type", ct)],
            Bytes::from(body),
        )
        .await;
        assert_eq!(r.status, 415, "{ct}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let problem: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(problem["status"], 415);
        assert_eq!(problem["title"], "Unsupported Media Type");
        assert_eq!(
            up.seen().len(),
            before,
            "the upstream never sees a refused body"
        );
    }
    // An empty body (a GET) is never refused.
    assert_eq!(gw.get("/refusereq/x").await.status, 200);

    // Responses: passed untouched, or 502 with a problem.
    let r = gw.get("/passtext/x").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "<p>hi</p>"));
    for route in ["/refusetext/x", "/refusebroken/x"] {
        let r = gw.get(route).await;
        assert_eq!(r.status, 502, "{route}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let problem: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(problem["status"], 502);
        assert!(
            !r.body.contains("<p>"),
            "the origin's body is not shown: {}",
            r.body
        );
    }
}

#[tokio::test]
async fn bodies_over_max_body_bytes_get_413_and_502_and_count_as_body_limit_failures() {
    let up = Upstream::start("u").await;
    let big = Origin::start(&[JSON], format!("{{\"pad\":\"{}\"}}", "x".repeat(300))).await;
    let config = r#"{ request = { remove = ["a"] }, response = { remove = ["a"] } }"#;
    let gw = TestGateway::start(&manifest(
        "max_body_bytes = \"256B\"",
        &[
            ("req", &up.url(), "json-transform", config),
            ("resp", &big.url(), "json-transform", config),
        ],
    ))
    .await;

    let small = Bytes::from(r#"{"a":1,"b":2}"#);
    let r = send(Method::POST, &gw.url("/req/x"), &[JSON], small).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body, r#"{"b":2}"#);

    let large = Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(300)));
    let r = send(Method::POST, &gw.url("/req/x"), &[JSON], large).await;
    assert_eq!(r.status, 413);
    assert_eq!(up.seen().len(), 1, "the upstream never sees it");
    assert_eq!(failures(&gw, "req", "body_limit"), 1);

    // A gzip body small on the wire but over the cap decoded is refused the same way.
    let bomb = gzip(&vec![b' '; 64 << 10]);
    assert!(bomb.len() < 256);
    let r = send(
        Method::POST,
        &gw.url("/req/x"),
        &[JSON, ("content-encoding", "gzip")],
        bomb,
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(failures(&gw, "req", "body_limit"), 2);

    let r = gw.get("/resp/x").await;
    assert_eq!(r.status, 502);
    assert!(
        !r.body.contains("xxx"),
        "the body over the cap does not leak: {}",
        r.body
    );
    assert_eq!(failures(&gw, "resp", "body_limit"), 1);
}

#[tokio::test]
async fn a_route_without_body_plugins_streams_its_body_unchanged() {
    let up = Upstream::start("u").await;
    let config = r#"{ request = { remove = ["a"] }, response = { remove = ["a"] } }"#;
    let gw = TestGateway::start(&manifest(
        "max_body_bytes = \"256B\"",
        &[
            ("edited", &up.url(), "json-transform", config),
            ("plain", &up.url(), "", ""),
        ],
    ))
    .await;
    // Larger than the body plugin's cap, gzip-encoded, JSON: none of it matters here.
    let payload = format!("{{\"a\":1,\"pad\":\"{}\"}}", "y".repeat(4096));
    let zipped = gzip(payload.as_bytes());
    let r = send(
        Method::POST,
        &gw.url("/plain/x"),
        &[
            JSON,
            ("content-encoding", "gzip"),
            ("accept-encoding", "gzip"),
        ],
        zipped.clone(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "upstream u");
    let seen = up.last();
    assert_eq!(seen.body, zipped, "sent on as received, still encoded");
    assert_eq!(seen.header("content-encoding"), Some("gzip"));
    assert_eq!(seen.header("accept-encoding"), Some("gzip"));
    assert_eq!(gunzip(&seen.body), payload.as_bytes());
    assert_eq!(failures(&gw, "edited", "body_limit"), 0);
}

const USER_SCHEMA: &str = r#"{ schema = { type = "object", required = ["user"], additionalProperties = false, properties = { user = { type = "object", required = ["name", "age"], properties = { name = { type = "string", minLength = 1 }, age = { type = "integer", minimum = 18 }, role = { enum = ["admin", "member"] } } }, tags = { type = "array", items = { type = "string" } } } } }"#;

#[tokio::test]
async fn request_validator_lets_a_valid_body_through_byte_for_byte() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&manifest(
        "",
        &[("v", &up.url(), "request-validator", USER_SCHEMA)],
    ))
    .await;
    let body =
        "{\"user\": {\"name\": \"Ann\", \"age\": 30, \"role\": \"member\"}, \"tags\": [\"a\"]}";
    let r = send(
        Method::POST,
        &gw.url("/v/users"),
        &[JSON],
        Bytes::from(body),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body, body);

    // Checked decoded when it comes gzipped; sent on decoded.
    let r = send(
        Method::PUT,
        &gw.url("/v/users"),
        &[JSON, ("content-encoding", "gzip")],
        gzip(body.as_bytes()),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body, body);

    // Methods not configured are not checked.
    let r = send(
        Method::DELETE,
        &gw.url("/v/users/1"),
        &[("content-type", "text/plain")],
        Bytes::from("x"),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn request_validator_answers_problem_json_naming_the_fields() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&manifest(
        "",
        &[("v", &up.url(), "request-validator", USER_SCHEMA)],
    ))
    .await;
    let post = |ct: &'static str, body: &'static str| {
        let url = gw.url("/v/users");
        async move {
            send(
                Method::POST,
                &url,
                &[("content-type", ct)],
                Bytes::from(body),
            )
            .await
        }
    };

    let r = post(
        "application/json",
        r#"{"user": {"name": "", "age": 12, "role": "root"}, "tags": [1], "x": 1}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let problem: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        problem,
        json!({
            "type": "about:blank",
            "title": "Bad Request",
            "status": 400,
            "detail": "the request body does not match the schema",
            "errors": [
                {"field": "tags[0]", "message": "must be a string"},
                {"field": "user.age", "message": "must be at least 18"},
                {"field": "user.name", "message": "must be at least 1 characters long"},
                {"field": "user.role", "message": "must be one of \"admin\", \"member\""},
                {"field": "x", "message": "is not allowed"},
            ]
        })
    );

    let r = post("application/json", r#"{"user": {"name": "Ann"#).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let problem: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("the request body is not valid JSON"),
        "{problem}"
    );

    let r = post("application/x-www-form-urlencoded", "name=Ann").await;
    assert_eq!(r.status, 415);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(up.seen().len(), 0, "the upstream saw none of them");
}

#[tokio::test]
async fn an_edit_that_grows_the_body_past_max_body_bytes_gets_413_from_the_plugin() {
    let up = Upstream::start("u").await;
    let config = format!(
        r#"{{ request = {{ set = [{{ path = "pad", value = "{}" }}] }} }}"#,
        "p".repeat(200)
    );
    let gw = TestGateway::start(&manifest(
        "max_body_bytes = \"256B\"",
        &[("grow", &up.url(), "json-transform", &config)],
    ))
    .await;
    let r = send(
        Method::POST,
        &gw.url("/grow/x"),
        &[JSON],
        Bytes::from(format!("{{\"a\":\"{}\"}}", "a".repeat(100))),
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert!(up.seen().is_empty());
    let r = send(Method::POST, &gw.url("/grow/x"), &[JSON], Bytes::from("{}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body.len(), r#"{"pad":""}"#.len() + 200);
}

#[tokio::test]
async fn a_validator_then_a_transform_on_one_route_check_then_edit_the_body() {
    let up = Upstream::start("u").await;
    let m = format!(
        "[plugins.json-transform]\npath = {jt:?}\n\n[plugins.request-validator]\npath = {rv:?}\n\n\
         [[routes]]\nid = \"both\"\nprefix = \"/\"\nupstream = \"{up}\"\n\n\
         [[routes.plugins]]\nname = \"request-validator\"\nconfig = {USER_SCHEMA}\n\n\
         [[routes.plugins]]\nname = \"json-transform\"\nconfig = {{ request = {{ redact = [\"user.name\"] }} }}\n",
        jt = plugin("json_transform"),
        rv = plugin("request_validator"),
        up = up.url(),
    );
    let gw = TestGateway::start(&m).await;
    let r = send(
        Method::POST,
        &gw.url("/users"),
        &[JSON, ("content-encoding", "gzip")],
        gzip(br#"{"user": {"name": "Ann", "age": 40}}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body, r#"{"user":{"name":"***","age":40}}"#);

    let r = send(
        Method::POST,
        &gw.url("/users"),
        &[JSON],
        Bytes::from(r#"{"user": {"name": "Ann"}}"#),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains(r#""field":"user.age""#), "{}", r.body);
    assert_eq!(up.seen().len(), 1);
}
