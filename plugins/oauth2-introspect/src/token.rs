//! Pure logic, unit-tested natively: the bearer token in `authorization`,
//! the cache key, and reading an RFC 7662 introspection answer.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Longest token accepted; longer ones are a malformed request.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What the client presented in `authorization`.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    /// No `authorization`, or another scheme: RFC 6750 §3.1 says a plain challenge.
    Missing,
    /// `Bearer` with something that is not a `b64token` (RFC 6750 §2.1).
    Malformed,
    /// The token.
    Token(&'a str),
}

/// The bearer token in an `authorization` value (scheme case-insensitive).
pub fn bearer(authorization: Option<&str>) -> Presented<'_> {
    let Some(value) = authorization else {
        return Presented::Missing;
    };
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Presented::Missing;
    }
    let token = rest.trim_start();
    if token.is_empty() || token.len() > MAX_TOKEN_LEN || !is_b64token(token) {
        return Presented::Malformed;
    }
    Presented::Token(token)
}

/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn is_b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// The host-cache key of a token's answer from one IdP endpoint: a SHA-256
/// of endpoint and token, so the raw token never reaches host state and two
/// routes asking different IdPs never share an answer.
pub fn cache_key(upstream: &str, path: &str, token: &str) -> String {
    let mut h = Sha256::new();
    for part in [upstream, path, token] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let mut key = String::with_capacity(2 + 64);
    key.push_str("t:");
    for b in digest {
        key.push(char::from(HEX[usize::from(b >> 4)]));
        key.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    key
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `application/x-www-form-urlencoded` for one value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)].to_ascii_uppercase()));
                out.push(char::from(HEX[usize::from(b & 0xf)].to_ascii_uppercase()));
            }
        }
    }
    out
}

/// An introspection answer (RFC 7662 §2.2), as received or as cached.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// `"active": false`: the token is not valid, whatever the reason.
    Inactive,
    /// `"active": true` with the other members.
    Active(Map<String, Value>),
}

impl Verdict {
    /// Reads an answer: a JSON object with a boolean `active`; anything else
    /// is an IdP failure (the error says what was wrong, never the token).
    pub fn parse(body: &[u8]) -> Result<Verdict, String> {
        let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(map) = value else {
            return Err("not a JSON object".into());
        };
        match map.get("active") {
            Some(Value::Bool(true)) => Ok(Verdict::Active(map)),
            Some(Value::Bool(false)) => Ok(Verdict::Inactive),
            _ => Err("no boolean `active` member".into()),
        }
    }

    /// The bytes to cache.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Verdict::Inactive => br#"{"active":false}"#.to_vec(),
            Verdict::Active(map) => serde_json::to_vec(map).unwrap_or_default(),
        }
    }

    /// Whether an active token is within its `nbf`..`exp` at `now_secs`.
    pub fn in_time(map: &Map<String, Value>, now_secs: u64) -> bool {
        let exp_ok = map
            .get("exp")
            .and_then(Value::as_u64)
            .is_none_or(|exp| now_secs < exp);
        let nbf_ok = map
            .get("nbf")
            .and_then(Value::as_u64)
            .is_none_or(|nbf| nbf <= now_secs);
        exp_ok && nbf_ok
    }

    /// How long to cache this answer: an active token until its `exp`, at
    /// most `max_ms`; an inactive one `negative_ms`. `None`: not worth caching.
    pub fn ttl_ms(&self, now_ms: u64, max_ms: u64, negative_ms: u64) -> Option<u64> {
        let ttl = match self {
            Verdict::Inactive => negative_ms,
            Verdict::Active(map) => match map.get("exp").and_then(Value::as_u64) {
                Some(exp) => exp.saturating_mul(1000).saturating_sub(now_ms).min(max_ms),
                None => max_ms,
            },
        };
        (ttl > 0).then_some(ttl)
    }
}

