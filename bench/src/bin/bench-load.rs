//! Load tools `wrk` and `h2load` lack.
//!
//! - `bench-load latency ADDR PATH RATE SECS [CONNS] [HEADER:VALUE]...`: open
//!   loop. Request `i` is due at `start + i / RATE`, whatever happened to the
//!   earlier ones; a free keep-alive connection (HTTP/1.1) sends it, and its
//!   latency runs from the due time to the last byte of the response, so a
//!   stall is charged to every request it delays (no coordinated omission).
//!   The first half second is a warm-up and not recorded. A server that
//!   cannot keep up is given one second of grace after the schedule ends;
//!   requests still unsent then are counted as `dropped`. Prints one JSON
//!   line: `{"sent","completed","dropped","errors","non2xx","p50_us","p99_us",
//!   "p999_us","max_us","late_us"}` (`late_us`: the pacer's worst lateness).
//! - `bench-load hold ADDR PATH CONNS [HEADER:VALUE]...`: opens CONNS
//!   keep-alive connections, sends one request on each, keeps them all open,
//!   prints `ready OK FAILED` and waits for end of input (stdin) before
//!   closing them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const WARMUP: Duration = Duration::from_millis(500);
const GRACE: Duration = Duration::from_secs(1);

struct Target {
    addr: String,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Target {
    /// The request as bytes on the wire, for the latency run's raw writes.
    fn raw_request(&self) -> Vec<u8> {
        let mut r = format!("GET {} HTTP/1.1\r\nhost: {}\r\n", self.path, self.addr);
        for (k, v) in &self.headers {
            r.push_str(&format!("{}: {}\r\n", k, v.to_str().unwrap_or_default()));
        }
        r.push_str("\r\n");
        r.into_bytes()
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        let mut req = Request::get(self.path.as_str())
            .header("host", self.addr.as_str())
            .body(Empty::new())
            .expect("valid request");
        for (k, v) in &self.headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        req
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
        let stream = TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }
}

/// Sends one request; returns its status, the body read to the end.
async fn exchange(send: &mut SendRequest<Empty<Bytes>>, t: &Target) -> anyhow::Result<u16> {
    send.ready().await?;
    let resp = send.send_request(t.request()).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

fn parse_headers(args: &[String]) -> anyhow::Result<Vec<(HeaderName, HeaderValue)>> {
    args.iter()
        .map(|a| {
            let (k, v) = a.split_once(':').context("header must be NAME:VALUE")?;
            Ok((k.trim().parse()?, v.trim().parse()?))
        })
        .collect()
}

/// Lets a thread's sleeps end within ~1 µs of their deadline instead of the
/// default 50 µs slack (best effort: the file exists since Linux 4.6).
fn tighten_timer_slack() {
    let _ = std::fs::write("/proc/thread-self/timerslack_ns", "1");
}

#[derive(Default)]
struct Tally {
    lat_ns: Vec<u64>,
    completed: u64,
    errors: u64,
    non2xx: u64,
}

/// The shared state of a latency run: which connections are free, and when
/// the request on each busy one was due.
struct Open {
    start: Instant,
    /// Free connections (indices), and whether the pacer waits for one.
    free: std::sync::Mutex<(Vec<usize>, bool)>,
    freed: std::sync::Condvar,
    /// Due time of the request in flight on each connection (ns after `start`).
    due: Vec<AtomicU64>,
    /// Write halves: the pacer writes each request itself, the moment it is due.
    writers: Vec<std::sync::Mutex<std::net::TcpStream>>,
    tally: std::sync::Mutex<Tally>,
    completed: AtomicU64,
}

impl Open {
    fn give_back(&self, conn: usize) {
        let mut free = self.free.lock().expect("free list");
        free.0.push(conn);
        if free.1 {
            self.freed.notify_one();
        }
    }
}

/// Opens a connection: the reading half for the runtime, a blocking clone
/// of the same socket for the pacer's writes.
async fn open_conn(addr: &str) -> anyhow::Result<(TcpStream, std::net::TcpStream)> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let std = stream.into_std()?;
    let writer = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, writer))
}

