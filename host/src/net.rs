//! The accept loop shared by the proxy and admin listeners: a leaf that
//! knows TCP and tokio, not what is served on the connections.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

/// The next connection on `listener`, or `None` once `stop` no longer says
/// [`Serving::serving`]. Accept errors (usually EMFILE) are logged and
/// retried after a short back-off instead of spinning.
pub(crate) async fn accept<T: Serving>(
    listener: &TcpListener,
    stop: &mut watch::Receiver<T>,
    what: &str,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        if !stop.borrow_and_update().serving() {
            return None;
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            changed = stop.changed() => if changed.is_err() { return None },
        }
    }
}

/// A stop signal as seen by an accept loop.
pub(crate) trait Serving {
    /// Whether listeners should keep accepting.
    fn serving(&self) -> bool;
}

impl Serving for bool {
    /// `true` means "stop".
    fn serving(&self) -> bool {
        !*self
    }
}
