//! `weir test CASES.toml`: policy as code. Each case sends requests through
//! a manifest's real routes and compiled plugins, in-process, with a stub
//! upstream that answers as the case says, and checks what came of them:
//! status, headers, body, the route chosen, who answered, the request
//! variables set, and what the upstream received.
//!
//! 1. the cases file is read ([`file`]; unknown keys refused, errors with line and column);
//! 2. each manifest it names is loaded once, its upstreams pointed at the [`stub`];
//! 3. each case runs from empty host state and the real clock; steps may
//!    move the clock (`advance`, `time`) so windows and buckets can be tested
//!    without waiting;
//! 4. the [`Report`] says per case what passed and, for a failure, what differed.

pub mod file;
pub mod stub;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full, Limited};
use serde::Serialize;

use crate::config::{ConfigError, Location, Manifest};
use crate::plugin::Runtime;
use crate::plugin::host::clock;
use crate::proxy::{ConnInfo, Observed, handle_observed};
use crate::snapshot::{ConfigErrors, Snapshot};
use crate::telemetry::metrics::Metrics;
use file::{CasesFile, Expect, RequestSpec, Step, StubAnswer};
use stub::{Received, Stub};

/// Largest response body a case reads.
const MAX_BODY: usize = 1 << 20;
/// The client address when a request names none (TEST-NET-1).
pub(crate) const DEFAULT_PEER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 10)),
    40000,
);

/// Why the cases could not run at all (as opposed to a case failing).
#[derive(Debug, thiserror::Error)]
pub enum CasesError {
    /// The cases file is unreadable, malformed, or a case is incomplete.
    #[error("{0}")]
    File(ConfigError),
    /// A manifest a case names does not load.
    #[error("{0}")]
    Manifest(ConfigErrors),
    /// The stub upstream could not listen.
    #[error("cannot start the stub upstream: {0}")]
    Stub(std::io::Error),
}

/// The outcome of a whole file.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The cases file.
    pub file: PathBuf,
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
    /// Every case, in file order.
    pub cases: Vec<CaseResult>,
}

/// The outcome of one case.
#[derive(Debug, Serialize)]
pub struct CaseResult {
    /// The case's `name`.
    pub name: String,
    /// True when every expectation held.
    pub passed: bool,
    /// Requests sent.
    pub requests: usize,
    /// What differed (empty when passed).
    pub failures: Vec<Mismatch>,
}

/// One expectation that did not hold.
#[derive(Debug, Serialize)]
pub struct Mismatch {
    /// Which request: `step 2`, `step 1, request 3 of 5`.
    pub at: String,
    /// What was checked: `status`, `header retry-after`, `upstream header x-consumer`...
    pub what: String,
    /// The expected value.
    pub expected: String,
    /// The value seen.
    pub got: String,
}

impl Report {
    /// The runner's text output: one line per case, then what differed.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for case in &self.cases {
            let verdict = if case.passed { "ok    " } else { "FAILED" };
            let _ = writeln!(out, "{verdict}  {}", case.name);
            for m in &case.failures {
                let _ = writeln!(
                    out,
                    "          {}: {}: expected {}, got {}",
                    m.at, m.what, m.expected, m.got
                );
            }
        }
        let _ = writeln!(
            out,
            "{}: {} passed, {} failed",
            self.file.display(),
            self.passed,
            self.failed
        );
        out
    }
}

