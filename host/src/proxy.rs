//! The HTTP front: listeners, per-connection protocol settings, and the
//! handler that runs each request through its route (see [`handler`]).

mod handler;
pub mod headers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::snapshot::Snapshot;

/// Accepts connections on `listener` until `stop` flips, serving HTTP/1.1
/// and h2c (prior knowledge) on the same port.
pub async fn serve(
    listener: TcpListener,
    current: Arc<ArcSwap<Snapshot>>,
    mut stop: watch::Receiver<bool>,
) {
    while let Some((stream, peer)) = accept(&listener, &mut stop, "proxy").await {
        let _ = stream.set_nodelay(true);
        let current = current.clone();
        tokio::spawn(async move {
            let _open = current.load().metrics.connection();
            let settings = current.load().server.clone();
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                // Without a timer hyper silently ignores header_read_timeout.
                .timer(TokioTimer::new())
                .header_read_timeout(settings.header_read_timeout)
                .max_buf_size(settings.max_header_bytes);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
            let service = service_fn(move |req| {
                // Each request runs on the snapshot current when it arrives, to the end.
                let snap = current.load_full();
                async move { Ok::<_, Infallible>(handler::handle(snap, req, peer).await) }
            });
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// The next connection on `listener`, or `None` once `stop` flips. Accept
/// errors (usually EMFILE) are logged and retried after a short back-off
/// instead of spinning.
pub(crate) async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
    what: &str,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            _ = stop.changed() => return None,
        }
    }
}

/// The address a listener actually bound (useful with port 0).
pub fn bound(listener: &TcpListener) -> std::io::Result<SocketAddr> {
    listener.local_addr()
}
