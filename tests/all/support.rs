//! Test harness: a recording upstream, gateways started from manifest text,
//! and a small HTTP client. Everything binds 127.0.0.1:0.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Path of a compiled plugin (built by tests/build.rs).
pub fn plugin(file_stem: &str) -> String {
    format!("{}/{file_stem}.wasm", env!("WEIR_TEST_PLUGIN_DIR"))
}

/// `wasm` with a custom section holding `tag`: the same plugin, another
/// sha256 (a build no cache has seen).
pub fn tagged(wasm: &[u8], tag: &str) -> Vec<u8> {
    let name = b"weir-test-tag";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0); // a custom section
    let mut n = payload.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(&payload);
    out
}

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Path and query as received.
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }
}

/// A real origin (HTTP/1.1 and h2c on one port) that records every request
/// and answers `200 upstream <name>`. Paths starting with `/slow` wait 2 s
/// first; `/healthz` answers 200 or 503 as [`Upstream::set_healthy`] says;
/// `/ws` with a WebSocket handshake becomes a WebSocket echo.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Upstream {
        Self::start_with(name, Duration::ZERO).await
    }

    /// Like [`Upstream::start`], answering every request after `delay`.
    pub async fn start_with(name: &'static str, delay: Duration) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (log, health, conns) = (seen.clone(), healthy.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (log, health) = (log.clone(), health.clone());
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (log, health) = (log.clone(), health.clone());
                        async move { Ok::<_, Infallible>(origin(name, delay, req, log, health).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
                conns.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Upstream {
            addr,
            seen,
            healthy,
            tasks,
        }
    }

    /// What `/healthz` answers from now on: 200 or 503.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy
            .store(healthy, std::sync::atomic::Ordering::Relaxed);
    }

    /// Kills the origin: the listener closes and open connections drop.
    pub fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The last request received; panics if none.
    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream received no request")
    }
}

