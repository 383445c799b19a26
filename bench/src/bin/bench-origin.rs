//! The benchmark origin: a minimal hyper server (HTTP/1.1 and h2c) that
//! answers `GET /big` with 64 KiB, `/introspect` as an RFC 7662 identity
//! provider that finds every token active (no `exp`), and anything else with
//! a small body (after reading the request body, if any).
//!
//! `bench-origin 127.0.0.1:9000`

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// The small body: what a typical JSON API answer to a GET might weigh.
const SMALL: &[u8] = b"{\"ok\":true,\"id\":42,\"name\":\"weir-bench\"}\n";
/// The introspection answer (`/introspect`): active, two claims, no `exp`.
const ACTIVE: &[u8] = b"{\"active\":true,\"sub\":\"bench\",\"scope\":\"read write\"}";
/// Size of the large body (`/big`).
const BIG_LEN: usize = 64 << 10;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let big = Bytes::from(vec![b'x'; BIG_LEN]);
    eprintln!("bench-origin listening on {addr}");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let big = big.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let body = match req.uri().path() {
                    "/big" => big.clone(),
                    "/introspect" => Bytes::from_static(ACTIVE),
                    _ => Bytes::from_static(SMALL),
                };
                async move {
                    // Read a request body whole (the POST cases): the connection stays reusable.
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(body))
                            .expect("static response"),
                    )
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