/// Runs every case of the file at `path`.
///
/// Moves the process-wide plugin clock and clears every plugin's host state
/// between cases: run it in a process of its own (as `weir test` does), never
/// beside a serving gateway.
pub async fn run(path: &Path) -> Result<Report, CasesError> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| CasesError::File(ConfigError::new(path, None, format!("cannot read: {e}"))))?;
    let file: CasesFile = toml::from_str(&source).map_err(|e| {
        let at = e.span().map(|s| Location::from_offset(&source, s.start));
        CasesError::File(ConfigError::new(path, at, e.message().to_string()))
    })?;
    let here = |span: std::ops::Range<usize>| Some(Location::from_offset(&source, span.start));
    let base = path.parent().unwrap_or(Path::new("."));
    let stub = Stub::start().await.map_err(CasesError::Stub)?;
    let metrics = Arc::new(Metrics::new());
    let runtime = Runtime::global();
    let mut snapshots: HashMap<PathBuf, Arc<Snapshot>> = HashMap::new();
    let mut results = Vec::new();

    for case in &file.cases {
        let span = case.span();
        let case = case.get_ref();
        let invalid =
            |msg: String| CasesError::File(ConfigError::new(path, here(span.clone()), msg));
        let manifest = case
            .manifest
            .as_ref()
            .or(file.manifest.as_ref())
            .map(|m| base.join(m.get_ref()))
            .ok_or_else(|| {
                invalid(format!(
                    "case {:?} names no manifest: add `manifest = \"gateway.toml\"` at the top of the file or in the case",
                    case.name
                ))
            })?;
        let snap = match snapshots.get(&manifest) {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(load(&manifest, &stub, runtime, &metrics).await?);
                snapshots.insert(manifest.clone(), s.clone());
                s
            }
        };
        let steps = steps_of(case).map_err(&invalid)?;
        runtime.clear_state();
        clock::reset_wall();
        results.push(run_case(case, &steps, &snap, &stub, &file.upstream, &invalid).await?);
    }
    clock::reset_wall();
    let passed = results.iter().filter(|r| r.passed).count();
    Ok(Report {
        file: path.to_path_buf(),
        passed,
        failed: results.len() - passed,
        cases: results,
    })
}

/// One case's steps in order, from the state the caller prepared.
async fn run_case(
    case: &file::Case,
    steps: &[Step],
    snap: &Arc<Snapshot>,
    stub: &Stub,
    default_answer: &StubAnswer,
    invalid: &dyn Fn(String) -> CasesError,
) -> Result<CaseResult, CasesError> {
    let mut result = CaseResult {
        name: case.name.clone(),
        passed: true,
        requests: 0,
        failures: Vec::new(),
    };
    let mut now: Option<u64> = None;
    for (i, step) in steps.iter().enumerate() {
        let label = |n: u32, of: u32| {
            if steps.len() == 1 && of == 1 {
                "request".to_string()
            } else if of == 1 {
                format!("step {}", i + 1)
            } else {
                format!("step {}, request {n} of {of}", i + 1)
            }
        };
        if let Some(d) = step.advance {
            let ms = d.0.as_millis() as u64;
            clock::advance(ms);
            now = now.map(|t| t + ms);
        }
        if let Some(t) = &step.time {
            let t = file::unix_ms(t).map_err(|e| invalid(format!("step {}: {e}", i + 1)))?;
            if let Some(prev) = now {
                let ahead = t.checked_sub(prev).ok_or_else(|| {
                    invalid(format!(
                        "step {}: time goes backwards; a case's clock only moves forward",
                        i + 1
                    ))
                })?;
                clock::advance(ahead);
            }
            clock::set_wall_ms(t);
            now = Some(t);
        }
        let request = build(&step.request).map_err(|e| invalid(format!("step {}: {e}", i + 1)))?;
        let answer = step.upstream.as_ref().unwrap_or(default_answer);
        check_answer(answer).map_err(|e| invalid(format!("step {}: {e}", i + 1)))?;
        let repeat = step.repeat.unwrap_or(1).max(1);
        for n in 1..=repeat {
            stub.prepare(answer.clone());
            let (req, conn) = request.clone();
            let seen = send(snap, req, conn).await;
            result.requests += 1;
            let before = result.failures.len();
            compare(
                &step.expect,
                &seen,
                &stub.received(),
                &label(n, repeat),
                &mut result.failures,
            );
            if result.failures.len() > before {
                break;
            }
        }
    }
    result.passed = result.failures.is_empty();
    Ok(result)
}

/// Loads `manifest` with every upstream target pointed at the stub (and no
/// health checks) and host state in memory, so routes, plugins and their
/// config are the real ones and nothing outside the process is touched.
async fn load(
    manifest: &Path,
    stub: &Stub,
    runtime: &Arc<Runtime>,
    metrics: &Arc<Metrics>,
) -> Result<Snapshot, CasesError> {
    let m = Manifest::load(manifest).map_err(|e| CasesError::Manifest(e.into()))?;
    load_against_stub(m, stub, runtime, metrics)
        .await
        .map_err(CasesError::Manifest)
}