async fn origin(
    name: &'static str,
    delay: Duration,
    mut req: Request<Incoming>,
    log: Arc<Mutex<Vec<Seen>>>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
) -> Response<Full<Bytes>> {
    if req.uri().path() == "/healthz" {
        let ok = healthy.load(std::sync::atomic::Ordering::Relaxed);
        let mut resp = Response::new(Full::new(Bytes::from_static(b"health")));
        *resp.status_mut() = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return resp;
    }
    let websocket = req.uri().path() == "/ws"
        && req
            .headers()
            .get("upgrade")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let uri = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    if uri.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tokio::time::sleep(delay).await;
    let key = parts.headers.get("sec-websocket-key").cloned();
    log.lock().unwrap().push(Seen {
        method: parts.method,
        uri,
        version: parts.version,
        headers: parts.headers,
        body,
    });
    if let (Some(upgrade), Some(key)) = (upgrade, key) {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::protocol::Role;
        tokio::spawn(async move {
            let Ok(io) = upgrade.await else { return };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(io),
                Role::Server,
                None,
            )
            .await;
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_text() || msg.is_binary() {
                    let _ = ws.send(msg).await;
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let mut resp = Response::new(Full::new(Bytes::from(format!("upstream {name}"))));
    resp.headers_mut()
        .insert("x-upstream", name.parse().unwrap());
    resp.headers_mut()
        .insert("server", "test-origin".parse().unwrap());
    resp
}

/// Everything the gateways of this test binary logged (info and above), as text.
/// Tests run in parallel: look for lines naming your own route ids.
pub fn logs() -> String {
    let buf = log_buffer().lock().unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        use tracing_subscriber::util::SubscriberInitExt;
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
            .with_writer(move || LogWriter(sink.clone()))
            .finish()
            .try_init();
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A gateway running from a manifest written into a temporary directory.
pub struct TestGateway {
    pub gateway: weir::Gateway,
    /// Holds the manifest; removed when the test ends.
    _dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

impl TestGateway {
    /// Starts a gateway from `manifest` (its `[server]` is added: listen on 127.0.0.1:0).
    pub async fn start(manifest: &str) -> TestGateway {
        Self::start_in(tempfile::tempdir().unwrap(), manifest).await
    }

    /// Like [`TestGateway::start`], with the manifest written as `dir/gateway.toml`
    /// (so relative plugin paths can point at files the test put there).
    pub async fn start_in(dir: tempfile::TempDir, manifest: &str) -> TestGateway {
        log_buffer();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, with_server(manifest)).unwrap();
        let gateway = weir::Gateway::start(&path)
            .await
            .unwrap_or_else(|e| panic!("gateway failed to start: {e}"));
        let addr = gateway.local_addrs()[0];
        TestGateway {
            gateway,
            _dir: dir,
            addr,
        }
    }

    /// Replaces the manifest on disk (adding `[server]` as `start` does); call `gateway.reload()` next.
    pub fn rewrite(&self, manifest: &str) {
        std::fs::write(self._dir.path().join("gateway.toml"), with_server(manifest)).unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The directory holding the manifest.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// A URL on the admin listener; panics if the manifest has no `[admin]`.
    pub fn admin_url(&self, path: &str) -> String {
        let addr = self
            .gateway
            .admin_addr()
            .expect("the manifest has no [admin] section");
        format!("http://{addr}{path}")
    }

    /// The manifest file, to rewrite before a reload.
    pub fn manifest_path(&self) -> std::path::PathBuf {
        self._dir.path().join("gateway.toml")
    }

    pub async fn get(&self, path: &str) -> Resp {
        send(Method::GET, &self.url(path), &[], Bytes::new()).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        send(Method::GET, &self.url(path), headers, Bytes::new()).await
    }
}

fn with_server(manifest: &str) -> String {
    if manifest.contains("[server]") {
        manifest.to_string()
    } else {
        format!("[server]\nlisten = [\"127.0.0.1:0\"]\n\n{manifest}")
    }
}

/// What the client saw.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }
    /// The body parsed as the JSON `builtin:echo` returns.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn client(http2: bool) -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build(HttpConnector::new())
}

/// Sends one GET over HTTP/1.1.
pub async fn get_url(url: &str) -> Resp {
    send(Method::GET, url, &[], Bytes::new()).await
}

/// Sends one request over HTTP/1.1.
pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Resp {
    send_with(client(false), method, url, headers, body).await
}

/// Sends one request over h2c (prior knowledge).
pub async fn send_h2(method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Resp {
    send_with(client(true), method, url, headers, body).await
}

async fn send_with(
    c: Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Resp {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c
        .request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Sends raw bytes on a fresh connection and returns everything read until
/// the server closes or 2 s pass. For requests a client library would refuse to send.
pub async fn raw(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Counts per value, for asserting on distributions.
pub fn tally<I: IntoIterator<Item = String>>(items: I) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}

/// Polls `check` every 20 ms until it is true; panics with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {limit:?} waiting for: {what}");
}

/// Continuous concurrent GETs against one URL until stopped; records every outcome.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

/// One request's result under load.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Status, or 0 when the request failed without a response.
    pub status: u16,
    /// Values of one response header.
    pub stamps: Vec<String>,
    /// Time from sending to the end of the body.
    pub latency: Duration,
    /// When it was sent.
    #[allow(dead_code, reason = "read by the hot-swap benchmark, not the tests")]
    pub sent: std::time::Instant,
}

impl Load {
    /// Starts `clients` loops, each on its own keep-alive connection, collecting header `stamp`.
    pub fn start(url: String, clients: usize, stamp: &'static str) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let (url, stop) = (url.clone(), stop.clone());
                tokio::spawn(async move {
                    let c = client(false);
                    let mut out = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let req = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
                        let sent = std::time::Instant::now();
                        let outcome = match c.request(req).await {
                            Ok(resp) => {
                                let status = resp.status().as_u16();
                                let stamps = resp
                                    .headers()
                                    .get_all(stamp)
                                    .iter()
                                    .map(|v| v.to_str().unwrap_or("?").to_string())
                                    .collect();
                                let ok = resp.into_body().collect().await.is_ok();
                                Outcome {
                                    status: if ok { status } else { 0 },
                                    stamps,
                                    latency: sent.elapsed(),
                                    sent,
                                }
                            }
                            Err(_) => Outcome {
                                status: 0,
                                stamps: vec![],
                                latency: sent.elapsed(),
                                sent,
                            },
                        };
                        out.push(outcome);
                    }
                    out
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the loops and returns every outcome.
    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        all
    }
}

// ---- TLS: a test CA, a TLS recording origin, a TLS client ----

/// A certificate authority for one test: issues leaf certificates that
/// clients built with [`TestCa::client_config`] trust.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert: rcgen::Certificate,
}

/// A leaf certificate and its key, in PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: rustls_pki_types::CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Weir test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            cert,
        }
    }

    /// The CA certificate in PEM (for a `ca = "..."` file).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `names` (DNS names, or IP addresses such as `127.0.0.1`).
    pub fn issue(&self, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A rustls client trusting only this CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        c
    }
}

impl Issued {
    /// Writes `NAME.pem` and `NAME-key.pem` into `dir`.
    pub fn write(&self, dir: &std::path::Path, name: &str) {
        std::fs::write(dir.join(format!("{name}.pem")), &self.cert_pem).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), &self.key_pem).unwrap();
    }
}

/// What a TLS client saw: the response, the certificate the server
/// presented, and the protocol ALPN chose.
#[derive(Debug)]
pub struct TlsResp {
    pub resp: Resp,
    pub peer_cert: rustls_pki_types::CertificateDer<'static>,
    pub alpn: Option<Vec<u8>>,
    pub version: http::Version,
}

