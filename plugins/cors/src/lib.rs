//! # cors: Cross-Origin Resource Sharing for a route
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//! is answered by the plugin: 204 with the `Access-Control-Allow-*` headers
//! when the origin, method and headers are allowed, 403 otherwise; the
//! upstream never sees it. Other requests from an allowed origin go through
//! and their responses get `Access-Control-Allow-Origin` (and credentials and
//! exposed headers as configured). Every answer that depends on `Origin`
//! says so in `Vary`.

use serde::Deserialize;
use weir_sdk::units::Duration;
use weir_sdk::{Action, Header, Hooks, Plugin, Request, Response, reply};

/// The route's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `"https://app.example.com"`, `"https://*.example.com"` (any subdomain), or `"*"`.
    pub allow_origins: Vec<String>,
    /// Methods a cross-origin request may use (default GET, HEAD, POST).
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers it may send (beyond the CORS-safelisted ones); `"*"` for any.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Allow cookies and credentials (never with the `"*"` origin).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight (default 10m).
    #[serde(default = "default_max_age")]
    pub max_age: Duration,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}
fn default_max_age() -> Duration {
    Duration::from_secs(600)
}

/// One entry of `allow_origins`.
#[derive(Debug, PartialEq, Eq)]
enum Origin {
    Any,
    Exact(String),
    /// `scheme://*.suffix`: stored as (`scheme://`, `.suffix`).
    Subdomains(String, String),
}

/// The filter, with its header values built once.
#[derive(Debug)]
pub struct Cors {
    origins: Vec<Origin>,
    methods: Vec<String>,
    methods_value: String,
    /// Lower-cased; `None` for any.
    headers: Option<Vec<String>>,
    headers_value: String,
    expose_value: String,
    credentials: bool,
    max_age: String,
}

fn parse_origin(i: usize, o: &str) -> Result<Origin, String> {
    if o == "*" {
        return Ok(Origin::Any);
    }
    let bad = || {
        format!(
            "allow_origins[{i}]: {o:?} is not an origin: write \"https://app.example.com\", \"https://*.example.com\" or \"*\""
        )
    };
    let (scheme, host) = o.split_once("://").ok_or_else(bad)?;
    if !matches!(scheme, "http" | "https") || host.is_empty() || host.contains('/') {
        return Err(bad());
    }
    let o = o.to_ascii_lowercase();
    match host.strip_prefix("*.") {
        Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => Ok(Origin::Subdomains(
            format!("{}://", scheme.to_ascii_lowercase()),
            format!(".{}", suffix.to_ascii_lowercase()),
        )),
        None if !host.contains('*') => Ok(Origin::Exact(o)),
        _ => Err(bad()),
    }
}

fn token_list(field: &str, list: &[String]) -> Result<String, String> {
    for (i, t) in list.iter().enumerate() {
        if t.is_empty()
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return Err(format!(
                "{field}[{i}]: {t:?} is not a method or header name"
            ));
        }
    }
    Ok(list.join(", "))
}

impl Cors {
    /// The value for `Access-Control-Allow-Origin` if `origin` is allowed.
    fn allow_origin(&self, origin: &str) -> Option<String> {
        let lower = origin.to_ascii_lowercase();
        let allowed = self.origins.iter().any(|o| match o {
            Origin::Any => true,
            Origin::Exact(e) => *e == lower,
            Origin::Subdomains(scheme, suffix) => lower
                .strip_prefix(scheme.as_str())
                .is_some_and(|host| host.len() > suffix.len() && host.ends_with(suffix.as_str())),
        });
        if !allowed {
            return None;
        }
        // `*` only when it is configured and no credentials are involved.
        let any = self.origins.contains(&Origin::Any) && !self.credentials;
        Some(if any { "*".into() } else { origin.to_string() })
    }

