//! The manifest config and its validation into ready [`Settings`].

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use weir_sdk::units::Duration;

use crate::token::form_encode;

/// The longest a value may live in the host cache (its own limit: one day).
const MAX_CACHE_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// Headers a claim must never be written to: framing, routing, hop-by-hop,
/// and the credential itself.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "authorization",
];

/// The route's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `upstream`: the `[upstreams.NAME]` of the identity provider. It must
    /// also be in the plugin's `grants = { http = [...] }`.
    pub upstream: String,
    /// `path`: the introspection endpoint (path and optional query).
    #[serde(default = "default_path")]
    pub path: String,
    /// `client_id`: sent to the IdP with `client_secret` as HTTP Basic.
    #[serde(default)]
    pub client_id: Option<String>,
    /// `client_secret`: the client's secret (with `client_id`).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// `idp_header`: a static header sent to the IdP instead of Basic
    /// credentials, e.g. `{ name = "authorization", value = "Bearer ..." }`.
    #[serde(default)]
    pub idp_header: Option<StaticHeader>,
    /// `timeout`: how long to wait for the IdP (also cut by `call_timeout`).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// `cache_max_ttl`: an active token is cached until its `exp`, at most this long.
    #[serde(default = "default_cache_max_ttl")]
    pub cache_max_ttl: Duration,
    /// `negative_ttl`: how long an inactive token's answer is cached
    /// (at most `cache_max_ttl`).
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: Duration,
    /// `claims`: introspection claim -> upstream header, e.g. `{ sub = "x-user" }`.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// `required_scopes`: every one must be in the token's `scope`, else 403.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// `strip_token`: remove `authorization` before the request goes upstream.
    #[serde(default)]
    pub strip_token: bool,
    /// `realm`: announced in `www-authenticate`.
    #[serde(default = "default_realm")]
    pub realm: String,
}

/// A header sent to the IdP as it is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticHeader {
    /// `name`: lower case.
    pub name: String,
    /// `value`: no control characters.
    pub value: String,
}

fn default_path() -> String {
    "/introspect".into()
}
fn default_timeout() -> Duration {
    Duration(std::time::Duration::from_millis(500))
}
fn default_cache_max_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_realm() -> String {
    "weir".into()
}

/// The validated config, ready for requests.
#[derive(Debug)]
pub struct Settings {
    /// The IdP's upstream name.
    pub upstream: String,
    /// The introspection path.
    pub path: String,
    /// The header authenticating the gateway to the IdP, if any.
    pub idp_auth: Option<(String, String)>,
    /// `timeout` in milliseconds.
    pub timeout_ms: u32,
    /// `cache_max_ttl` in milliseconds.
    pub max_ttl_ms: u64,
    /// `negative_ttl` in milliseconds.
    pub negative_ttl_ms: u64,
    /// (claim, header) pairs.
    pub claims: Vec<(String, String)>,
    /// Scopes the token must carry.
    pub required_scopes: Vec<String>,
    /// Whether `authorization` is removed upstream.
    pub strip_token: bool,
    /// The realm, checked to need no escaping.
    pub realm: String,
}

impl Settings {
    /// Validates `config`; the error names the offending field.
    pub fn from_config(c: Config) -> Result<Self, String> {
        if c.upstream.is_empty() {
            return Err("upstream: must name an `[upstreams.*]` granted to this plugin".into());
        }
        check_path(&c.path)?;
        let idp_auth = idp_auth(c.client_id, c.client_secret, c.idp_header)?;
        let timeout_ms =
            u32::try_from(c.timeout.0.as_millis()).map_err(|_| "timeout: too long".to_string())?;
        let max_ttl_ms = ms(c.cache_max_ttl);
        if max_ttl_ms > MAX_CACHE_TTL_MS {
            return Err("cache_max_ttl: at most \"24h\" (the host cache's limit)".into());
        }
        let negative_ttl_ms = ms(c.negative_ttl);
        if negative_ttl_ms > max_ttl_ms {
            return Err("negative_ttl: must not exceed cache_max_ttl".into());
        }
        let claims = check_claims(c.claims)?;
        for (i, s) in c.required_scopes.iter().enumerate() {
            if s.is_empty() || s.chars().any(|c| c == ' ' || c == '"' || c.is_control()) {
                return Err(format!(
                    "required_scopes[{i}]: {s:?} is not a scope (no spaces, quotes or control characters)"
                ));
            }
        }
        if let Some(ch) = c
            .realm
            .chars()
            .find(|&ch| ch == '"' || ch == '\\' || ch.is_control())
        {
            return Err(format!("realm: must not contain {ch:?}"));
        }
        Ok(Settings {
            upstream: c.upstream,
            path: c.path,
            idp_auth,
            timeout_ms,
            max_ttl_ms,
            negative_ttl_ms,
            claims,
            required_scopes: c.required_scopes,
            strip_token: c.strip_token,
            realm: c.realm,
        })
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.0.as_millis()).unwrap_or(u64::MAX)
}

fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path: {path:?} must start with `/`"));
    }
    if path
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '#')
    {
        return Err(format!("path: {path:?} is not a valid request path"));
    }
    Ok(())
}

/// HTTP Basic from the client credentials (each form-encoded first, as
/// RFC 6749 §2.3.1 says), a static header, or nothing.
fn idp_auth(
    id: Option<String>,
    secret: Option<String>,
    header: Option<StaticHeader>,
) -> Result<Option<(String, String)>, String> {
    match (id, secret, header) {
        (None, None, None) => Ok(None),
        (Some(_), Some(_), Some(_)) | (Some(_), None, Some(_)) | (None, Some(_), Some(_)) => {
            Err("idp_header: give either client_id/client_secret or idp_header, not both".into())
        }
        (Some(_), None, None) => Err("client_secret: required with client_id".into()),
        (None, Some(_), None) => Err("client_id: required with client_secret".into()),
        (Some(id), Some(secret), None) => {
            if id.is_empty() {
                return Err("client_id: must not be empty".into());
            }
            let pair = format!("{}:{}", form_encode(&id), form_encode(&secret));
            Ok(Some((
                "authorization".into(),
                format!("Basic {}", B64.encode(pair)),
            )))
        }
        (None, None, Some(h)) => {
            weir_sdk::check_header_name(&h.name).map_err(|e| format!("idp_header.name: {e}"))?;
            if h.value.chars().any(|c| c.is_control()) {
                return Err("idp_header.value: must not contain control characters".into());
            }
            Ok(Some((h.name, h.value)))
        }
    }
}

fn check_claims(claims: BTreeMap<String, String>) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(claims.len());
    for (claim, header) in claims {
        if claim.is_empty() {
            return Err("claims: a claim name must not be empty".into());
        }
        weir_sdk::check_header_name(&header).map_err(|e| format!("claims.{claim}: {e}"))?;
        if RESERVED_HEADERS.contains(&header.as_str()) {
            return Err(format!(
                "claims.{claim}: `{header}` is reserved; pick another header"
            ));
        }
        if let Some((other, _)) = out.iter().find(|(_, h)| *h == header) {
            return Err(format!(
                "claims.{claim}: `{header}` is already the header of claims.{other}"
            ));
        }
        out.push((claim, header));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> Result<Settings, String> {
        let c: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Settings::from_config(c)
    }

    #[test]
    fn defaults_fill_everything_but_the_upstream() {
        let s = settings(r#"{"upstream":"idp"}"#).unwrap();
        assert_eq!(s.path, "/introspect");
        assert_eq!(s.timeout_ms, 500);
        assert_eq!(s.max_ttl_ms, 300_000);
        assert_eq!(s.negative_ttl_ms, 10_000);
        assert!(s.idp_auth.is_none());
        assert!(!s.strip_token);
        assert!(
            settings("{}")
                .unwrap_err()
                .contains("missing field `upstream`")
        );
        assert!(
            settings(r#"{"upstream":"idp","scopes":[]}"#)
                .unwrap_err()
                .contains("unknown field `scopes`")
        );
    }

    #[test]
    fn client_credentials_become_basic_auth_form_encoded_first() {
        let s =
            settings(r#"{"upstream":"idp","client_id":"gw","client_secret":"s:e cret"}"#).unwrap();
        let (name, value) = s.idp_auth.unwrap();
        assert_eq!(name, "authorization");
        assert_eq!(value, format!("Basic {}", B64.encode("gw:s%3Ae+cret")));
    }

    #[test]
    fn bad_configs_name_the_field() {
        let err = |j: &str| settings(j).unwrap_err();
        assert_eq!(
            err(r#"{"upstream":"idp","client_id":"gw"}"#),
            "client_secret: required with client_id"
        );
        assert!(
            err(r#"{"upstream":"idp","client_id":"a","client_secret":"b","idp_header":{"name":"x","value":"y"}}"#)
                .starts_with("idp_header:")
        );
        assert!(err(r#"{"upstream":"idp","path":"introspect"}"#).starts_with("path:"));
        assert!(err(r#"{"upstream":"idp","claims":{"sub":"Host"}}"#).starts_with("claims.sub:"));
        assert!(err(r#"{"upstream":"idp","claims":{"sub":"host"}}"#).contains("reserved"));
        assert!(
            err(r#"{"upstream":"idp","claims":{"sub":"x-a","client_id":"x-a"}}"#)
                .contains("already the header")
        );
        assert!(
            err(r#"{"upstream":"idp","required_scopes":["a b"]}"#)
                .starts_with("required_scopes[0]:")
        );
        assert!(
            err(r#"{"upstream":"idp","cache_max_ttl":"1m","negative_ttl":"2m"}"#)
                .starts_with("negative_ttl:")
        );
        assert!(err(r#"{"upstream":"idp","cache_max_ttl":"25h"}"#).starts_with("cache_max_ttl:"));
        assert!(err(r#"{"upstream":""}"#).starts_with("upstream:"));
    }
}
