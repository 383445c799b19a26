//! # json-transform: edit JSON request and response bodies by field path
//!
//! For each body the config names (`[request]`, `[response]`, or both) the
//! filter parses the JSON, then applies, in this order: `remove`, `rename`,
//! `set`, `redact` (the value becomes the `mask` string). A body nothing
//! matched goes on byte for byte; a changed one goes on compact, members in
//! their original order. Only the bodies the config edits are buffered.
//!
//! A body that is not JSON (its `content-type` is not `application/json` or
//! `*/*+json`, it is in an encoding the gateway does not decode, or it does
//! not parse) passes untouched (`non_json = "pass"`, the default) or is
//! refused (`"refuse"`): 415 for a request, 502 for a response, with an
//! RFC 9457 `application/problem+json` body. An empty body always passes.
//! Paths are described in [`path`]; see `README.md` for the config reference.

pub mod ops;
pub mod path;
pub mod value;

use serde::Deserialize;
use weir_sdk::log::{self, Level};
use weir_sdk::{Action, Bodies, BodyError, Header, Hooks, Plugin, Request, Response, body};
use weir_sdk::{metrics, reply};

use crate::ops::{Ops, OpsConfig};
use crate::value::Value;

/// The route's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[request]`: edits to the request body sent upstream.
    #[serde(default)]
    pub request: Option<OpsConfig>,
    /// `[response]`: edits to the response body sent to the client.
    #[serde(default)]
    pub response: Option<OpsConfig>,
    /// `non_json`: what to do with a body that is not JSON.
    #[serde(default)]
    pub non_json: NonJson,
    /// `mask`: the string a redacted value becomes.
    #[serde(default = "default_mask")]
    pub mask: String,
}

fn default_mask() -> String {
    "***".into()
}

/// What happens to a body that is not JSON (`non_json`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonJson {
    /// `"pass"`: it goes on untouched.
    #[default]
    Pass,
    /// `"refuse"`: 415 for a request, 502 for a response.
    Refuse,
}

/// The filter, built once per instance from a validated [`Config`].
#[derive(Debug)]
pub struct JsonTransform {
    request: Option<Ops>,
    response: Option<Ops>,
    non_json: NonJson,
    mask: Value,
}

impl JsonTransform {
    /// Validates `config` (every path parsed); the error names the field.
    pub fn from_config(config: Config) -> Result<Self, String> {
        let request = config
            .request
            .map(|c| Ops::from_config(c, "request"))
            .transpose()?;
        let response = config
            .response
            .map(|c| Ops::from_config(c, "response"))
            .transpose()?;
        if request.is_none() && response.is_none() {
            return Err("request, response: give at least one of the two".into());
        }
        if config.mask.chars().any(char::is_control) {
            return Err("mask: must not contain control characters".into());
        }
        Ok(Self {
            request,
            response,
            non_json: config.non_json,
            mask: Value::String(config.mask),
        })
    }
}

/// What became of a body.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Nothing to do: it goes on as it came.
    Untouched,
    /// Edited: the new bytes.
    Changed(Vec<u8>),
    /// Not JSON, and why.
    NotJson(String),
}

/// Applies `ops` to a body, given its `content-type` and what the gateway handed over.
fn transform(
    ops: &Ops,
    mask: &Value,
    content_type: Option<&str>,
    body: Result<Vec<u8>, BodyError>,
) -> Outcome {
    let bytes = match body {
        Ok(b) => b,
        Err(BodyError::Encoded(encoding)) => {
            return Outcome::NotJson(format!("the body is `{encoding}`-encoded"));
        }
        // Not buffered (a `HEAD` answer, a 204): there is no body to edit.
        Err(_) => return Outcome::Untouched,
    };
    if bytes.is_empty() {
        return Outcome::Untouched;
    }
    match content_type {
        None => return Outcome::NotJson("the body has no content-type".into()),
        Some(ct) if !is_json(ct) => {
            return Outcome::NotJson(format!("content-type `{ct}` is not JSON"));
        }
        Some(_) => {}
    }
    let mut doc = match Value::parse(&bytes) {
        Ok(doc) => doc,
        Err(e) => return Outcome::NotJson(format!("malformed JSON: {e}")),
    };
    if ops.apply(&mut doc, mask) {
        Outcome::Changed(doc.to_bytes())
    } else {
        Outcome::Untouched
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

/// An RFC 9457 problem document.
fn problem(status: u16, title: &str, detail: &str) -> Vec<u8> {
    serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    })
    .to_string()
    .into_bytes()
}

