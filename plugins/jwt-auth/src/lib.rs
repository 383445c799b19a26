//! # jwt-auth: JWT bearer-token authentication for Weir
//!
//! Verifies a compact JWS (`HS256`, `RS256`, `ES256` or `EdDSA`) taken from
//! `Authorization: Bearer <token>` (or another configured header), checks
//! `exp`, `nbf`, `iat`, `iss` and `aud`, and answers `401` with an RFC 6750
//! `www-authenticate` challenge when anything is wrong. Keys come from the
//! config, from a JWKS URL on a granted upstream (`jwks`), or both; while a
//! JWKS was never fetched a token that needs it gets `503`.
//!
//! On success it copies chosen claims into upstream request headers (always
//! removing client-supplied copies first, so they cannot be forged), sets the
//! request variable `consumer` to `sub` for later filters such as a rate
//! limiter, and optionally strips the token before proxying.
//!
//! The key, not the token, decides the algorithm: `none` is never accepted
//! and an `HS256` token is never checked against a public key.
//!
//! See `README.md` for the config reference.

mod config;
mod jwk;
mod jwks;
mod jwt;

use serde_json::Value;
use weir_sdk::log::Level;
use weir_sdk::{Action, Plugin, Request, reply};

use config::Settings;
use jwt::Failure;

/// The filter: one per instance, config validated at load.
struct JwtAuth {
    settings: Settings,
}

impl Plugin for JwtAuth {
    // Decoded in `config::compile` so that errors carry the field path
    // (`keys[1].alg: ...`) rather than a JSON line/column.
    type Config = Value;

    fn new(config: Value) -> Result<Self, String> {
        let settings = config::compile(config)?;
        for warning in &settings.warnings {
            weir_sdk::log::warn(warning);
        }
        Ok(JwtAuth { settings })
    }

    fn hooks(&self) -> weir_sdk::Hooks {
        weir_sdk::Hooks::ON_REQUEST
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let s = &mut self.settings;
        let values = req.header_all(&s.header);
        let claims = match extract_token(&values, s.header != "authorization") {
            Ok(token) => match verify(s, token) {
                Some(claims) => claims,
                None => return keys_unavailable(),
            },
            Err(failure) => Err(failure),
        };
        let claims = match claims {
            Ok(claims) => claims,
            Err(failure) => {
                // Never log the token: it is a credential.
                weir_sdk::log::log(
                    Level::Debug,
                    "jwt rejected",
                    &[("reason", failure.reason()), ("header", &s.header)],
                );
                return unauthorized(failure);
            }
        };

        for (claim, header) in &s.claims_to_headers {
            // Drop the client's copy first so a forged value never reaches upstream.
            if let Err(e) = req.remove_header(header) {
                warn_edit("could not remove header", header, &e);
            }
            if let Some(value) = claims.get(claim).and_then(claim_value)
                && let Err(e) = req.set_header(header, &value)
            {
                warn_edit("could not set header from claim", header, &e);
            }
        }
        if let Some(sub) = claims.get("sub").and_then(claim_value)
            && let Err(e) = req.set_var("consumer", &sub)
        {
            warn_edit("could not set var", "consumer", &e);
        }
        if !s.forward_token
            && let Err(e) = req.remove_header(&s.header)
        {
            warn_edit("could not remove token header", &s.header, &e);
        }
        Action::Continue
    }
}

/// Verifies `token` with the configured keys and, with `jwks`, the fetched
/// ones (brought up to date first). `None`: the token needs keys the JWKS
/// has not delivered yet.
fn verify(
    s: &mut Settings,
    token: &str,
) -> Option<Result<serde_json::Map<String, Value>, Failure>> {
    let now_ms = weir_sdk::clock::now_ms();
    let Some(jwks) = &mut s.jwks else {
        return Some(s.verifier.verify(token, now_ms / 1000));
    };
    let kid = jwt::peek_kid(token);
    let known = kid.as_deref().is_some_and(|kid| {
        s.verifier
            .keys
            .iter()
            .any(|k| k.kid.as_deref() == Some(kid))
    });
    jwks.update(kid.as_deref(), known, now_ms);
    match jwks.keys() {
        Some(keys) => Some(s.verifier.verify_with(token, now_ms / 1000, keys)),
        // Never fetched: only a token the configured keys accept gets through.
        None => s.verifier.verify(token, now_ms / 1000).ok().map(Ok),
    }
}

/// `503`: the JWKS could not be fetched and no keys are held.
fn keys_unavailable() -> Action {
    reply(503)
        .header("cache-control", "no-store")
        .header("retry-after", "5")
        .text("signing keys unavailable\n")
        .into()
}

fn warn_edit(message: &str, name: &str, error: &weir_sdk::EditError) {
    let error = format!("{error:?}");
    weir_sdk::log::log(Level::Warn, message, &[("name", name), ("error", &error)]);
}

