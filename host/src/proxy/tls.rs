//! TLS termination: HTTPS listeners with a handshake timeout. Certificates
//! (chosen by SNI, ALPN h2 and http/1.1) are loaded by [`crate::tls`] into
//! the snapshot ([`crate::snapshot::TlsSettings`]), and each accepted
//! connection reads the acceptor config of the snapshot current at that
//! moment: a reload that changes the PEM files serves the new certificates
//! to new connections, while open connections keep theirs.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{ConnInfo, Connections, serve_connection};
use crate::snapshot::Snapshot;

/// Accepts TLS connections on `listener` until the gateway drains. Each
/// connection takes a slot of the shared cap before its handshake, which must
/// finish within the snapshot's `handshake_timeout`.
pub async fn serve(
    listener: TcpListener,
    current: Arc<ArcSwap<Snapshot>>,
    conns: Arc<Connections>,
) {
    let mut phase = conns.phase();
    // A reload that drops `[server.tls]` cannot close this listener (that
    // needs a restart), so it keeps the last certificates it had.
    let mut last = None;
    while let Some((slot, stream, peer)) = conns.next(&listener, &mut phase, "tls").await {
        if let Some(tls) = &current.load().server.tls {
            last = Some((tls.config.clone(), tls.handshake_timeout));
        }
        let Some((config, timeout)) = last.clone() else {
            return;
        };
        let (current, conns) = (current.clone(), conns.clone());
        tokio::spawn(async move {
            let handshake = TlsAcceptor::from(config).accept(stream);
            let stream = match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(s)) => s,
                // Scanners and health probes fail handshakes all day: debug, not warn.
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, ?timeout, "TLS handshake timed out");
                    return;
                }
            };
            let info = ConnInfo { peer, tls: true };
            serve_connection(stream, info, current, conns, slot).await;
        });
    }
}
