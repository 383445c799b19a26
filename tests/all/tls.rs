//! TLS: termination with certificates chosen by SNI, h2 and HTTP/1.1 by
//! ALPN, the handshake timeout, certificate reload, and `https://` upstreams.
//! Certificates come from a CA made for each test; clients trust only it.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::support::{
    Issued, TestCa, TestGateway, TlsUpstream, Upstream, eventually, logs, tls_connect, tls_get,
};

const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];

/// `[server.tls]` serving `a.pem` for a.test and *.a.test (the default) and
/// `b.pem` for b.test, then `routes`.
fn manifest(handshake_timeout: &str, routes: &str) -> String {
    format!(
        r#"[server.tls]
listen = ["127.0.0.1:0"]
handshake_timeout = "{handshake_timeout}"

[[server.tls.certificates]]
cert = "a.pem"
key = "a-key.pem"
names = ["a.test", "*.a.test"]

[[server.tls.certificates]]
cert = "b.pem"
key = "b-key.pem"
names = ["b.test"]

{routes}"#
    )
}

/// A gateway with the two certificates of [`manifest`], issued by `ca`.
async fn start(ca: &TestCa, routes: &str) -> (TestGateway, Issued, Issued) {
    let dir = tempfile::tempdir().unwrap();
    let a = ca.issue(&["a.test", "*.a.test"]);
    let b = ca.issue(&["b.test"]);
    a.write(dir.path(), "a");
    b.write(dir.path(), "b");
    let gw = TestGateway::start_in(dir, &manifest("10s", routes)).await;
    (gw, a, b)
}

const ECHO: &str = "[[routes]]\nid = \"tls-echo\"\nupstream = \"builtin:echo\"\n";

#[tokio::test]
async fn each_sni_name_gets_its_own_certificate_and_no_sni_gets_the_first() {
    let ca = TestCa::new();
    let (gw, a, b) = start(&ca, ECHO).await;
    let addr = gw.gateway.tls_addrs()[0];
    let cases = [
        (Some("a.test"), "a.test", &a),
        (Some("www.a.test"), "www.a.test", &a),
        (Some("B.Test"), "b.test", &b),
        (None, "a.test", &a),
    ];
    for (sni, verify_as, want) in cases {
        let got = tls_get(addr, &ca, sni, verify_as, BOTH, "/").await;
        assert_eq!(got.resp.status, 200, "sni {sni:?}: {}", got.resp.body);
        assert!(
            got.peer_cert == want.der,
            "sni {sni:?} was served the wrong certificate"
        );
    }
    // A wildcard covers one label only: x.www.a.test gets the default (a),
    // which does not cover it, so a verifying client refuses it.
    let deeper = tls_connect(addr, &ca, Some("x.www.a.test"), "x.www.a.test", BOTH).await;
    assert!(deeper.is_err(), "*.a.test must not cover x.www.a.test");
}

