//! jwt-auth with keys from a JWKS URL: a real key server on 127.0.0.1 that
//! counts its hits, ES256 and EdDSA tokens signed by keys made from fixed
//! seeds in this file (no RNG, no key files).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use ed25519_dalek::Signer as _;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

use crate::support::{Resp, TestGateway, Upstream, plugin};

const HS_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

/// A JWKS endpoint: serves `doc` at any path, counts requests, can be killed.
struct KeyServer {
    addr: SocketAddr,
    doc: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl KeyServer {
    async fn start(doc: Value) -> KeyServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let doc = Arc::new(Mutex::new(doc));
        let hits = Arc::new(AtomicUsize::new(0));
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (d, h, t) = (doc.clone(), hits.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (d, h) = (d.clone(), h.clone());
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let body = d.lock().unwrap().to_string();
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                t.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        KeyServer {
            addr,
            doc,
            hits,
            tasks,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn serve(&self, doc: Value) {
        *self.doc.lock().unwrap() = doc;
    }

    /// The listener closes and open connections drop.
    fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

fn es_key(seed: u8) -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_bytes(&[seed; 32].into()).unwrap()
}

fn ed_key(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

fn ec_jwk(seed: u8, kid: &str) -> Value {
    let point = es_key(seed).verifying_key().to_encoded_point(false);
    json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
           "x": B64.encode(point.x().unwrap()), "y": B64.encode(point.y().unwrap())})
}

fn ed_jwk(seed: u8, kid: &str) -> Value {
    let x = B64.encode(ed_key(seed).verifying_key().to_bytes());
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": x})
}

fn signing_input(alg: &str, kid: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    format!(
        "{}.{}",
        B64.encode(json!({"alg": alg, "kid": kid}).to_string()),
        B64.encode(json!({"sub": "alice", "exp": exp}).to_string())
    )
}

fn es256(seed: u8, kid: &str) -> String {
    let input = signing_input("ES256", kid);
    let sig: p256::ecdsa::Signature = es_key(seed).sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig.to_bytes()))
}

fn eddsa(seed: u8, kid: &str) -> String {
    let input = signing_input("EdDSA", kid);
    let sig = ed_key(seed).sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig.to_bytes()))
}

fn hs256(kid: &str) -> String {
    use hmac::Mac as _;
    let input = signing_input("HS256", kid);
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HS_SECRET.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
}

/// A gateway whose jwt-auth takes keys from `idp` (granted when `grant`,
/// else `grants.http = []`),
/// plus one static HS256 key with kid `hs`. Host state is the plugin's, shared
/// by the gateways of this process, so each test fetches its own `path`.
async fn gateway(idp: SocketAddr, path: &str, up: &Upstream, grant: bool) -> TestGateway {
    let grants = if grant {
        "grants = { http = [\"idp\"] }"
    } else {
        "grants = { http = [] }"
    };
    TestGateway::start(&format!(
        r#"[upstreams.idp]
targets = ["http://{idp}"]

[plugins.jwt-auth]
path = "{wasm}"
{grants}

[[routes]]
id = "main"
prefix = "/"
upstream = "{up}"
[[routes.plugins]]
name = "jwt-auth"
[routes.plugins.config]
claims_to_headers = {{ sub = "x-user" }}
keys = [{{ kid = "hs", alg = "HS256", secret = "{HS_SECRET}" }}]
jwks = {{ upstream = "idp", path = "/{path}/jwks.json", refresh = "5m", min_refresh_interval = "30s" }}
"#,
        wasm = plugin("jwt_auth"),
        up = up.url(),
    ))
    .await
}

async fn call(gw: &TestGateway, token: &str) -> Resp {
    gw.get_with("/me", &[("authorization", &format!("Bearer {token}"))])
        .await
}

fn reason(r: &Resp) -> String {
    r.header("www-authenticate").unwrap_or_default().to_string()
}

