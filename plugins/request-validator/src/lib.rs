//! # request-validator: JSON request bodies checked against a schema
//!
//! On the methods configured (default `POST`, `PUT`, `PATCH`) the request
//! body must be JSON that matches `schema`, a JSON Schema subset written as
//! a TOML table in the route's config (the keywords are listed in
//! [`schema`]). Otherwise the gateway answers with an RFC 9457
//! `application/problem+json` body and the upstream never sees the request:
//!
//! - `415` when the `content-type` is not JSON (`application/json` or
//!   `*/*+json`) or the body is in an encoding the gateway does not decode;
//! - `400` when the body does not parse;
//! - `400` with `errors: [{"field": "user.age", "message": "..."}]` when it
//!   does not match (at most `max_errors` of them).
//!
//! Only the request body is buffered. See `README.md` for the config reference.

pub mod schema;

use serde::Deserialize;
use weir_sdk::{Action, Bodies, BodyError, Hooks, Plugin, Request, body, metrics, reply};

use crate::schema::{FieldError, Schema};

/// The route's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `schema`: what a body must look like.
    pub schema: Schema,
    /// `methods`: the methods whose bodies are checked (others pass).
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// `max_errors`: most field errors listed in one answer.
    #[serde(default = "default_max_errors")]
    pub max_errors: usize,
}

fn default_methods() -> Vec<String> {
    ["POST", "PUT", "PATCH"].map(String::from).to_vec()
}

fn default_max_errors() -> usize {
    20
}

/// The filter, built once per instance from a validated [`Config`].
#[derive(Debug)]
pub struct RequestValidator {
    schema: Schema,
    methods: Vec<String>,
    max_errors: usize,
}

impl RequestValidator {
    /// Validates `config`; the error names the field.
    pub fn from_config(config: Config) -> Result<Self, String> {
        config.schema.check("schema")?;
        if config.methods.is_empty() {
            return Err("methods: list at least one method".into());
        }
        for (i, m) in config.methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!(
                    "methods[{i}]: {m:?} is not an upper-case method name like \"POST\""
                ));
            }
        }
        if !(1..=1000).contains(&config.max_errors) {
            return Err("max_errors: must be between 1 and 1000".into());
        }
        Ok(Self {
            schema: config.schema,
            methods: config.methods,
            max_errors: config.max_errors,
        })
    }

    /// What is wrong with a body, if anything: the problem to answer with.
    fn check(
        &self,
        content_type: Option<&str>,
        body: Result<Vec<u8>, BodyError>,
    ) -> Option<Problem> {
        if !content_type.is_some_and(is_json) {
            return Some(Problem::media_type(format!(
                "the request body must be JSON (content-type: application/json), not {}",
                content_type.map_or("a body without content-type".into(), |c| format!("`{c}`"))
            )));
        }
        let bytes = match body {
            Ok(b) => b,
            Err(BodyError::Encoded(enc)) => {
                return Some(Problem::media_type(format!(
                    "content-encoding `{enc}` is not supported here; send identity, gzip or deflate"
                )));
            }
            // Not handed over (cannot happen once asked for): nothing to check against.
            Err(e) => {
                return Some(Problem::internal(format!(
                    "the body could not be read: {e:?}"
                )));
            }
        };
        let doc: serde_json::Value = match serde_json::from_slice(&bytes) {
            Ok(doc) => doc,
            Err(e) => {
                return Some(Problem::malformed(format!(
                    "the request body is not valid JSON: {e}"
                )));
            }
        };
        let mut errors = Vec::new();
        self.schema.validate(&doc, "", &mut errors, self.max_errors);
        (!errors.is_empty()).then(|| Problem::invalid(errors))
    }
}

/// An RFC 9457 problem to answer with.
#[derive(Debug, PartialEq)]
struct Problem {
    status: u16,
    /// The metric's `reason`.
    reason: &'static str,
    detail: String,
    errors: Vec<FieldError>,
}