const PROBLEM_JSON: &str = "application/problem+json";

fn refused(which: &'static str, why: &str) {
    metrics::counter_add("json_transform_refused", &[("body", which)], 1);
    log::log(
        Level::Debug,
        "body refused",
        &[("body", which), ("why", why)],
    );
}

impl Plugin for JsonTransform {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let filter = Self::from_config(config)?;
        // Only the bodies this config edits are read whole.
        let request = filter
            .request
            .as_ref()
            .map_or(Bodies::empty(), |_| Bodies::REQUEST);
        let response = filter
            .response
            .as_ref()
            .map_or(Bodies::empty(), |_| Bodies::RESPONSE);
        body::buffer(request | response);
        Ok(filter)
    }

    fn hooks(&self) -> Hooks {
        let request = self
            .request
            .as_ref()
            .map_or(Hooks::empty(), |_| Hooks::ON_REQUEST);
        let response = self
            .response
            .as_ref()
            .map_or(Hooks::empty(), |_| Hooks::ON_RESPONSE);
        // Nothing is carried from `on_request` to `on_response`: no `SAME_INSTANCE`.
        request | response
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let Some(ops) = &self.request else {
            return Action::Continue;
        };
        let content_type = req.header("content-type");
        let why = match transform(ops, &self.mask, content_type.as_deref(), req.body()) {
            Outcome::Untouched => return Action::Continue,
            Outcome::Changed(bytes) => match req.set_body(&bytes) {
                Ok(()) => return Action::Continue,
                Err(BodyError::TooLarge(max)) => {
                    refused("request", "too large");
                    return reply(413)
                        .header("content-type", PROBLEM_JSON)
                        .body(problem(
                            413,
                            "Content Too Large",
                            &format!("the transformed body is larger than {max} bytes"),
                        ))
                        .into();
                }
                Err(e) => {
                    log::log(
                        Level::Warn,
                        "cannot replace the request body",
                        &[("error", &format!("{e:?}"))],
                    );
                    return Action::Continue;
                }
            },
            Outcome::NotJson(why) => why,
        };
        if self.non_json == NonJson::Pass {
            return Action::Continue;
        }
        refused("request", &why);
        reply(415)
            .header("content-type", PROBLEM_JSON)
            .body(problem(
                415,
                "Unsupported Media Type",
                &format!("the request body must be JSON: {why}"),
            ))
            .into()
    }

    fn on_response(&mut self, _req: &Request, resp: &Response) {
        let Some(ops) = &self.response else {
            return;
        };
        let content_type = resp.header("content-type");
        let why = match transform(ops, &self.mask, content_type.as_deref(), resp.body()) {
            Outcome::Untouched => return,
            Outcome::Changed(bytes) => match resp.set_body(&bytes) {
                Ok(()) => {
                    // The upstream's validator no longer describes this body.
                    let _ = resp.remove_header("etag");
                    return;
                }
                Err(BodyError::TooLarge(max)) => {
                    format!("the transformed body is larger than {max} bytes")
                }
                Err(e) => {
                    log::log(
                        Level::Warn,
                        "cannot replace the response body",
                        &[("error", &format!("{e:?}"))],
                    );
                    return;
                }
            },
            Outcome::NotJson(why) if self.non_json == NonJson::Refuse => why,
            Outcome::NotJson(_) => return,
        };
        refused("response", &why);
        let _ = resp.set_status(502);
        let _ = resp.remove_header("etag");
        let _ = resp.set_headers(&[Header {
            name: "content-type".into(),
            value: PROBLEM_JSON.into(),
        }]);
        let detail = format!("the upstream's response body could not be transformed: {why}");
        // Also replaces a body the gateway could not decode (`br`...): it never goes out unchecked.
        if let Err(e) = resp.set_body(&problem(502, "Bad Gateway", &detail)) {
            // Only a problem document over `max_body_bytes` gets here: fail the
            // plugin rather than let the body through (503 when fail-closed).
            panic!("cannot refuse the response body, it would go out unchecked: {e:?}");
        }
    }
}