/// A TLS handshake with `addr` (sending `sni`, or no SNI when `None`, in
/// which case the certificate is verified as `verify_as`), then one GET of
/// `path` over h2 or HTTP/1.1 as ALPN decides.
pub async fn tls_get(
    addr: SocketAddr,
    ca: &TestCa,
    sni: Option<&str>,
    verify_as: &str,
    alpn: &[&[u8]],
    path: &str,
) -> TlsResp {
    let stream = tls_connect(addr, ca, sni, verify_as, alpn)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with {addr} failed: {e}"));
    let (_, conn) = stream.get_ref();
    let peer_cert = conn.peer_certificates().unwrap()[0].clone().into_owned();
    let alpn = conn.alpn_protocol().map(|p| p.to_vec());
    let host = sni.unwrap_or(verify_as);
    let io = TokioIo::new(stream);
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://{host}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        send.send_request(req).await.unwrap()
    };
    let version = resp.version();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    TlsResp {
        resp: Resp {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        },
        peer_cert,
        alpn,
        version,
    }
}

/// Only the TLS handshake of [`tls_get`].
pub async fn tls_connect(
    addr: SocketAddr,
    ca: &TestCa,
    sni: Option<&str>,
    verify_as: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut config = ca.client_config(alpn);
    config.enable_sni = sni.is_some();
    let name =
        rustls_pki_types::ServerName::try_from(sni.unwrap_or(verify_as).to_string()).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// A TLS origin (HTTP/2 and HTTP/1.1 by ALPN) that records every request and
/// answers like [`Upstream`] (the same handler).
pub struct TlsUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TlsUpstream {
    /// Serves `leaf` (issue it for `127.0.0.1` so `https://127.0.0.1:PORT` verifies).
    pub async fn start(name: &'static str, leaf: &Issued) -> TlsUpstream {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject;
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (log, acceptor, healthy) = (log.clone(), acceptor.clone(), healthy.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (log, healthy) = (log.clone(), healthy.clone());
                        async move {
                            Ok::<_, Infallible>(
                                origin(name, Duration::ZERO, req, log, healthy).await,
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TlsUpstream { addr, seen }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The last request received; panics if none.
    pub fn last(&self) -> Seen {
        self.seen()
            .pop()
            .expect("the TLS upstream received no request")
    }
}

/// Failures of the first plugin on `route` with `reason`, as the runtime counted them.
pub fn failures(gw: &TestGateway, route: &str, reason: &str) -> u64 {
    let snap = gw.gateway.snapshot();
    let route = snap.routes.iter().find(|r| &*r.id == route).unwrap();
    route.chain[0]
        .failures_by_reason()
        .into_iter()
        .find(|(r, _)| *r == reason)
        .unwrap()
        .1
}

/// What a [`Scripted`] origin does with one request.
#[derive(Debug, Clone)]
pub enum Script {
    /// Answers this status, `content-type` and body.
    Answer(u16, &'static str, String),
    /// Never answers (the connection stays open).
    Hang,
    /// Resets the connection (TCP RST) without answering.
    Reset,
}

impl Script {
    /// A JSON answer.
    pub fn json(status: u16, body: &serde_json::Value) -> Script {
        Script::Answer(status, "application/json", body.to_string())
    }
}

type ScriptFn = dyn Fn(&Seen) -> Script + Send + Sync;

/// A real origin whose every answer a test decides: an identity provider, a
/// JSON service, one that hangs or resets. Records what it received.
pub struct Scripted {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    accept: tokio::task::AbortHandle,
}

impl Scripted {
    pub async fn start(script: impl Fn(&Seen) -> Script + Send + Sync + 'static) -> Scripted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let script: Arc<ScriptFn> = Arc::new(script);
        let log = seen.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                // Dropping the socket then sends RST instead of FIN.
                #[allow(deprecated, reason = "SO_LINGER 0 is how a test resets a connection")]
                stream.set_linger(Some(Duration::ZERO)).unwrap();
                let (log, script) = (log.clone(), script.clone());
                tokio::spawn(scripted_conn(stream, log, script));
            }
        });
        Scripted {
            addr,
            seen,
            accept: accept.abort_handle(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests it received.
    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn scripted_conn(
    stream: tokio::net::TcpStream,
    log: Arc<Mutex<Vec<Seen>>>,
    script: Arc<ScriptFn>,
) {
    let reset = Arc::new(tokio::sync::Notify::new());
    let on_reset = reset.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let (log, script, reset) = (log.clone(), script.clone(), on_reset.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let seen = Seen {
                method: parts.method,
                uri: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                version: parts.version,
                headers: parts.headers,
                body,
            };
            let action = script(&seen);
            log.lock().unwrap().push(seen);
            match action {
                Script::Answer(status, content_type, body) => Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .header("content-type", content_type)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap(),
                ),
                Script::Hang => std::future::pending().await,
                Script::Reset => {
                    reset.notify_one();
                    std::future::pending().await
                }
            }
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        () = reset.notified() => {}
    }
}
