//! # request-size: per-route limits on what a request may declare
//!
//! Tighter than the gateway's own `[server]` limits, for one route: a body
//! whose `Content-Length` passes `max_body` gets 413 before any of it is
//! read; a body without a length (chunked) gets 411 when `require_length`;
//! a header list over `max_header_bytes` or `max_headers` gets 431; a
//! target (path and query) over `max_url` gets 414. The gateway's
//! `max_body_bytes` still caps what a chunked body may stream. Headers are
//! counted as the upstream would get them: with the gateway's
//! `X-Forwarded-*`, `X-Request-Id` and `traceparent`.

use serde::Deserialize;
use weir_sdk::units::ByteSize;
use weir_sdk::{Action, Hooks, Plugin, Request, reply};

/// The route's config table; give at least one limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Largest declared body (`Content-Length`).
    pub max_body: Option<ByteSize>,
    /// Refuse bodies that declare no length (chunked) with 411.
    #[serde(default)]
    pub require_length: bool,
    /// Largest header list: names and values, plus 4 bytes per field (`: ` and CRLF).
    pub max_header_bytes: Option<ByteSize>,
    /// Most header fields.
    pub max_headers: Option<u32>,
    /// Longest path and query.
    pub max_url: Option<ByteSize>,
}

/// The filter.
#[derive(Debug)]
pub struct RequestSize {
    config: Config,
}

fn too_large(status: u16, what: &str) -> Action {
    reply(status).text(format!("{what}\n")).into()
}

impl Plugin for RequestSize {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let c = &config;
        if c.max_body.is_none()
            && !c.require_length
            && c.max_header_bytes.is_none()
            && c.max_headers.is_none()
            && c.max_url.is_none()
        {
            return Err("give at least one of max_body, require_length, max_header_bytes, max_headers, max_url".into());
        }
        Ok(Self { config })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let c = &self.config;
        if let Some(max) = c.max_url {
            let len = req.raw_path().len() + req.query().map_or(0, |q| q.len() + 1);
            if len as u64 > max.0 {
                return too_large(414, "request target too long");
            }
        }
        if c.max_header_bytes.is_some() || c.max_headers.is_some() {
            let headers = req.headers();
            if c.max_headers
                .is_some_and(|max| headers.len() as u64 > u64::from(max))
            {
                return too_large(431, "too many request headers");
            }
            let bytes: u64 = headers
                .iter()
                .map(|h| (h.name.len() + h.value.len() + 4) as u64)
                .sum();
            if c.max_header_bytes.is_some_and(|max| bytes > max.0) {
                return too_large(431, "request headers too large");
            }
        }
        if c.max_body.is_some() || c.require_length {
            match req
                .header("content-length")
                .map(|v| v.trim().parse::<u64>())
            {
                Some(Ok(len)) => {
                    if c.max_body.is_some_and(|max| len > max.0) {
                        return too_large(413, "request body too large");
                    }
                }
                // The gateway refuses malformed framing before plugins run.
                Some(Err(_)) => return too_large(400, "bad content-length"),
                None => {
                    let chunked = req
                        .header("transfer-encoding")
                        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
                    if chunked && c.require_length {
                        return too_large(411, "length required");
                    }
                }
            }
        }
        Action::Continue
    }
}

weir_sdk::export!(RequestSize);