#[tokio::test]
async fn h2_and_http1_through_tls_reach_the_upstream_marked_https() {
    let up = Upstream::start("tls-proto").await;
    let ca = TestCa::new();
    let routes = format!(
        "[[routes]]\nid = \"tls-proto\"\nupstream = \"{}\"\n",
        up.url()
    );
    let (gw, _, _) = start(&ca, &routes).await;
    let addr = gw.gateway.tls_addrs()[0];

    let h2 = tls_get(addr, &ca, Some("a.test"), "a.test", BOTH, "/over-h2").await;
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(h2.version, http::Version::HTTP_2);
    assert_eq!(h2.resp.status, 200);
    assert_eq!(h2.resp.body, "upstream tls-proto");
    let seen = up.last();
    assert_eq!(seen.uri, "/over-h2");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    let h1 = tls_get(
        addr,
        &ca,
        Some("b.test"),
        "b.test",
        &[b"http/1.1"],
        "/over-h1",
    )
    .await;
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(h1.version, http::Version::HTTP_11);
    assert_eq!(h1.resp.body, "upstream tls-proto");
    let seen = up.last();
    assert_eq!(seen.uri, "/over-h1");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    // A client offering no ALPN at all gets HTTP/1.1.
    let plain = tls_get(addr, &ca, Some("a.test"), "a.test", &[], "/no-alpn").await;
    assert_eq!(plain.alpn, None);
    assert_eq!(plain.resp.status, 200);
    assert_eq!(up.last().uri, "/no-alpn");

    // The plain listener still says http.
    gw.get("/plain").await;
    assert_eq!(up.last().header("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn a_client_that_never_says_hello_is_cut_off_at_the_handshake_timeout() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(&["a.test"]).write(dir.path(), "a");
    ca.issue(&["b.test"]).write(dir.path(), "b");
    let gw = TestGateway::start_in(dir, &manifest("300ms", ECHO)).await;
    let addr = gw.gateway.tls_addrs()[0];

    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the gateway kept a silent connection open past its handshake timeout");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected a close, got {read:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}, before the 300ms timeout"
    );
    // Others are served meanwhile and after.
    let ok = tls_get(addr, &ca, Some("a.test"), "a.test", BOTH, "/").await;
    assert_eq!(ok.resp.status, 200);
}

#[tokio::test]
async fn renewed_certificate_files_are_served_to_new_connections() {
    let ca = TestCa::new();
    let (mut gw, a, _) = start(&ca, ECHO).await;
    gw.gateway.watch();
    // Give the watcher a moment to register its directories.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = gw.gateway.tls_addrs()[0];

    // An open connection keeps the certificate it was served.
    let open = tls_connect(addr, &ca, Some("a.test"), "a.test", BOTH)
        .await
        .unwrap();
    let renewed = ca.issue(&["a.test", "*.a.test"]);
    renewed.write(gw.dir(), "a");
    let ca = &ca;
    let want = &renewed.der;
    eventually(
        Duration::from_secs(10),
        "the renewed certificate",
        || async move {
            tls_get(addr, ca, Some("a.test"), "a.test", BOTH, "/")
                .await
                .peer_cert
                == *want
        },
    )
    .await;
    assert!(open.get_ref().1.peer_certificates().unwrap()[0] == a.der);
    // b.test was not touched.
    let b = tls_get(addr, ca, Some("b.test"), "b.test", BOTH, "/").await;
    assert!(b.peer_cert != renewed.der);
}

#[tokio::test]
async fn a_broken_certificate_is_refused_on_reload_and_the_old_one_keeps_serving() {
    let ca = TestCa::new();
    let (gw, a, b) = start(&ca, ECHO).await;
    let addr = gw.gateway.tls_addrs()[0];

    // Truncated mid-copy: no complete PEM block.
    let cert = gw.dir().join("a.pem");
    std::fs::write(&cert, &a.cert_pem[..40]).unwrap();
    let err = gw.gateway.reload().await.unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "TLS certificate `{}` holds no PEM certificate",
            cert.display()
        )),
        "{err}"
    );
    assert!(
        logs().contains(&cert.display().to_string()),
        "no log line names the file"
    );
    let still = tls_get(addr, &ca, Some("a.test"), "a.test", BOTH, "/").await;
    assert!(
        still.peer_cert == a.der,
        "the old certificate must keep serving"
    );

    // A certificate with another certificate's key is refused too.
    std::fs::write(&cert, &a.cert_pem).unwrap();
    std::fs::write(gw.dir().join("a-key.pem"), &b.key_pem).unwrap();
    let err = gw.gateway.reload().await.unwrap_err().to_string();
    assert!(err.contains("does not match certificate"), "{err}");
    let still = tls_get(addr, &ca, None, "a.test", BOTH, "/").await;
    assert!(still.peer_cert == a.der);
}

#[tokio::test]
async fn an_https_upstream_signed_by_the_configured_ca_is_proxied() {
    let ca = TestCa::new();
    let origin = TlsUpstream::start("tls-origin", &ca.issue(&["127.0.0.1"])).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let gw = TestGateway::start_in(
        dir,
        &format!(
            "[upstreams.secure]\ntargets = [\"{}\"]\nca = \"ca.pem\"\n\n\
             [[routes]]\nid = \"tls-upstream\"\nupstream = \"secure\"\n",
            origin.url()
        ),
    )
    .await;
    let r = gw.get("/through?q=1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "upstream tls-origin");
    let seen = origin.last();
    assert_eq!(seen.uri, "/through?q=1");
    // ALPN picked HTTP/2 towards the origin.
    assert_eq!(seen.version, http::Version::HTTP_2);
}

#[tokio::test]
async fn an_https_upstream_with_an_untrusted_certificate_gives_502() {
    let origin_ca = TestCa::new();
    let origin = TlsUpstream::start("tls-untrusted", &origin_ca.issue(&["127.0.0.1"])).await;
    let dir = tempfile::tempdir().unwrap();
    // The gateway trusts another CA only.
    std::fs::write(dir.path().join("ca.pem"), TestCa::new().pem()).unwrap();
    let gw = TestGateway::start_in(
        dir,
        &format!(
            "[upstreams.untrusted]\ntargets = [\"{}\"]\nca = \"ca.pem\"\n\n\
             [[routes]]\nid = \"tls-untrusted\"\nupstream = \"untrusted\"\n",
            origin.url()
        ),
    )
    .await;
    let r = gw.get("/").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(
        origin.seen().is_empty(),
        "no request may reach an unverified origin"
    );
}