/// The scopes in a `scope` claim (space-separated, RFC 7662 §2.2).
pub fn scopes(map: &Map<String, Value>) -> Vec<&str> {
    map.get("scope")
        .and_then(Value::as_str)
        .map(|s| s.split(' ').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

/// A claim as a header value: strings as they are, numbers and booleans
/// written out, arrays of those joined by spaces; `None` for anything else
/// or a value that cannot be a header value.
pub fn claim_value(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|i| match i {
                    Value::Array(_) | Value::Object(_) | Value::Null => None,
                    other => claim_value(other),
                })
                .collect();
            parts?.join(" ")
        }
        Value::Null | Value::Object(_) => return None,
    };
    (!s.chars().any(char::is_control)).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_the_bearer_token() {
        assert_eq!(bearer(None), Presented::Missing);
        assert_eq!(bearer(Some("Basic dXNlcjpwYXNz")), Presented::Missing);
        assert_eq!(
            bearer(Some("Bearer abc.DEF-_~+/==")),
            Presented::Token("abc.DEF-_~+/==")
        );
        assert_eq!(bearer(Some("bearer  tok")), Presented::Token("tok"));
        assert_eq!(bearer(Some("Bearer")), Presented::Malformed);
        assert_eq!(bearer(Some("Bearer a b")), Presented::Malformed);
        assert_eq!(bearer(Some("Bearer ===")), Presented::Malformed);
        assert_eq!(bearer(Some("Bearer a\"b")), Presented::Malformed);
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert_eq!(bearer(Some(&long)), Presented::Malformed);
    }

    #[test]
    fn the_cache_key_hides_the_token_and_separates_endpoints() {
        let k = cache_key("idp", "/introspect", "secret-token");
        assert_eq!(k.len(), 66);
        assert!(!k.contains("secret"));
        assert_eq!(k, cache_key("idp", "/introspect", "secret-token"));
        assert_ne!(k, cache_key("idp2", "/introspect", "secret-token"));
        assert_ne!(k, cache_key("idp", "/introspec", "tsecret-token"));
    }

    #[test]
    fn encodes_form_values() {
        assert_eq!(form_encode("a+b/c=="), "a%2Bb%2Fc%3D%3D");
        assert_eq!(form_encode("x y"), "x+y");
        assert_eq!(form_encode("é"), "%C3%A9");
    }

    #[test]
    fn reads_answers() {
        assert_eq!(
            Verdict::parse(br#"{"active":false}"#),
            Ok(Verdict::Inactive)
        );
        let Ok(Verdict::Active(m)) = Verdict::parse(br#"{"active":true,"sub":"a"}"#) else {
            panic!("active expected");
        };
        assert_eq!(m["sub"], "a");
        assert!(
            Verdict::parse(b"<html>")
                .unwrap_err()
                .starts_with("not JSON")
        );
        assert!(Verdict::parse(b"[]").is_err());
        assert!(Verdict::parse(br#"{"active":"true"}"#).is_err());
        let cached = Verdict::parse(br#"{"active":true,"exp":5}"#).unwrap();
        assert_eq!(Verdict::parse(&cached.to_bytes()), Ok(cached));
    }

    #[test]
    fn caches_until_exp_within_the_bound() {
        let active = |v: Value| Verdict::Active(v.as_object().unwrap().clone());
        let now = 1_000_000;
        assert_eq!(
            active(json!({"exp": 1_010})).ttl_ms(now, 60_000, 5_000),
            Some(10_000)
        );
        assert_eq!(
            active(json!({"exp": 9_999})).ttl_ms(now, 60_000, 5_000),
            Some(60_000)
        );
        assert_eq!(active(json!({})).ttl_ms(now, 60_000, 5_000), Some(60_000));
        assert_eq!(active(json!({"exp": 999})).ttl_ms(now, 60_000, 5_000), None);
        assert_eq!(Verdict::Inactive.ttl_ms(now, 60_000, 5_000), Some(5_000));
        let m = json!({"exp": 10, "nbf": 5});
        let m = m.as_object().unwrap();
        assert!(Verdict::in_time(m, 5));
        assert!(!Verdict::in_time(m, 10));
        assert!(!Verdict::in_time(m, 4));
    }

    #[test]
    fn claims_become_header_values() {
        assert_eq!(claim_value(&json!("alice")).as_deref(), Some("alice"));
        assert_eq!(claim_value(&json!(42)).as_deref(), Some("42"));
        assert_eq!(
            claim_value(&json!(["a", 1, true])).as_deref(),
            Some("a 1 true")
        );
        assert_eq!(claim_value(&json!({"a": 1})), None);
        assert_eq!(claim_value(&json!([{"a": 1}])), None);
        assert_eq!(claim_value(&json!("a\nb")), None);
        let m = json!({"scope": "read  write"});
        assert_eq!(scopes(m.as_object().unwrap()), vec!["read", "write"]);
    }
}