/// Resolves `m` as [`load`] describes (also for [`crate::testkit`]).
pub(crate) async fn load_against_stub(
    mut m: Manifest,
    stub: &Stub,
    runtime: &Arc<Runtime>,
    metrics: &Arc<Metrics>,
) -> Result<Snapshot, ConfigErrors> {
    let url = stub.url();
    // Hermetic and on the case's clock: host state in memory, whatever `[state]` says.
    m.doc.state = None;
    for up in m.doc.upstreams.values_mut() {
        for t in &mut up.targets {
            t.get_mut().url.clone_from(&url);
        }
        up.health = None;
        up.ca = None;
        up.protocol = crate::config::UpstreamProtocol::Http1;
    }
    for route in &mut m.doc.routes {
        let up = route.get_mut().upstream.get_mut();
        if up.contains(':') {
            // A URL or `builtin:echo`, not an `[upstreams]` name.
            up.clone_from(&url);
        }
    }
    Snapshot::from_manifest(&m, runtime, metrics).await
}

/// A case's steps: `[[case.steps]]`, or the one step written in the case itself.
fn steps_of(case: &file::Case) -> Result<Vec<Step>, String> {
    let single = case.request.is_some()
        || case.expect.is_some()
        || case.upstream.is_some()
        || case.repeat.is_some()
        || case.advance.is_some()
        || case.time.is_some();
    match (&case.request, case.steps.is_empty()) {
        (Some(request), true) => Ok(vec![Step {
            request: request.clone(),
            expect: case.expect.clone().unwrap_or_default(),
            upstream: case.upstream.clone(),
            repeat: case.repeat,
            advance: case.advance,
            time: case.time,
        }]),
        (None, false) if !single => Ok(case.steps.clone()),
        (None, true) => Err(format!(
            "case {:?} has no request: add `request = {{ target = \"/\" }}` or `[[case.steps]]`",
            case.name
        )),
        _ => Err(format!(
            "case {:?} has both `steps` and a request of its own: move the request into a step",
            case.name
        )),
    }
}

/// A request as a client sends it: `Host: localhost` unless given, and a
/// `Content-Length` for a body unless the headers frame it.
pub(crate) fn client_request<'a>(
    method: &str,
    target: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, String> {
    if !target.starts_with('/') {
        return Err(format!(
            "request target {target:?} must start with `/` (path and query)"
        ));
    }
    let mut b = Request::builder().method(method).uri(target);
    let (mut has_host, mut has_length) = (false, false);
    for (name, value) in headers {
        has_host |= name.eq_ignore_ascii_case("host");
        has_length |= name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding");
        b = b.header(name, value);
    }
    if !has_host {
        b = b.header(http::header::HOST, "localhost");
    }
    if !body.is_empty() && !has_length {
        b = b.header(http::header::CONTENT_LENGTH, body.len());
    }
    b.body(Full::new(body)).map_err(|e| format!("request: {e}"))
}

/// A step's request, and the connection it comes from.
fn build(spec: &RequestSpec) -> Result<(Request<Full<Bytes>>, ConnInfo), String> {
    let headers = spec
        .headers
        .iter()
        .flat_map(|(n, vs)| vs.values().iter().map(move |v| (n.as_str(), v.as_str())));
    let req = client_request(
        &spec.method,
        &spec.target,
        headers,
        Bytes::from(spec.body.clone()),
    )?;
    let peer = match spec.client.as_deref() {
        None => DEFAULT_PEER,
        Some(client) => client
            .parse::<SocketAddr>()
            .or_else(|_| {
                client
                    .parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, DEFAULT_PEER.port()))
            })
            .map_err(|_| format!("client {client:?} is not an IP address (or IP:port)"))?,
    };
    Ok((req, ConnInfo { peer, tls: false }))
}

fn check_answer(a: &StubAnswer) -> Result<(), String> {
    http::StatusCode::from_u16(a.status)
        .map_err(|_| format!("upstream status {} is not an HTTP status", a.status))?;
    for (name, value) in &a.headers {
        http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("upstream header name {name:?} is not valid"))?;
        http::HeaderValue::from_str(value)
            .map_err(|_| format!("upstream header {name}: value {value:?} is not valid"))?;
    }
    Ok(())
}

/// What the client got.
pub(crate) struct Seen {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Result<Bytes, String>,
    pub(crate) observed: Observed,
}

/// Sends one request through `snap` in-process and reads the whole answer.
pub(crate) async fn send(snap: &Arc<Snapshot>, req: Request<Full<Bytes>>, conn: ConnInfo) -> Seen {
    let (resp, observed) = handle_observed(snap.clone(), req, conn).await;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| format!("(body failed: {e})"));
    Seen {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        observed,
    }
}

