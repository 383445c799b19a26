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
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore, mpsc};

const WARMUP: Duration = Duration::from_millis(500);
const GRACE: Duration = Duration::from_secs(1);

struct Target {
    addr: String,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Target {
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

#[expect(
    clippy::too_many_lines,
    reason = "pacer, workers and report share the schedule; apart they would need a struct of channels"
)]
async fn latency(t: Arc<Target>, rate: f64, secs: f64, conns: usize) -> anyhow::Result<()> {
    let total = (rate * secs) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        senders.push(t.connect().await?);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    // The pacer: a thread of its own, so the schedule never waits for the runtime.
    let pacer = std::thread::spawn(move || {
        tighten_timer_slack();
        let mut late = Duration::ZERO;
        for i in 0..total {
            let due = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            } else {
                late = late.max(now - due);
            }
            if tx.send(due).is_err() {
                break;
            }
        }
        late
    });
    let rx = Arc::new(Mutex::new(rx));
    let give_up = start + Duration::from_secs_f64(secs) + GRACE;
    let mut workers = Vec::new();
    for mut send in senders {
        let (rx, t) = (rx.clone(), t.clone());
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let due = match rx.lock().await.recv().await {
                    Some(d) => d,
                    None => break,
                };
                if Instant::now() > give_up {
                    break;
                }
                let status = exchange(&mut send, &t).await;
                let done = Instant::now();
                match status {
                    Ok(s) => {
                        tally.completed += 1;
                        if !(200..300).contains(&s) {
                            tally.non2xx += 1;
                        }
                        if due >= start + WARMUP {
                            tally.lat_ns.push((done - due).as_nanos() as u64);
                        }
                    }
                    Err(_) => {
                        tally.errors += 1;
                        match t.connect().await {
                            Ok(s) => send = s,
                            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                        }
                    }
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for w in workers {
        let t = w.await?;
        all.lat_ns.extend(t.lat_ns);
        all.completed += t.completed;
        all.errors += t.errors;
        all.non2xx += t.non2xx;
    }
    // Unblock the pacer if every worker gave up.
    drop(rx);
    let late = pacer.join().expect("pacer thread");
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
            "dropped": total - all.completed - all.errors,
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