weir_sdk::export!(JsonTransform);

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(config: &str) -> Result<JsonTransform, String> {
        let c: Config = serde_json::from_str(config).map_err(|e| e.to_string())?;
        JsonTransform::from_config(c)
    }

    #[test]
    fn json_content_types_are_recognised() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
            "application/vnd.api+json",
        ] {
            assert!(is_json(yes), "{yes}");
        }
        for no in [
            "text/plain",
            "application/jsonx",
            "+json",
            "application/x-ndjson",
            "",
        ] {
            assert!(!is_json(no), "{no}");
        }
    }

    #[test]
    fn bodies_are_edited_passed_or_called_not_json() {
        let f = filter(r#"{"request":{"remove":["secret"]}}"#).unwrap();
        let ops = f.request.as_ref().unwrap();
        let t = |ct: Option<&str>, body: &str| {
            transform(ops, &f.mask, ct, Ok(body.as_bytes().to_vec()))
        };
        let json = Some("application/json");
        assert_eq!(
            t(json, r#"{"a":1,"secret":"s"}"#),
            Outcome::Changed(br#"{"a":1}"#.to_vec())
        );
        assert_eq!(
            t(json, "{ \"a\" : 1 }"),
            Outcome::Untouched,
            "nothing matched"
        );
        assert_eq!(t(None, ""), Outcome::Untouched, "empty");
        assert!(
            matches!(t(json, "{\"a\":"), Outcome::NotJson(w) if w.starts_with("malformed JSON"))
        );
        assert!(
            matches!(t(Some("text/plain"), "x"), Outcome::NotJson(w) if w.contains("text/plain"))
        );
        assert!(matches!(t(None, "{}"), Outcome::NotJson(_)));
        assert!(matches!(
            transform(ops, &f.mask, json, Err(BodyError::Encoded("br".into()))),
            Outcome::NotJson(w) if w.contains("br")
        ));
        assert_eq!(
            transform(ops, &f.mask, json, Err(BodyError::NotBuffered)),
            Outcome::Untouched
        );
    }

    #[test]
    fn the_config_is_checked_at_load_naming_the_field() {
        let err = |c: &str| filter(c).unwrap_err();
        assert_eq!(err("{}"), "request, response: give at least one of the two");
        assert!(err(r#"{"request":{}}"#).starts_with("request: give at least one of"));
        assert_eq!(
            err(r#"{"request":{"remove":["a", "b..c"]}}"#),
            "request.remove[1]: `b..c`: empty field name"
        );
        assert!(
            err(r#"{"response":{"redact":["x"]},"non_json":"drop"}"#)
                .contains("unknown variant `drop`")
        );
        assert!(err(r#"{"response":{"redact":["x"]},"mask":"\n"}"#).starts_with("mask:"));
        assert!(err(r#"{"response":{"redakt":["x"]}}"#).contains("unknown field `redakt`"));
        let ok = filter(r#"{"response":{"redact":["items[*].card"]}}"#).unwrap();
        assert_eq!(ok.hooks(), Hooks::ON_RESPONSE);
        assert_eq!(ok.mask, Value::String("***".into()));
    }
}
