//! The HTTP front: listeners, per-connection protocol settings, limits and
//! shutdown, and the handler that runs each request through its route (see
//! [`handler`]).

mod bodies;
mod handler;
pub use handler::{Observed, RequestBody, handle, handle_observed};
pub mod headers;
pub mod tls;
mod woken;
pub mod workers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::net::{Serving, accept};
use crate::snapshot::Snapshot;
use woken::WhenWoken;

/// What the handler knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client's address (the TCP peer).
    pub peer: SocketAddr,
    /// Whether the connection is TLS (sets `X-Forwarded-Proto: https`).
    pub tls: bool,
}

/// Where a gateway's connections are in their life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepting and serving.
    Serving,
    /// Not accepting; connections finish their requests (HTTP/2 gets GOAWAY).
    Draining,
    /// The drain deadline passed: remaining connections are dropped.
    Closing,
}

/// The client connections of one gateway, across all its listeners: the
/// connection cap and the shutdown phase.
#[derive(Debug)]
pub struct Connections {
    slots: Arc<Semaphore>,
    open: AtomicUsize,
    max: usize,
    phase: watch::Sender<Phase>,
}

impl Connections {
    /// Room for `max` connections at once.
    pub fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            slots: Arc::new(Semaphore::new(max)),
            open: AtomicUsize::new(0),
            max,
            phase: watch::channel(Phase::Serving).0,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Stops accepting and asks every connection to finish; waits up to
    /// `deadline`, then drops what is left. Returns how many were dropped.
    pub async fn drain(&self, deadline: Duration) -> usize {
        self.phase.send_replace(Phase::Draining);
        let all = u32::try_from(self.max).unwrap_or(u32::MAX);
        if tokio::time::timeout(deadline, self.slots.acquire_many(all))
            .await
            .is_ok()
        {
            return 0;
        }
        let left = self.open();
        self.phase.send_replace(Phase::Closing);
        // Dropped connections give their slots back as their tasks end.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.slots.acquire_many(all)).await;
        left
    }

    fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// The next connection on `listener` with its slot, or `None` once the
    /// gateway drains. At the cap it holds the one connection it accepted
    /// until a slot frees, and the kernel backlog holds the rest. (Taking
    /// the slot first would let a worker waiting on an empty socket hold the
    /// slot another worker's pending connection needs.)
    pub(crate) async fn next(
        &self,
        listener: &TcpListener,
        phase: &mut watch::Receiver<Phase>,
        what: &str,
    ) -> Option<(OwnedSemaphorePermit, tokio::net::TcpStream, SocketAddr)> {
        let (stream, peer) = accept(listener, phase, what).await?;
        let slot = self.slot().await?;
        let _ = stream.set_nodelay(true);
        Some((slot, stream, peer))
    }

    /// A slot for one more connection, waiting while the gateway is full;
    /// `None` once draining has begun.
    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        let mut phase = self.phase();
        if *phase.borrow_and_update() != Phase::Serving {
            return None;
        }
        tokio::select! {
            permit = self.slots.clone().acquire_owned() => permit.ok(),
            _ = phase.changed() => None,
        }
    }
}

/// Accepts plain-TCP connections on `listener` until the gateway drains,
/// serving HTTP/1.1 and h2c (prior knowledge) on the same port.
pub async fn serve(
    listener: TcpListener,
    current: Arc<ArcSwap<Snapshot>>,
    conns: Arc<Connections>,
) {
    let mut phase = conns.phase();
    while let Some((slot, stream, peer)) = conns.next(&listener, &mut phase, "proxy").await {
        let info = ConnInfo { peer, tls: false };
        tokio::spawn(serve_connection(
            stream,
            info,
            current.clone(),
            conns.clone(),
            slot,
        ));
    }
}

