//! The lean client for plain `http://` HTTP/1.1 targets: a pool per target
//! of connections made with hyper's connection-level API
//! ([`hyper::client::conn::http1`]), reused last in, first out.
//!
//! hyper-util's legacy client pays on every request for a hashed pool key, a
//! lock shared by every target and a spawned task that waits to put the
//! connection back. Here the pool is a short `Mutex<Vec>` of its own, and a
//! connection goes back when its response body ends (or at once when it has
//! none). TLS and h2c targets keep the legacy client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::body::Body;

/// Most idle connections kept per target (what the legacy client was allowed).
const MAX_IDLE: usize = 256;

/// TCP keep-alive on upstream connections, as the legacy client had.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Idle HTTP/1.1 connections to one target.
pub struct Pool {
    /// `host:port` to connect to.
    addr: String,
    /// `Host` for requests that arrive without one (port omitted when 80).
    host: Option<HeaderValue>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// The sweeper that closes connections idle past `idle_timeout` runs.
    sweeping: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("addr", &self.addr).finish()
    }
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum Error {
    /// No connection could be opened: nothing was sent, the request may go elsewhere.
    Connect(String),
    /// The exchange on an open connection failed.
    Exchange(hyper::Error),
}

impl Pool {
    /// A pool for `authority` (an `http://` target).
    pub fn new(authority: &Authority, connect_timeout: Duration, idle_timeout: Duration) -> Pool {
        let port = authority.port_u16().unwrap_or(80);
        let host = if port == 80 {
            authority.host().to_string()
        } else {
            authority.as_str().to_string()
        };
        Pool {
            addr: format!("{}:{port}", authority.host()),
            host: HeaderValue::from_str(&host).ok(),
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            sweeping: AtomicBool::new(false),
        }
    }

    /// Sends `req` (its URI in origin form) on an idle connection or a new
    /// one. A request that an idle connection closed before sending is sent
    /// again on the next one: it never reached the target.
    pub async fn send(self: &Arc<Self>, mut req: Request<Body>) -> Result<Response<Pooled>, Error> {
        if !req.headers().contains_key(header::HOST)
            && let Some(host) = &self.host
        {
            req.headers_mut().insert(header::HOST, host.clone());
        }
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            if reused && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    // A switched connection belongs to the tunnel now.
                    let back = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS)
                        .then(|| (sender, self.clone()));
                    return Ok(resp.map(|inner| Pooled {
                        inner,
                        back,
                        ended: false,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(Error::Exchange(e.into_error())),
                },
            }
        }
    }

    fn checkout(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(c) = idle.pop() {
            if !c.sender.is_closed() && c.since.elapsed() < self.idle_timeout {
                return Some(c.sender);
            }
        }
        None
    }

    fn checkin(self: &Arc<Self>, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() >= MAX_IDLE {
                return;
            }
            idle.push(Idle { sender, since: now });
        }
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, Error> {
        let connect = tokio::net::TcpStream::connect(self.addr.as_str());
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Error::Connect(format!("tcp connect error: {e}"))),
            Err(_) => {
                return Err(Error::Connect(format!(
                    "tcp connect timed out after {:?}",
                    self.connect_timeout
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::Connect(format!("handshake: {e}")))?;
        // hyper drives each connection in a task of its own; upgrades hand it to the tunnel.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Drops connections idle for `idle_timeout` or more; LIFO reuse leaves them at the front.
    fn prune(&self) -> usize {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let expired = idle
            .iter()
            .take_while(|c| c.sender.is_closed() || c.since.elapsed() >= self.idle_timeout)
            .count();
        idle.drain(..expired);
        idle.len()
    }
}

/// Closes idle connections past their time while the pool lives and has any.
async fn sweep(pool: Weak<Pool>) {
    loop {
        let Some(every) = pool.upgrade().map(|p| p.idle_timeout / 2) else {
            return;
        };
        tokio::time::sleep(every.max(Duration::from_millis(100))).await;
        let Some(pool) = pool.upgrade() else { return };
        if pool.prune() == 0 {
            // The next checkin starts another.
            pool.sweeping.store(false, Ordering::Relaxed);
            return;
        }
    }
}

/// A response body from a pooled connection; the connection goes back to
/// its pool when the body has been read to its end, and is closed when the
/// body is dropped before (its rest cannot be told from the next response).
pub struct Pooled {
    inner: Incoming,
    back: Option<(SendRequest<Body>, Arc<Pool>)>,
    ended: bool,
}

impl http_body::Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let frame = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => self.ended = true,
            Some(Err(_)) => self.back = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some((sender, pool)) = self.back.take()
            && (self.ended || self.inner.is_end_stream())
        {
            pool.checkin(sender);
        }
    }
}