#[tokio::test]
async fn es256_and_eddsa_tokens_pass_with_keys_fetched_once_from_the_jwks() {
    let idp = KeyServer::start(json!({"keys": [ec_jwk(1, "ec1"), ed_jwk(2, "ed1")]})).await;
    let up = Upstream::start("api").await;
    let gw = gateway(idp.addr, "both-algs", &up, true).await;
    for _ in 0..3 {
        for token in [es256(1, "ec1"), eddsa(2, "ed1"), hs256("hs")] {
            let r = call(&gw, &token).await;
            let logs: Vec<String> = crate::support::logs()
                .lines()
                .filter(|l| l.contains("jwks"))
                .map(String::from)
                .collect();
            assert_eq!(r.status, 200, "{} {logs:?}", reason(&r));
            assert_eq!(up.last().header("x-user"), Some("alice"));
        }
    }
    assert_eq!(
        idp.hits(),
        1,
        "one fetch, kept in host state for every instance"
    );
    assert_eq!(idp.doc.lock().unwrap()["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_token_with_a_wrong_signature_gets_401_without_a_refetch() {
    let idp = KeyServer::start(json!({"keys": [ec_jwk(1, "ec1"), ed_jwk(2, "ed1")]})).await;
    let up = Upstream::start("api").await;
    let gw = gateway(idp.addr, "wrong-sig", &up, true).await;
    for token in [es256(9, "ec1"), eddsa(9, "ed1")] {
        let r = call(&gw, &token).await;
        assert_eq!(r.status, 401);
        assert!(reason(&r).contains("bad signature"), "{}", reason(&r));
    }
    // An EdDSA token naming the EC key: the key decides the algorithm.
    let r = call(&gw, &eddsa(2, "ec1")).await;
    assert!(reason(&r).contains("alg mismatch"), "{}", reason(&r));
    assert_eq!(idp.hits(), 1);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_unknown_kids_refetch_at_most_once_per_interval() {
    let idp = KeyServer::start(json!({"keys": [ec_jwk(1, "old")]})).await;
    let up = Upstream::start("api").await;
    let gw = gateway(idp.addr, "rotation", &up, true).await;
    assert_eq!(call(&gw, &es256(1, "old")).await.status, 200);
    assert_eq!(idp.hits(), 1);

    // The identity provider rotates: a new key, the old one gone.
    idp.serve(json!({"keys": [ec_jwk(3, "new")]}));
    let r = call(&gw, &es256(3, "new")).await;
    assert_eq!(r.status, 200, "{}", reason(&r));
    assert_eq!(idp.hits(), 2, "one refetch for the unknown kid");

    // Another unknown kid within min_refresh_interval: no fetch, 401.
    let r = call(&gw, &es256(4, "newer")).await;
    assert_eq!(r.status, 401);
    assert!(reason(&r).contains("unknown key"), "{}", reason(&r));
    // The old key left the set with the refetch.
    assert_eq!(call(&gw, &es256(1, "old")).await.status, 401);
    assert_eq!(call(&gw, &es256(3, "new")).await.status, 200);
    assert_eq!(idp.hits(), 2, "the refresh limit holds");
}

#[tokio::test]
async fn a_jwks_server_down_at_start_gives_503_until_keys_arrive() {
    // A port with nothing listening.
    let idp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let up = Upstream::start("api").await;
    let gw = gateway(idp, "down-at-start", &up, true).await;
    for _ in 0..2 {
        let r = call(&gw, &es256(1, "ec1")).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "signing keys unavailable\n");
    }
    // No token is still a 401, and a static key still works.
    assert_eq!(gw.get("/me").await.status, 401);
    assert_eq!(call(&gw, &hs256("hs")).await.status, 200);
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn cached_keys_survive_the_jwks_server_going_down() {
    let idp = KeyServer::start(json!({"keys": [ed_jwk(2, "ed1")]})).await;
    let up = Upstream::start("api").await;
    let gw = gateway(idp.addr, "survives", &up, true).await;
    assert_eq!(call(&gw, &eddsa(2, "ed1")).await.status, 200);
    idp.kill();
    // An unknown kid makes it try a refetch, which fails: the keys stay.
    let r = call(&gw, &eddsa(5, "rotated")).await;
    assert_eq!(r.status, 401, "keys are held, so not 503");
    assert!(reason(&r).contains("unknown key"), "{}", reason(&r));
    for _ in 0..3 {
        assert_eq!(call(&gw, &eddsa(2, "ed1")).await.status, 200);
    }
    assert_eq!(idp.hits(), 1);
}

#[tokio::test]
async fn a_jwks_not_granted_is_never_fetched_and_its_tokens_get_503() {
    let idp = KeyServer::start(json!({"keys": [ec_jwk(1, "ec1")]})).await;
    let up = Upstream::start("api").await;
    let gw = gateway(idp.addr, "no-grant", &up, false).await;
    assert_eq!(call(&gw, &hs256("hs")).await.status, 200);
    assert_eq!(call(&gw, &es256(1, "ec1")).await.status, 503);
    assert_eq!(idp.hits(), 0);
}