/// All values of `name`, joined by `, `; `None` when absent.
fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

fn quoted(v: Option<&str>) -> String {
    v.map_or_else(|| "(absent)".to_string(), |v| format!("{v:?}"))
}

fn compare(e: &Expect, seen: &Seen, upstream: &[Received], at: &str, out: &mut Vec<Mismatch>) {
    let mut differs = |what: String, expected: String, got: String| {
        out.push(Mismatch {
            at: at.to_string(),
            what,
            expected,
            got,
        });
    };
    if let Some(status) = e.status
        && status != seen.status
    {
        differs("status".into(), status.to_string(), seen.status.to_string());
    }
    if let Some(route) = &e.route {
        let got = seen.observed.route.as_deref();
        if got != Some(route.as_str()) {
            differs("route".into(), format!("{route:?}"), quoted(got));
        }
    }
    if let Some(who) = &e.answered_by {
        let got = seen.observed.answered_by.as_deref().unwrap_or("upstream");
        if got != who {
            differs("answered_by".into(), format!("{who:?}"), format!("{got:?}"));
        }
    }
    headers_match(
        "header",
        &e.headers,
        &e.present,
        &e.absent,
        &seen.headers,
        &mut differs,
    );
    let body = match &seen.body {
        Ok(b) => String::from_utf8_lossy(b).into_owned(),
        Err(e) => e.clone(),
    };
    if let Some(want) = &e.body
        && *want != body
    {
        differs("body".into(), format!("{want:?}"), format!("{body:?}"));
    }
    if let Some(part) = &e.body_contains
        && !body.contains(part.as_str())
    {
        differs(
            "body".into(),
            format!("to contain {part:?}"),
            format!("{body:?}"),
        );
    }
    for (name, want) in &e.vars {
        let got = seen
            .observed
            .vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str());
        if got != Some(want.as_str()) {
            differs(format!("var {name}"), format!("{want:?}"), quoted(got));
        }
    }
    if let Some(up) = &e.upstream {
        compare_upstream(up, upstream.last(), &mut differs);
    }
}

/// `expect.upstream` against the last request the stub received.
fn compare_upstream(
    up: &file::ExpectUpstream,
    reached: Option<&Received>,
    differs: &mut impl FnMut(String, String, String),
) {
    match (up.called.unwrap_or(true), reached) {
        (false, None) => {}
        (false, Some(r)) => differs(
            "upstream".into(),
            "not to be called".into(),
            format!("{} {}", r.method, r.target),
        ),
        (true, None) => differs(
            "upstream".into(),
            "to be called".into(),
            "no request".into(),
        ),
        (true, Some(r)) => {
            if let Some(m) = &up.method
                && *m != r.method
            {
                differs(
                    "upstream method".into(),
                    format!("{m:?}"),
                    format!("{:?}", r.method),
                );
            }
            if let Some(t) = &up.target
                && *t != r.target
            {
                differs(
                    "upstream target".into(),
                    format!("{t:?}"),
                    format!("{:?}", r.target),
                );
            }
            headers_match(
                "upstream header",
                &up.headers,
                &up.present,
                &up.absent,
                &r.headers,
                differs,
            );
            if let Some(b) = &up.body {
                let got = String::from_utf8_lossy(&r.body);
                if *b != got {
                    differs("upstream body".into(), format!("{b:?}"), format!("{got:?}"));
                }
            }
        }
    }
}

fn headers_match(
    kind: &str,
    equal: &std::collections::BTreeMap<String, String>,
    present: &[String],
    absent: &[String],
    headers: &HeaderMap,
    differs: &mut impl FnMut(String, String, String),
) {
    for (name, want) in equal {
        let got = header_text(headers, name);
        if got.as_deref() != Some(want.as_str()) {
            differs(
                format!("{kind} {name}"),
                format!("{want:?}"),
                quoted(got.as_deref()),
            );
        }
    }
    for name in present {
        if header_text(headers, name).is_none() {
            differs(
                format!("{kind} {name}"),
                "present".into(),
                "(absent)".into(),
            );
        }
    }
    for name in absent {
        if let Some(got) = header_text(headers, name) {
            differs(
                format!("{kind} {name}"),
                "absent".into(),
                format!("{got:?}"),
            );
        }
    }
}
