//! Test plugin for `weir:plugin/body`, `outbound` and `cache`. It reports
//! what it saw in headers so tests can assert on what the client and the
//! upstream get:
//!
//! - `bodies = "request" | "response" | "both"` asks for bodies; `x-body`
//!   (request) and `x-resp-body` (response) carry the length read or the
//!   error; `upper = true` replaces each body with its upper-case form;
//!   `x-req-body-in-response` is what replacing the request body in
//!   `on-response` gave;
//! - `call = { upstream, path, times, all }` makes `times` calls (one by one,
//!   or in one `send-all`) and reports them in `x-call` as
//!   `STATUS:BODY` or the error, `;`-separated; `answer = true` answers the
//!   client with the first call's status and body instead;
//! - `cache = true` reports in `x-cached` what the cache holds under the
//!   request path (`miss` if nothing), then stores the request's `x-value` there.
use weir_sdk::outbound::{self, CallError, IncomingResponse};
use weir_sdk::{Action, Bodies, Hooks, Plugin, Request, Response, body, cache, reply};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    bodies: Option<String>,
    #[serde(default)]
    upper: bool,
    #[serde(default)]
    call: Option<Call>,
    #[serde(default)]
    answer: bool,
    #[serde(default)]
    cache: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Call {
    upstream: String,
    path: String,
    #[serde(default = "one")]
    times: u32,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    timeout_ms: Option<u32>,
}

fn one() -> u32 {
    1
}

struct Probe(Config);

fn shown(r: &Result<IncomingResponse, CallError>) -> String {
    match r {
        Ok(resp) => format!("{}:{}", resp.status, String::from_utf8_lossy(&resp.body)),
        Err(e) => format!("{e:?}"),
    }
}

impl Plugin for Probe {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        match config.bodies.as_deref() {
            None => {}
            Some("request") => body::buffer(Bodies::REQUEST),
            Some("response") => body::buffer(Bodies::RESPONSE),
            Some("both") => body::buffer(Bodies::REQUEST | Bodies::RESPONSE),
            Some(other) => return Err(format!("bodies: unknown {other:?}")),
        }
        Ok(Probe(config))
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST | Hooks::ON_RESPONSE
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let c = &self.0;
        if c.bodies.is_some() {
            let shown = match req.body() {
                Ok(b) => {
                    if c.upper {
                        let _ = req.set_body(&b.to_ascii_uppercase());
                    }
                    b.len().to_string()
                }
                Err(e) => format!("{e:?}"),
            };
            let _ = req.set_header("x-body", &shown);
        }
        if c.cache {
            let key = req.path();
            let held = cache::get(&key).map_or("miss".to_string(), |v| {
                String::from_utf8_lossy(&v).into_owned()
            });
            let _ = req.set_header("x-cached", &held);
            if let Some(v) = req.header("x-value") {
                cache::set(&key, v.as_bytes(), 60_000);
            }
        }
        if let Some(call) = &c.call {
            let make = || {
                let r = outbound::get(&call.upstream, &call.path).header("x-from", "probe");
                match call.timeout_ms {
                    Some(ms) => r.timeout_ms(ms),
                    None => r,
                }
            };
            let results: Vec<_> = if call.all {
                let reqs: Vec<_> = (0..call.times).map(|_| make()).collect();
                outbound::send_all(&reqs)
            } else {
                (0..call.times).map(|_| make().send()).collect()
            };
            if c.answer
                && let Some(Ok(first)) = results.first()
            {
                return reply(first.status).body(first.body.clone()).into();
            }
            let summary: Vec<String> = results.iter().map(shown).collect();
            let _ = req.set_header("x-call", &summary.join(";"));
        }
        Action::Continue
    }

    fn on_response(&mut self, req: &Request, resp: &Response) {
        let c = &self.0;
        if c.bodies.is_none() {
            return;
        }
        let shown = match resp.body() {
            Ok(b) => {
                if c.upper {
                    let _ = resp.set_body(&b.to_ascii_uppercase());
                }
                b.len().to_string()
            }
            Err(e) => format!("{e:?}"),
        };
        let _ = resp.set_header("x-resp-body", &shown);
        let again = format!("{:?}", req.set_body(b"late"));
        let _ = resp.set_header("x-req-body-in-response", &again);
    }
}

weir_sdk::export!(Probe);