/// Serves one client connection (plain or already TLS-wrapped) until the
/// client leaves, it idles out, or the gateway drains.
pub async fn serve_connection<I>(
    io: I,
    info: ConnInfo,
    current: Arc<ArcSwap<Snapshot>>,
    conns: Arc<Connections>,
    _slot: OwnedSemaphorePermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _open = current.load().metrics.connection();
    conns.open.fetch_add(1, Ordering::Relaxed);
    let _counted = Counted(&conns.open);
    // The few values a connection needs (a clone of the settings allocates).
    let settings = ConnSettings::from(&current.load().server);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Without a timer hyper silently ignores header_read_timeout. On a
        // kept-alive connection it also bounds the wait for the next request.
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes)
        .max_headers(settings.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        // Bounds against HTTP/2 floods: streams per connection, and resets
        // (rapid reset, CVE-2023-44487) before the connection is closed.
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256)
        // Peers that vanish without closing are found and dropped.
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));

    let activity = Arc::new(Activity::default());
    let service = {
        let activity = activity.clone();
        service_fn(move |req| {
            // Each request runs on the snapshot current when it arrives, to the end.
            let snap = current.load_full();
            let busy = activity.begin();
            async move {
                // Boxed: hyper keeps and moves the service future, and the request's
                // whole state machine (context, chain, upstream call) is kilobytes.
                let resp = Box::pin(handler::handle(snap, req, info)).await;
                drop(busy);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);

    let phase = conns.phase();
    let mut draining = *phase.borrow() != Phase::Serving;
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    // Made once, not on every turn of the loop (each `changed()` made and
    // dropped registers and unregisters a waiter under the channel's lock),
    // and polled only when the phase changed.
    let drain = WhenWoken::new(phase_reaches(phase.clone(), Phase::Draining));
    let close = WhenWoken::new(phase_reaches(phase, Phase::Closing));
    tokio::pin!(drain, close);
    let idle = settings.idle_timeout;
    // hyper's header timer starts with the first byte; a connection that
    // sends nothing (or half an HTTP/2 preface) would otherwise hold its slot
    // until `idle_timeout`.
    let first_request = Instant::now() + settings.header_read_timeout;
    let mut awaiting_first = true;
    let mut idle_check = Instant::now() + idle;
    // One timer for both deadlines, reset rather than remade, and polled
    // only when it fires (not on every wake-up of the connection).
    let timer = WhenWoken::new(tokio::time::sleep_until(first_request.min(idle_check)));
    tokio::pin!(timer);
    let result = loop {
        tokio::select! {
            // The connection first: it is what wakes the task on almost every turn.
            biased;
            r = conn.as_mut() => break r,
            () = close.as_mut() => return,
            () = drain.as_mut(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = timer.as_mut(), if awaiting_first || !draining => {
                let now = Instant::now();
                if awaiting_first && now >= first_request {
                    if !activity.started() {
                        tracing::debug!(peer = %info.peer, "no request within header_read_timeout of accept; closing");
                        return;
                    }
                    awaiting_first = false;
                }
                if !draining && now >= idle_check {
                    match activity.idle_since() {
                        // Idle long enough: close politely (GOAWAY on HTTP/2).
                        Some(since) if since.elapsed() >= idle => {
                            draining = true;
                            conn.as_mut().graceful_shutdown();
                        }
                        Some(since) => idle_check = since + idle,
                        None => idle_check = now + idle,
                    }
                }
                let next = match (awaiting_first, draining) {
                    (true, true) => first_request,
                    (true, false) => first_request.min(idle_check),
                    (false, _) => idle_check,
                };
                timer.as_mut().inner().reset(next);
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %info.peer, error = %e, "connection ended with an error");
    }
}

/// What a connection reads from `[server]` when it opens.
struct ConnSettings {
    header_read_timeout: Duration,
    max_header_bytes: usize,
    max_headers: usize,
    idle_timeout: Duration,
}

impl From<&crate::snapshot::ServerSettings> for ConnSettings {
    fn from(s: &crate::snapshot::ServerSettings) -> Self {
        ConnSettings {
            header_read_timeout: s.header_read_timeout,
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
            idle_timeout: s.idle_timeout,
        }
    }
}

struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once the gateway's phase is `at` or later; never if the
/// gateway is gone (its connections then serve until their clients leave).
async fn phase_reaches(mut phase: watch::Receiver<Phase>, at: Phase) {
    let reached = |p: &Phase| match at {
        Phase::Serving => true,
        Phase::Draining => *p != Phase::Serving,
        Phase::Closing => *p == Phase::Closing,
    };
    if phase.wait_for(reached).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Requests in flight on one connection, and when it last had none (an
/// atomic, not a lock: it is touched at the end of every request).
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    opened: Instant,
    /// Milliseconds after `opened`.
    idle_since: AtomicU64,
    /// A request has begun.
    started: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            opened: Instant::now(),
            idle_since: AtomicU64::new(0),
            started: AtomicBool::new(false),
        }
    }
}

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.started.store(true, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Whether a request has begun on this connection.
    fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// `None` while a request is in flight.
    fn idle_since(&self) -> Option<Instant> {
        (self.in_flight.load(Ordering::Relaxed) == 0)
            .then(|| self.opened + Duration::from_millis(self.idle_since.load(Ordering::Relaxed)))
    }
}

struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let now = self.0.opened.elapsed().as_millis() as u64;
        self.0.idle_since.store(now, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Serving for Phase {
    fn serving(&self) -> bool {
        *self == Phase::Serving
    }
}

/// The address a listener actually bound (useful with port 0).
pub fn bound(listener: &TcpListener) -> std::io::Result<SocketAddr> {
    listener.local_addr()
}