/// Open loop at `rate` for `secs`. A pacer thread sleeps until each request
/// is due (1 ns timer slack) and writes it at once on a free connection;
/// one task per connection reads the responses. No HTTP client library and
/// no hand-off between the schedule and the send: the generator shares
/// CPU 0 with the origin, and every microsecond it spends is one the origin
/// lacks (its hyper client with a pacer channel cost ~40 µs per request,
/// enough to saturate CPU 0 before the system under test).
async fn latency(t: Arc<Target>, rate: f64, secs: f64, conns: usize) -> anyhow::Result<()> {
    let total = (rate * secs) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let request = t.raw_request();
    let mut readers = Vec::with_capacity(conns);
    let mut writers = Vec::with_capacity(conns);
    for _ in 0..conns {
        let (r, w) = open_conn(&t.addr).await?;
        readers.push(r);
        writers.push(std::sync::Mutex::new(w));
    }
    let start = Instant::now() + Duration::from_millis(50);
    let give_up = start + Duration::from_secs_f64(secs) + GRACE;
    let open = Arc::new(Open {
        start,
        free: std::sync::Mutex::new(((0..conns).rev().collect(), false)),
        freed: std::sync::Condvar::new(),
        due: (0..conns).map(|_| AtomicU64::new(0)).collect(),
        writers,
        tally: std::sync::Mutex::new(Tally::default()),
        completed: AtomicU64::new(0),
    });
    let mut readers_done = Vec::new();
    for (i, r) in readers.into_iter().enumerate() {
        readers_done.push(tokio::spawn(read_responses(open.clone(), t.clone(), i, r)));
    }
    let pacer = {
        let open = open.clone();
        std::thread::spawn(move || pace(&open, &request, total, interval, give_up))
    };
    let (sent, late) =
        tokio::task::spawn_blocking(move || pacer.join().expect("pacer thread")).await?;
    // Wait for what is in flight, up to the grace period.
    while open.completed.load(Ordering::Relaxed) + open.tally.lock().expect("tally").errors < sent
        && Instant::now() < give_up
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for r in readers_done {
        r.abort();
    }
    let all = std::mem::take(&mut *open.tally.lock().expect("tally"));
    let mut lat = all.lat_ns;
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    println!(
        "{}",
        serde_json::json!({
            "sent": total,
            "completed": all.completed,
            "dropped": total.saturating_sub(all.completed + all.errors),
            "recorded": lat.len(),
            "errors": all.errors,
            "non2xx": all.non2xx,
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
            "p999_us": pct(0.999),
            "max_us": lat.last().map(|&n| n as f64 / 1000.0),
            "late_us": late.as_secs_f64() * 1e6,
        })
    );
    Ok(())
}

/// The schedule: request `i` is due at `start + i * interval`; it is written
/// as soon as it is due and a connection is free. Returns the requests
/// written and the worst lateness of the pacer's own wake-ups.
fn pace(
    open: &Open,
    request: &[u8],
    total: u64,
    interval: Duration,
    give_up: Instant,
) -> (u64, Duration) {
    use std::io::Write as _;
    tighten_timer_slack();
    let mut late = Duration::ZERO;
    for i in 0..total {
        let due = open.start + interval.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            late = late.max(now - due);
        }
        let conn = {
            let mut free = open.free.lock().expect("free list");
            loop {
                if let Some(c) = free.0.pop() {
                    free.1 = false;
                    break Some(c);
                }
                if Instant::now() > give_up {
                    break None;
                }
                free.1 = true;
                free = open
                    .freed
                    .wait_timeout(free, Duration::from_millis(1))
                    .expect("free list")
                    .0;
            }
        };
        let Some(conn) = conn else { return (i, late) };
        let due_ns = (due - open.start).as_nanos() as u64;
        open.due[conn].store(due_ns, Ordering::Relaxed);
        let mut w = open.writers[conn].lock().expect("writer");
        if w.write_all(request).is_err() {
            // The reader sees the connection fail and counts the error.
            continue;
        }
    }
    (total, late)
}