    fn preflight(&self, req: &Request, origin: &str, method: &str) -> Action {
        let refused = || {
            reply(403)
                .header("vary", "origin")
                .text("CORS preflight refused\n")
                .into()
        };
        let Some(allow_origin) = self.allow_origin(origin) else {
            return refused();
        };
        if !self.methods.iter().any(|m| m.eq_ignore_ascii_case(method)) {
            return refused();
        }
        let requested = req
            .header("access-control-request-headers")
            .unwrap_or_default();
        let asked: Vec<String> = requested
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let allow_headers = match &self.headers {
            None => requested.clone(),
            Some(list) => {
                if !asked.iter().all(|h| list.contains(h)) {
                    return refused();
                }
                self.headers_value.clone()
            }
        };
        let mut r = reply(204)
            .header("access-control-allow-origin", allow_origin)
            .header("access-control-allow-methods", self.methods_value.as_str())
            .header("access-control-max-age", self.max_age.as_str())
            .header(
                "vary",
                "origin, access-control-request-method, access-control-request-headers",
            );
        if !allow_headers.is_empty() {
            r = r.header("access-control-allow-headers", allow_headers);
        }
        if self.credentials {
            r = r.header("access-control-allow-credentials", "true");
        }
        r.into()
    }
}

impl Plugin for Cors {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        if c.allow_origins.is_empty() {
            return Err("allow_origins: give at least one origin (or \"*\")".into());
        }
        let origins = c
            .allow_origins
            .iter()
            .enumerate()
            .map(|(i, o)| parse_origin(i, o))
            .collect::<Result<Vec<_>, _>>()?;
        if c.allow_credentials && origins.contains(&Origin::Any) {
            return Err("allow_credentials: not with the \"*\" origin: any site could make credentialed requests; list the origins".into());
        }
        let methods: Vec<String> = c
            .allow_methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        let methods_value = token_list("allow_methods", &methods)?;
        let any_header = c.allow_headers.iter().any(|h| h == "*");
        let headers: Vec<String> = c
            .allow_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let headers_value = if any_header {
            String::new()
        } else {
            token_list("allow_headers", &headers)?
        };
        if any_header && c.allow_credentials {
            return Err("allow_headers: not \"*\" with allow_credentials; list the headers".into());
        }
        Ok(Cors {
            origins,
            methods,
            methods_value,
            headers: (!any_header).then_some(headers),
            headers_value,
            expose_value: token_list("expose_headers", &c.expose_headers)?,
            credentials: c.allow_credentials,
            max_age: c.max_age.0.as_secs().to_string(),
        })
    }

    fn hooks(&self) -> Hooks {
        // `on_response` reads `Origin` again: no state kept between the hooks.
        Hooks::ON_REQUEST | Hooks::ON_RESPONSE
    }

    fn on_request(&mut self, req: &Request) -> Action {
        if req.method() != "OPTIONS" {
            return Action::Continue;
        }
        match (
            req.header("origin"),
            req.header("access-control-request-method"),
        ) {
            (Some(origin), Some(method)) => self.preflight(req, &origin, &method),
            // A plain OPTIONS request is the upstream's.
            _ => Action::Continue,
        }
    }

    fn on_response(&mut self, req: &Request, resp: &Response) {
        let Some(origin) = req.header("origin") else {
            return;
        };
        // Preflights were answered (or refused) by `on_request`, whole.
        if req.method() == "OPTIONS" && req.header("access-control-request-method").is_some() {
            return;
        }
        let _ = resp.append_header("vary", "origin");
        let Some(allow_origin) = self.allow_origin(&origin) else {
            return;
        };
        let mut headers = vec![Header {
            name: "access-control-allow-origin".into(),
            value: allow_origin,
        }];
        if self.credentials {
            headers.push(Header {
                name: "access-control-allow-credentials".into(),
                value: "true".into(),
            });
        }
        if !self.expose_value.is_empty() {
            headers.push(Header {
                name: "access-control-expose-headers".into(),
                value: self.expose_value.clone(),
            });
        }
        let _ = resp.set_headers(&headers);
    }
}

weir_sdk::export!(Cors);