impl Problem {
    fn media_type(detail: String) -> Self {
        Problem {
            status: 415,
            reason: "media_type",
            detail,
            errors: Vec::new(),
        }
    }
    fn malformed(detail: String) -> Self {
        Problem {
            status: 400,
            reason: "malformed",
            detail,
            errors: Vec::new(),
        }
    }
    fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = "the request body does not match the schema".into();
        Problem {
            status: 400,
            reason: "schema",
            detail,
            errors,
        }
    }
    fn internal(detail: String) -> Self {
        Problem {
            status: 500,
            reason: "internal",
            detail,
            errors: Vec::new(),
        }
    }

    fn title(&self) -> &'static str {
        match self.status {
            400 => "Bad Request",
            415 => "Unsupported Media Type",
            _ => "Internal Server Error",
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let mut doc = serde_json::json!({
            "type": "about:blank",
            "title": self.title(),
            "status": self.status,
            "detail": self.detail,
        });
        if !self.errors.is_empty() {
            doc["errors"] = serde_json::json!(self.errors);
        }
        doc
    }
}

/// Whether a `content-type` names JSON: `application/json` or any `+json` type.
fn is_json(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json"
        || media
            .split_once('/')
            .is_some_and(|(kind, sub)| !kind.is_empty() && sub.ends_with("+json"))
}

impl Plugin for RequestValidator {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let filter = Self::from_config(config)?;
        body::buffer(Bodies::REQUEST);
        Ok(filter)
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let method = req.method();
        if !self.methods.contains(&method) {
            return Action::Continue;
        }
        let Some(problem) = self.check(req.header("content-type").as_deref(), req.body()) else {
            return Action::Continue;
        };
        metrics::counter_add(
            "request_validator_rejected",
            &[("reason", problem.reason)],
            1,
        );
        reply(problem.status)
            .header("content-type", "application/problem+json")
            .body(problem.to_json().to_string())
            .into()
    }
}

weir_sdk::export!(RequestValidator);

#[cfg(test)]
mod tests {
    use super::*;

    fn validator(config: &str) -> Result<RequestValidator, String> {
        let c: Config = serde_json::from_str(config).map_err(|e| e.to_string())?;
        RequestValidator::from_config(c)
    }

    #[test]
    fn bodies_get_the_problem_their_fault_calls_for() {
        let v = validator(r#"{"schema": {"type": "object", "required": ["a"]}}"#).unwrap();
        let check = |ct: Option<&str>, body: &str| v.check(ct, Ok(body.as_bytes().to_vec()));
        let json = Some("application/json; charset=utf-8");
        assert_eq!(check(json, r#"{"a": 1}"#), None);
        assert_eq!(
            check(Some("text/plain"), r#"{"a": 1}"#).unwrap().status,
            415
        );
        assert_eq!(check(None, "").unwrap().status, 415);
        let p = check(json, "{").unwrap();
        assert_eq!((p.status, p.reason), (400, "malformed"));
        assert!(p.to_json().get("errors").is_none());
        let p = check(Some("application/merge-patch+json"), "{}").unwrap();
        assert_eq!(
            p.to_json(),
            serde_json::json!({
                "type": "about:blank",
                "title": "Bad Request",
                "status": 400,
                "detail": "the request body does not match the schema",
                "errors": [{"field": "a", "message": "is required"}],
            })
        );
        let p = v.check(json, Err(BodyError::Encoded("br".into()))).unwrap();
        assert_eq!(p.status, 415);
    }

    #[test]
    fn the_config_is_checked_at_load_naming_the_field() {
        let err = |c: &str| validator(c).unwrap_err();
        assert!(err("{}").contains("missing field `schema`"));
        assert_eq!(
            err(r#"{"schema": {}, "methods": ["post"]}"#),
            r#"methods[0]: "post" is not an upper-case method name like "POST""#
        );
        assert_eq!(
            err(r#"{"schema": {}, "methods": []}"#),
            "methods: list at least one method"
        );
        assert!(err(r#"{"schema": {}, "max_errors": 0}"#).starts_with("max_errors:"));
        assert_eq!(
            err(r#"{"schema": {"properties": {"n": {"minimum": 2, "maximum": 1}}}}"#),
            "schema.properties.n: minimum is greater than its maximum"
        );
        let ok = validator(r#"{"schema": {"type": "object"}}"#).unwrap();
        assert_eq!(ok.methods, ["POST", "PUT", "PATCH"]);
    }
}