/// Takes the token from the header's values. `bare_ok` lets a custom header
/// carry the token without the `Bearer` scheme.
fn extract_token(values: &[String], bare_ok: bool) -> Result<&str, Failure> {
    let value = match values {
        [] => return Err(Failure::Missing),
        [one] => one.trim(),
        // Two credentials are ambiguous; refuse rather than guess.
        _ => return Err(Failure::Malformed),
    };
    let (scheme, rest) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        let token = rest.trim_start();
        if token.is_empty() || token.contains(|c: char| c.is_ascii_whitespace()) {
            return Err(Failure::Malformed);
        }
        Ok(token)
    } else if bare_ok && rest.is_empty() && !scheme.is_empty() {
        Ok(scheme)
    } else {
        // Another scheme (e.g. Basic) is not a bearer token at all.
        Err(Failure::Missing)
    }
}

/// The `www-authenticate` challenge (RFC 6750 §3): no error code when no
/// token was sent.
fn challenge(failure: Failure) -> String {
    match failure {
        Failure::Missing => r#"Bearer realm="weir""#.to_string(),
        f => format!(
            r#"Bearer realm="weir", error="invalid_token", error_description="{}""#,
            f.reason()
        ),
    }
}

fn unauthorized(failure: Failure) -> Action {
    let body = match failure {
        Failure::Missing => "missing token\n".to_string(),
        f => format!("invalid token: {}\n", f.reason()),
    };
    reply(401)
        .header("www-authenticate", challenge(failure))
        .header("cache-control", "no-store")
        .text(body)
        .into()
}

/// A claim as a header value: strings as-is, numbers and booleans printed,
/// arrays and objects as compact JSON, `null` as absent.
fn claim_value(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) => Some(value.to_string()),
        Value::Array(_) | Value::Object(_) => Some(value.to_string()),
    }
}

weir_sdk::export!(JwtAuth);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn take(values: &[&str], bare_ok: bool) -> Result<String, Failure> {
        let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        extract_token(&values, bare_ok).map(str::to_string)
    }

    #[test]
    fn bearer_extraction() {
        assert_eq!(take(&["Bearer abc.def.ghi"], false).unwrap(), "abc.def.ghi");
        assert_eq!(take(&["bearer abc"], false).unwrap(), "abc");
        assert_eq!(take(&["BEARER   abc  "], false).unwrap(), "abc");
        assert_eq!(take(&["  Bearer\tabc"], false).unwrap(), "abc");
        assert_eq!(take(&[], false), Err(Failure::Missing));
        assert_eq!(take(&["Basic dXNlcjpwdw=="], false), Err(Failure::Missing));
        assert_eq!(take(&["abc.def.ghi"], false), Err(Failure::Missing));
        assert_eq!(take(&[""], false), Err(Failure::Missing));
        assert_eq!(take(&["Bearer"], false), Err(Failure::Malformed));
        assert_eq!(take(&["Bearer  "], false), Err(Failure::Malformed));
        assert_eq!(take(&["Bearer a b"], false), Err(Failure::Malformed));
        assert_eq!(
            take(&["Bearer a", "Bearer b"], false),
            Err(Failure::Malformed)
        );
        // Custom headers may carry the bare token.
        assert_eq!(take(&["abc.def.ghi"], true).unwrap(), "abc.def.ghi");
        assert_eq!(take(&["Bearer abc"], true).unwrap(), "abc");
        assert_eq!(take(&["Basic abc"], true), Err(Failure::Missing));
        assert_eq!(take(&[""], true), Err(Failure::Missing));
    }

    #[test]
    fn challenges() {
        assert_eq!(challenge(Failure::Missing), r#"Bearer realm="weir""#);
        assert_eq!(
            challenge(Failure::Expired),
            r#"Bearer realm="weir", error="invalid_token", error_description="expired""#
        );
        assert_eq!(
            challenge(Failure::BadSignature),
            r#"Bearer realm="weir", error="invalid_token", error_description="bad signature""#
        );
    }

    #[test]
    fn claim_values() {
        assert_eq!(claim_value(&json!("alice")).as_deref(), Some("alice"));
        assert_eq!(claim_value(&json!(42)).as_deref(), Some("42"));
        assert_eq!(claim_value(&json!(1.5)).as_deref(), Some("1.5"));
        assert_eq!(claim_value(&json!(true)).as_deref(), Some("true"));
        assert_eq!(
            claim_value(&json!(["a", "b"])).as_deref(),
            Some(r#"["a","b"]"#)
        );
        assert_eq!(claim_value(&json!({"k": 1})).as_deref(), Some(r#"{"k":1}"#));
        assert_eq!(claim_value(&json!(null)), None);
    }
}
