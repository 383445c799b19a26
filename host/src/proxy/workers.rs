//! Serving threads (`[server] workers`): each runs a single-threaded tokio
//! runtime with a listening socket of its own per address (`SO_REUSEPORT`:
//! the kernel spreads new connections over them), so a connection, its
//! requests and the upstream connections they open stay on one thread: no
//! work stealing, no wake-ups across threads. Admin, reloads and health
//! checks stay on the gateway's shared runtime.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Connections;
use crate::snapshot::Snapshot;

/// What a listening address serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// HTTP/1.1 and h2c.
    Plain,
    /// HTTPS (`[server.tls] listen`).
    Tls,
}

/// The serving threads of a gateway; they stop when [`Workers::stop`] is
/// called or the value is dropped.
pub struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.threads.len())
            .finish()
    }
}

/// Binds every address of `listen` once per worker (the first socket picks
/// the port when the address says `:0`, the others share it) and starts
/// `workers` threads serving them. Returns the threads and each address as bound.
pub fn start(
    workers: usize,
    listen: &[(Kind, SocketAddr)],
    current: &Arc<ArcSwap<Snapshot>>,
    conns: &Arc<Connections>,
) -> anyhow::Result<(Workers, Vec<SocketAddr>)> {
    let workers = workers.max(1);
    let mut sockets: Vec<Vec<(Kind, std::net::TcpListener)>> =
        (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for &(kind, addr) in listen {
        let first = bind(addr, workers > 1).map_err(|e| cannot_listen(addr, kind, &e))?;
        let actual = first.local_addr()?;
        bound.push(actual);
        sockets[0].push((kind, first));
        for mine in &mut sockets[1..] {
            let s = bind(actual, true).map_err(|e| cannot_listen(actual, kind, &e))?;
            mine.push((kind, s));
        }
    }
    let (stop, stopped) = watch::channel(false);
    let mut threads = Vec::new();
    for (i, mine) in sockets.into_iter().enumerate() {
        let (current, conns, stopped) = (current.clone(), conns.clone(), stopped.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name(format!("weir-worker-{i}"))
            .spawn(move || rt.block_on(run(mine, current, conns, stopped)))?;
        threads.push(thread);
    }
    Ok((Workers { threads, stop }, bound))
}

fn cannot_listen(addr: SocketAddr, kind: Kind, e: &std::io::Error) -> anyhow::Error {
    match kind {
        Kind::Plain => anyhow::anyhow!("cannot listen on {addr}: {e}"),
        Kind::Tls => anyhow::anyhow!("cannot listen on {addr} (TLS): {e}"),
    }
}

/// A listening socket; `SO_REUSEPORT` only when several workers share the address.
fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's `TcpListener::bind`: a restart does not wait for TIME_WAIT.
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// One worker: its accept loops until the gateway drains, then its
/// connections until the gateway stops (dropping the runtime drops what is left).
async fn run(
    sockets: Vec<(Kind, std::net::TcpListener)>,
    current: Arc<ArcSwap<Snapshot>>,
    conns: Arc<Connections>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut loops = tokio::task::JoinSet::new();
    for (kind, socket) in sockets {
        let listener = match TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "a worker cannot use its listening socket");
                continue;
            }
        };
        let (current, conns) = (current.clone(), conns.clone());
        match kind {
            Kind::Plain => loops.spawn(super::serve(listener, current, conns)),
            Kind::Tls => loops.spawn(super::tls::serve(listener, current, conns)),
        };
    }
    let until_stopped = async {
        while !*stopped.borrow_and_update() {
            if stopped.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::pin!(until_stopped);
    tokio::select! {
        () = &mut until_stopped => return,
        _ = async { while loops.join_next().await.is_some() {} } => {}
    }
    until_stopped.await;
}

impl Workers {
    /// Stops the threads (connections still open are dropped) and waits for them.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Dropping the sender wakes the workers; they exit without being joined.
        let _ = self.stop.send(true);
    }
}
