//! One sampled request's spans: recorded as plain values while it runs
//! (a start instant and a duration per plugin hook and upstream attempt),
//! turned into OTLP spans once, when it ends.
//!
//! The tree, all in the caller's trace:
//!
//! ```text
//! server span "GET route"      id = the span id of the traceparent plugins see
//! ├── plugin hook spans        one per on-request / on-response call
//! └── upstream attempt spans   one per attempt; the traceparent sent upstream
//!                              in that attempt names it, so the upstream's
//!                              server span is its child
//! ```
//!
//! Unsampled requests record nothing: the proxy holds `None` and skips it all.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample, SpanData};

use super::metrics::Hook;
use super::otlp::Tracer;
use super::trace::TraceContext;

/// Characters of a plugin's sha256 shown on its spans.
const SHA_PREFIX: usize = 12;

/// How a plugin hook call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookOutcome {
    /// The request (or response) went on.
    Continue,
    /// The plugin answered the request itself, with this status.
    Respond(u16),
    /// The call failed (trap, deadline, limit...): the reason label.
    Failed(&'static str),
}

/// One plugin hook call, as the chain records it.
#[derive(Debug, Clone, Copy)]
pub struct HookRecord {
    /// The plugin's index in the route's chain.
    pub plugin: usize,
    /// Which hook.
    pub hook: Hook,
    /// When the call started (instance checkout included).
    pub start: Instant,
    /// How long it took.
    pub took: Duration,
    /// How it ended.
    pub outcome: HookOutcome,
}

#[derive(Debug)]
struct Attempt {
    id: SpanId,
    target: std::sync::Arc<str>,
    start: Instant,
    took: Duration,
    status: Option<u16>,
    error: Option<String>,
}

/// A sampled request's spans so far.
#[derive(Debug)]
pub struct RequestSpans {
    trace_id: TraceId,
    /// The caller's span, when it sent a `traceparent`.
    parent: Option<SpanId>,
    server: SpanId,
    flags: TraceFlags,
    started: Instant,
    wall: SystemTime,
    /// Hook calls, in the order they ran.
    pub hooks: Vec<HookRecord>,
    /// The client as plugins see it (behind trusted proxies, the forwarded
    /// one), once known: `client.address`.
    pub client: Option<SocketAddr>,
    attempts: Vec<Attempt>,
}

/// What the server span says about the request, filled in by the proxy at its end.
#[derive(Debug)]
pub struct ServerSpan<'a> {
    /// `http.request.method`.
    pub method: &'a str,
    /// `http.route` (the route id; none when nothing matched).
    pub route: Option<&'a str>,
    /// `url.path` (normalised when it could be).
    pub path: &'a str,
    /// `http.response.status_code`.
    pub status: u16,
    /// The peer: `network.peer.address` (and `client.address` until the
    /// forwarded client is known).
    pub peer: SocketAddr,
    /// `weir.request_id`.
    pub request_id: &'a str,
    /// Who answered when the upstream did not (`weir.answered_by`).
    pub answered_by: Option<&'a str>,
}

impl Tracer {
    /// The sampling decision for a request, made once at its start. A
    /// sampled request gets a recorder; either way `trace`'s flags say the
    /// decision to everything downstream.
    pub fn begin(&self, trace: &mut TraceContext) -> Option<Box<RequestSpans>> {
        let trace_id = TraceId::from_hex(&trace.trace_id).ok()?;
        let server = SpanId::from_hex(&trace.span_id).ok()?;
        let flags = u8::from_str_radix(&trace.flags, 16).unwrap_or(0);
        let parent = trace
            .parent_id
            .as_deref()
            .and_then(|p| SpanId::from_hex(p).ok());
        let cx = match parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                p,
                TraceFlags::new(flags),
                true,
                TraceState::NONE,
            )),
            None => Context::new(),
        };
        let decision = self
            .sampler()
            .should_sample(Some(&cx), trace_id, "", &SpanKind::Server, &[], &[])
            .decision;
        let sampled = decision == SamplingDecision::RecordAndSample;
        let decided = if sampled { flags | 1 } else { flags & !1 };
        if decided != flags {
            trace.flags = format!("{decided:02x}");
        }
        let flags = decided;
        sampled.then(|| {
            Box::new(RequestSpans {
                trace_id,
                parent,
                server,
                flags: TraceFlags::new(flags),
                started: Instant::now(),
                wall: SystemTime::now(),
                hooks: Vec::new(),
                client: None,
                attempts: Vec::new(),
            })
        })
    }
}

impl RequestSpans {
    /// Starts an upstream attempt span; returns its id as 16 hex digits,
    /// for the `traceparent` sent in that attempt.
    pub fn attempt(&mut self, target: std::sync::Arc<str>) -> String {
        let id = SpanId::from(fastrand::u64(1..));
        self.attempts.push(Attempt {
            id,
            target,
            start: Instant::now(),
            took: Duration::ZERO,
            status: None,
            error: None,
        });
        format!("{id}")
    }

    /// Ends the last attempt: the status the target answered, or the error.
    pub fn attempt_done(&mut self, result: Result<u16, &impl std::fmt::Display>) {
        if let Some(a) = self.attempts.last_mut() {
            a.took = a.start.elapsed();
            match result {
                Ok(status) => a.status = Some(status),
                Err(e) => a.error = Some(e.to_string()),
            }
        }
    }

