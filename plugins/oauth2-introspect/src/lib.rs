//! # oauth2-introspect: RFC 7662 token introspection for Weir routes
//!
//! 1. Takes the bearer token from `authorization` (RFC 6750 §2.1).
//! 2. Looks its answer up in the host cache, under a SHA-256 of the IdP
//!    endpoint and the token (never the token itself).
//! 3. On a miss, asks the IdP: `POST path` on the granted `upstream`, with
//!    `token=...` form-encoded and the gateway's client credentials (HTTP
//!    Basic) or a static header, within `timeout`. An active answer is
//!    cached until the token's `exp`, at most `cache_max_ttl`; an inactive
//!    one for `negative_ttl`.
//! 4. Answers as RFC 6750 §3 says: no token 401 with a bare `Bearer`
//!    challenge; a malformed one 400 `invalid_request`; an inactive or
//!    expired one 401 `invalid_token`; missing `required_scopes` 403
//!    `insufficient_scope`. An IdP that cannot answer (down, slow, refusing
//!    us, garbage) gets 503: fail closed, and never a trap.
//! 5. Otherwise the request goes on with `claims` mapped to headers (set,
//!    or removed when the claim is absent, so a client cannot forge them)
//!    and, with `strip_token`, without `authorization`.
//!
//! See `README.md` for the config reference.

mod config;
mod token;

use serde_json::{Map, Value};
use weir_sdk::log::{self, Level};
use weir_sdk::outbound::{self, CallError};
use weir_sdk::{Action, Hooks, Plugin, Request, cache, clock, metrics, reply};

pub use config::{Config, Settings};
use token::{Presented, Verdict};

/// The filter, built once per instance from a validated [`Config`].
#[derive(Debug)]
pub struct Introspect {
    s: Settings,
}

impl Plugin for Introspect {
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
        let authorization = req.header("authorization");
        let token = match token::bearer(authorization.as_deref()) {
            Presented::Token(t) => t,
            Presented::Missing => {
                return self.reject("missing", 401, None, "missing bearer token\n");
            }
            Presented::Malformed => {
                return self.reject(
                    "malformed",
                    400,
                    Some(r#"error="invalid_request""#.into()),
                    "malformed bearer token\n",
                );
            }
        };
        let verdict = match self.verdict(token) {
            Ok(v) => v,
            Err(why) => {
                log::log(
                    Level::Warn,
                    "token introspection failed: answering 503",
                    &[("upstream", &self.s.upstream), ("error", &why)],
                );
                metrics::counter_add("oauth2_introspect_rejected", &[("reason", "idp")], 1);
                return reply(503)
                    .header("retry-after", "1")
                    .text("token introspection unavailable\n")
                    .into();
            }
        };
        let claims = match verdict {
            Verdict::Active(claims) if Verdict::in_time(&claims, clock::now_secs()) => claims,
            _ => {
                return self.reject(
                    "invalid",
                    401,
                    Some(r#"error="invalid_token""#.into()),
                    "invalid or expired token\n",
                );
            }
        };
        let scopes = token::scopes(&claims);
        if !self
            .s
            .required_scopes
            .iter()
            .all(|r| scopes.contains(&r.as_str()))
        {
            let scope = self.s.required_scopes.join(" ");
            return self.reject(
                "scope",
                403,
                Some(format!(r#"error="insufficient_scope", scope="{scope}""#)),
                "insufficient scope\n",
            );
        }
        match self.forward(req, &claims) {
            Ok(()) => Action::Continue,
            Err(what) => {
                log::log(
                    Level::Error,
                    "cannot prepare the upstream request",
                    &[("error", &what)],
                );
                reply(500).text("internal error\n").into()
            }
        }
    }
}

impl Introspect {
    /// The token's answer: from the cache, or from the IdP (then cached).
    fn verdict(&self, token: &str) -> Result<Verdict, String> {
        let key = token::cache_key(&self.s.upstream, &self.s.path, token);
        if let Some(v) = cache::get(&key).and_then(|b| Verdict::parse(&b).ok()) {
            metrics::counter_add("oauth2_introspect_cache", &[("result", "hit")], 1);
            return Ok(v);
        }
        metrics::counter_add("oauth2_introspect_cache", &[("result", "miss")], 1);
        let v = self.introspect(token)?;
        let now = clock::now_ms();
        if let Some(ttl) = v.ttl_ms(now, self.s.max_ttl_ms, self.s.negative_ttl_ms)
            && !cache::set(&key, &v.to_bytes(), ttl)
        {
            log::debug("introspection answer not cached: host state is full");
        }
        Ok(v)
    }

    /// Asks the IdP (RFC 7662 §2.1). Every failure is an error value.
    fn introspect(&self, token: &str) -> Result<Verdict, String> {
        let mut call = outbound::post(&self.s.upstream, &self.s.path)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(format!(
                "token={}&token_type_hint=access_token",
                token::form_encode(token)
            ))
            .timeout_ms(self.s.timeout_ms);
        if let Some((name, value)) = &self.s.idp_auth {
            call = call.header(name, value);
        }
        let resp = call.send().map_err(|e| describe(&e))?;
        if resp.status != 200 {
            return Err(format!("the IdP answered {}", resp.status));
        }
        Verdict::parse(&resp.body).map_err(|e| format!("the IdP's answer is {e}"))
    }

    /// Maps claims to headers and strips the token, as configured.
    fn forward(&self, req: &Request, claims: &Map<String, Value>) -> Result<(), String> {
        for (claim, header) in &self.s.claims {
            match claims.get(claim).and_then(token::claim_value) {
                Some(v) => req.set_header(header, &v),
                None => req.remove_header(header).map(|_| ()),
            }
            .map_err(|e| format!("{header}: {e:?}"))?;
        }
        if self.s.strip_token {
            req.remove_header("authorization")
                .map_err(|e| format!("authorization: {e:?}"))?;
        }
        Ok(())
    }

    /// A 400/401/403 with its RFC 6750 challenge.
    fn reject(&self, reason: &str, status: u16, error: Option<String>, body: &str) -> Action {
        metrics::counter_add("oauth2_introspect_rejected", &[("reason", reason)], 1);
        let challenge = match error {
            Some(e) => format!(r#"Bearer realm="{}", {e}"#, self.s.realm),
            None => format!(r#"Bearer realm="{}""#, self.s.realm),
        };
        reply(status)
            .header("www-authenticate", challenge)
            .text(body)
            .into()
    }
}

/// A call error in words for the log.
fn describe(e: &CallError) -> String {
    match e {
        CallError::NotGranted(u) => {
            format!("upstream `{u}` is not in this plugin's grants.http (or does not exist)")
        }
        CallError::TooManyCalls(n) => format!("more than max_outbound_calls ({n}) in one hook"),
        CallError::InvalidRequest(why) => format!("invalid request: {why}"),
        CallError::Timeout => "the IdP did not answer in time".into(),
        CallError::Unavailable(why) => format!("the IdP is unavailable: {why}"),
        CallError::TooLarge(n) => format!("the IdP's answer is larger than {n} bytes"),
    }
}

weir_sdk::export!(Introspect);