/// Reads responses on connection `i` (any framing: Content-Length, chunked,
/// or none for 1xx/204/304), records each one's latency from its due time,
/// and frees the connection for the next request. A broken connection is
/// replaced.
async fn read_responses(open: Arc<Open>, t: Arc<Target>, i: usize, mut r: TcpStream) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = bytes::BytesMut::with_capacity(16 * 1024);
    loop {
        let status = loop {
            if let Some((status, len)) = parse_response(&buf) {
                let _ = buf.split_to(len);
                break Some(status);
            }
            match r.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break None,
                Ok(_) => {}
            }
        };
        let done = Instant::now();
        let due = open.start + Duration::from_nanos(open.due[i].load(Ordering::Relaxed));
        {
            let mut tally = open.tally.lock().expect("tally");
            match status {
                Some(s) => {
                    tally.completed += 1;
                    if !(200..300).contains(&s) {
                        tally.non2xx += 1;
                    }
                    if due >= open.start + WARMUP {
                        tally.lat_ns.push((done - due).as_nanos() as u64);
                    }
                }
                None => tally.errors += 1,
            }
        }
        open.completed
            .fetch_add(u64::from(status.is_some()), Ordering::Relaxed);
        if status.is_none() {
            buf.clear();
            loop {
                match open_conn(&t.addr).await {
                    Ok((reader, writer)) => {
                        r = reader;
                        *open.writers[i].lock().expect("writer") = writer;
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        }
        open.give_back(i);
    }
}

/// The status and length of the first complete response in `buf`, if there is one.
fn parse_response(buf: &[u8]) -> Option<(u16, usize)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let mut length = None;
    let mut chunked = false;
    for line in head.split("\r\n").skip(1) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if k.eq_ignore_ascii_case("content-length") {
            length = v.trim().parse::<usize>().ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding")
            && v.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    if chunked {
        let mut at = head_end;
        loop {
            let line_end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size_text = std::str::from_utf8(&buf[at..line_end]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                // No trailers expected: the final CRLF.
                return (buf.len() >= at + 2).then_some((status, at + 2));
            }
            at += size + 2;
            if at > buf.len() {
                return None;
            }
        }
    }
    let body = if (100..200).contains(&status) || status == 204 || status == 304 {
        0
    } else {
        length.unwrap_or(0)
    };
    (buf.len() >= head_end + body).then_some((status, head_end + body))
}

async fn hold(t: Arc<Target>, conns: usize) -> anyhow::Result<()> {
    // A few hundred at a time: the point is many idle connections, not a connect storm.
    let gate = Arc::new(Semaphore::new(200));
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let (gate, t) = (gate.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.ok()?;
            let mut send = t.connect().await.ok()?;
            exchange(&mut send, &t).await.ok()?;
            Some(send)
        }));
    }
    let mut held = Vec::with_capacity(conns);
    let mut failed = 0;
    for task in tasks {
        match task.await? {
            Some(s) => held.push(s),
            None => failed += 1,
        }
    }
    println!("ready {} {failed}", held.len());
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await?;
    drop(held);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench-load latency ADDR PATH RATE SECS [CONNS] [H:V]... | hold ADDR PATH CONNS [H:V]...";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("latency") if args.len() >= 5 => {
            let conns_given = args.get(5).is_some_and(|a| !a.contains(':'));
            let conns = if conns_given { args[5].parse()? } else { 16 };
            let t = Arc::new(Target {
                addr: args[1].clone(),
                path: args[2].clone(),
                headers: parse_headers(&args[if conns_given { 6 } else { 5 }..])?,
            });
            let (rate, secs) = (args[3].parse()?, args[4].parse()?);
            rt.block_on(latency(t, rate, secs, conns))
        }
        Some("hold") if args.len() >= 4 => {
            let t = Arc::new(Target {
                addr: args[1].clone(),
                path: args[2].clone(),
                headers: parse_headers(&args[4..])?,
            });
            rt.block_on(hold(t, args[3].parse()?))
        }
        _ => bail!("{usage}"),
    }
}
