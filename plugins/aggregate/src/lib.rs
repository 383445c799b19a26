//! # aggregate: one request, several upstreams, one JSON answer
//!
//! For each request of its route the filter:
//!
//! 1. fills each configured call's path template from the request
//!    (`{path}`, `{query}`, `{segment.N}`, `{header.NAME}`) and copies its
//!    `forward_headers`;
//! 2. sends every call at once (`outbound::send_all`) to its granted
//!    upstream, each within its own `timeout` and the hook's `call_timeout`;
//! 3. answers the request itself (the route's upstream is not called) with
//!    `{ "<name>": <that call's JSON>, ... }`.
//!
//! A call fails when it gets no answer, a non-2xx status, or a body that is
//! not JSON. Then `on_partial = "error"` (default) answers 502 problem+json
//! naming the failed calls; `"partial"` answers 200 with `null` for them and
//! an `errors` member (502 still when every call failed). The client sees
//! only a short reason per call; the log has the detail.
//!
//! See `README.md` for the config reference.

mod config;
mod merge;
mod template;

use serde_json::Value;
use weir_sdk::log::{self, Level};
use weir_sdk::outbound::{self, CallError, IncomingResponse, OutgoingRequest};
use weir_sdk::{Action, Hooks, Plugin, Request, metrics, reply};

use config::Call;
pub use config::{Config, Settings};

/// The filter, built once per instance from a validated [`Config`].
#[derive(Debug)]
pub struct Aggregate {
    s: Settings,
}

/// The request as templates read it: path and query read once.
struct Incoming<'r> {
    req: &'r Request,
    path: String,
    query: Option<String>,
}

impl template::Source for Incoming<'_> {
    fn path(&self) -> &str {
        &self.path
    }
    fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
    fn header(&self, name: &str) -> Option<String> {
        self.req.header(name)
    }
}

impl Plugin for Aggregate {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Self {
            s: Settings::from_config(config)?,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let incoming = Incoming {
            req,
            path: req.path(),
            query: req.query(),
        };
        // Calls whose template cannot be filled fail without being sent.
        let mut to_send: Vec<OutgoingRequest> = Vec::with_capacity(self.s.calls.len());
        let built: Vec<Result<(), String>> = self
            .s
            .calls
            .iter()
            .map(|c| build(c, &incoming).map(|r| to_send.push(r)))
            .collect();
        let mut sent = outbound::send_all(&to_send).into_iter();
        let parts = self
            .s
            .calls
            .iter()
            .zip(built)
            .map(|(call, b)| {
                let result = b.and_then(|()| match sent.next() {
                    Some(r) => outcome(call, r),
                    None => Err("not sent".to_string()),
                });
                if result.is_err() {
                    metrics::counter_add("aggregate_call_failures", &[("call", &call.name)], 1);
                }
                (call.name.as_str(), result)
            })
            .collect();
        let merged = merge::merge(parts, self.s.on_partial);
        reply(merged.status)
            .header("content-type", merged.content_type)
            .body(merged.body.to_string())
            .into()
    }
}

/// The outgoing request of `call` for this request.
fn build(call: &Call, req: &Incoming<'_>) -> Result<OutgoingRequest, String> {
    let path = call.path.render(req)?;
    let mut out =
        outbound::request(&call.method, &call.upstream, &path).header("accept", "application/json");
    if let Some(ms) = call.timeout_ms {
        out = out.timeout_ms(ms);
    }
    for h in &call.forward_headers {
        for v in req.req.header_all(h) {
            out = out.header(h, &v);
        }
    }
    Ok(out)
}

/// A call's JSON, or a short reason for the client (the detail is logged).
fn outcome(call: &Call, result: Result<IncomingResponse, CallError>) -> Result<Value, String> {
    let fail = |level: Level, reason: &str, detail: String| {
        log::log(
            level,
            "aggregate call failed",
            &[
                ("call", &call.name),
                ("upstream", &call.upstream),
                ("error", &detail),
            ],
        );
        Err(reason.to_string())
    };
    let resp = match result {
        Ok(r) => r,
        Err(CallError::NotGranted(u)) => {
            return fail(
                Level::Error,
                "not granted",
                format!("`{u}` is not in this plugin's grants.http (or does not exist)"),
            );
        }
        Err(CallError::Timeout) => return fail(Level::Warn, "timeout", "no answer in time".into()),
        Err(CallError::Unavailable(why)) => return fail(Level::Warn, "unavailable", why),
        Err(CallError::TooLarge(n)) => {
            return fail(Level::Warn, "too large", format!("body over {n} bytes"));
        }
        Err(CallError::TooManyCalls(n)) => {
            return fail(
                Level::Error,
                "too many calls",
                format!("more calls than max_outbound_calls ({n})"),
            );
        }
        Err(CallError::InvalidRequest(why)) => return fail(Level::Warn, "invalid request", why),
    };
    if !(200..300).contains(&resp.status) {
        let reason = format!("status {}", resp.status);
        return fail(Level::Warn, &reason, reason.clone());
    }
    match serde_json::from_slice::<Value>(&resp.body) {
        Ok(v) => Ok(v),
        Err(e) => fail(
            Level::Warn,
            "not JSON",
            format!("the answer is not JSON: {e}"),
        ),
    }
}

weir_sdk::export!(Aggregate);