    /// Builds the spans and queues them for export. `plugin` gives the
    /// name and sha256 of the chain's plugin at an index.
    pub fn finish<'p>(
        self,
        tracer: &Tracer,
        server: &ServerSpan<'_>,
        plugin: impl Fn(usize) -> (&'p str, &'p str),
    ) {
        let mut out = Vec::with_capacity(1 + self.hooks.len() + self.attempts.len());
        out.push(self.server_span(server));
        for h in &self.hooks {
            let (name, sha) = plugin(h.plugin);
            out.push(self.hook_span(h, name, sha));
        }
        for (retry, a) in self.attempts.iter().enumerate() {
            out.push(self.attempt_span(a, retry));
        }
        tracer.submit(out);
    }

    fn at(&self, t: Instant) -> SystemTime {
        self.wall + t.saturating_duration_since(self.started)
    }

    fn span(
        &self,
        (id, parent): (SpanId, SpanId),
        kind: SpanKind,
        name: String,
        (start, end): (SystemTime, SystemTime),
        attributes: Vec<KeyValue>,
        status: Status,
    ) -> SpanData {
        SpanData {
            span_context: SpanContext::new(self.trace_id, id, self.flags, false, TraceState::NONE),
            parent_span_id: parent,
            parent_span_is_remote: id == self.server && self.parent.is_some(),
            span_kind: kind,
            name: Cow::Owned(name),
            start_time: start,
            end_time: end,
            attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status,
            instrumentation_scope: scope(),
        }
    }

    fn server_span(&self, s: &ServerSpan<'_>) -> SpanData {
        let client = self.client.unwrap_or(s.peer);
        let mut attrs = vec![
            KeyValue::new("http.request.method", s.method.to_string()),
            KeyValue::new("url.path", s.path.to_string()),
            KeyValue::new("http.response.status_code", i64::from(s.status)),
            KeyValue::new("client.address", client.ip().to_string()),
            KeyValue::new("network.peer.address", s.peer.ip().to_string()),
            KeyValue::new("network.peer.port", i64::from(s.peer.port())),
            KeyValue::new("weir.request_id", s.request_id.to_string()),
        ];
        if let Some(route) = s.route {
            attrs.push(KeyValue::new("http.route", route.to_string()));
        }
        if let Some(by) = s.answered_by {
            attrs.push(KeyValue::new("weir.answered_by", by.to_string()));
        }
        // Server spans are errors for 5xx only (HTTP semantic conventions).
        let status = if s.status >= 500 {
            attrs.push(KeyValue::new("error.type", s.status.to_string()));
            Status::error("")
        } else {
            Status::Unset
        };
        let name = match s.route {
            Some(route) => format!("{} {route}", s.method),
            None => s.method.to_string(),
        };
        let end = SystemTime::now();
        self.span(
            (self.server, self.parent.unwrap_or(SpanId::INVALID)),
            SpanKind::Server,
            name,
            (self.wall, end),
            attrs,
            status,
        )
    }

    fn hook_span(&self, h: &HookRecord, name: &str, sha: &str) -> SpanData {
        let hook = match h.hook {
            Hook::Request => "on-request",
            Hook::Response => "on-response",
        };
        let sha = &sha[..sha.len().min(SHA_PREFIX)];
        let mut attrs = vec![
            KeyValue::new("weir.plugin.name", name.to_string()),
            KeyValue::new("weir.plugin.sha256", sha.to_string()),
            KeyValue::new("weir.plugin.hook", hook),
        ];
        let status = match h.outcome {
            HookOutcome::Continue => {
                attrs.push(KeyValue::new("weir.plugin.outcome", "continue"));
                Status::Unset
            }
            HookOutcome::Respond(code) => {
                attrs.push(KeyValue::new("weir.plugin.outcome", "respond"));
                attrs.push(KeyValue::new("http.response.status_code", i64::from(code)));
                Status::Unset
            }
            HookOutcome::Failed(reason) => {
                attrs.push(KeyValue::new("weir.plugin.outcome", "failed"));
                attrs.push(KeyValue::new("weir.plugin.reason", reason));
                attrs.push(KeyValue::new("error.type", reason));
                Status::error(reason)
            }
        };
        let start = self.at(h.start);
        self.span(
            (SpanId::from(fastrand::u64(1..)), self.server),
            SpanKind::Internal,
            format!("{name} {hook}"),
            (start, start + h.took),
            attrs,
            status,
        )
    }

    fn attempt_span(&self, a: &Attempt, retry: usize) -> SpanData {
        let mut attrs = vec![
            KeyValue::new("weir.upstream.target", a.target.to_string()),
            KeyValue::new("http.request.resend_count", retry as i64),
        ];
        let status = match (&a.error, a.status) {
            (Some(e), _) => {
                attrs.push(KeyValue::new("error.type", e.clone()));
                Status::error(e.clone())
            }
            (None, Some(code)) => {
                attrs.push(KeyValue::new("http.response.status_code", i64::from(code)));
                if code >= 500 {
                    Status::error("")
                } else {
                    Status::Unset
                }
            }
            (None, None) => Status::Unset,
        };
        let start = self.at(a.start);
        self.span(
            (a.id, self.server),
            SpanKind::Client,
            "upstream attempt".to_string(),
            (start, start + a.took),
            attrs,
            status,
        )
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("weir")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}
