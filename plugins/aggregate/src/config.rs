//! The manifest config and its validation into ready [`Settings`].

use serde::Deserialize;
use weir_sdk::units::Duration;

use crate::template::Template;

/// Most calls one request may fan out to (the host's own cap per hook call,
/// `max_outbound_calls`, defaults to 8 and refuses the whole batch beyond it).
const MAX_CALLS: usize = 64;

/// The member of a partial answer naming the failed calls.
pub const ERRORS_MEMBER: &str = "errors";

/// The route's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `calls`: the upstream calls made for each request, in parallel.
    pub calls: Vec<CallConfig>,
    /// `on_partial`: what to answer when some calls fail.
    #[serde(default)]
    pub on_partial: OnPartial,
}

/// One call of the fan-out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallConfig {
    /// `name`: the member of the merged document holding this call's answer.
    pub name: String,
    /// `upstream`: the `[upstreams.NAME]` to call; it must be in `grants.http`.
    pub upstream: String,
    /// `path`: a path template, e.g. `/users/{segment.1}?{query}`.
    pub path: String,
    /// `method`: default `GET`.
    #[serde(default = "default_method")]
    pub method: String,
    /// `timeout`: give up on this call after this long (always within the
    /// plugin's `call_timeout`).
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// `forward_headers`: request headers copied onto this call (e.g. `authorization`).
    #[serde(default)]
    pub forward_headers: Vec<String>,
}

/// `on_partial`: the answer when some (not all) calls fail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnPartial {
    /// `"error"`: 502 with a problem+json body naming the failed calls.
    #[default]
    Error,
    /// `"partial"`: 200 with failed calls as `null` and an `errors` member.
    Partial,
}

fn default_method() -> String {
    "GET".into()
}

/// One validated call.
#[derive(Debug)]
pub struct Call {
    /// Its member name.
    pub name: String,
    /// The upstream's name.
    pub upstream: String,
    /// The method.
    pub method: String,
    /// The parsed path template.
    pub path: Template,
    /// `timeout` in milliseconds.
    pub timeout_ms: Option<u32>,
    /// Headers copied from the request.
    pub forward_headers: Vec<String>,
}

/// The validated config.
#[derive(Debug)]
pub struct Settings {
    /// The calls, in config order.
    pub calls: Vec<Call>,
    /// The answer on partial failure.
    pub on_partial: OnPartial,
}

impl Settings {
    /// Validates `config`; the error names the offending field.
    pub fn from_config(c: Config) -> Result<Self, String> {
        if c.calls.is_empty() {
            return Err("calls: at least one call is required".into());
        }
        if c.calls.len() > MAX_CALLS {
            return Err(format!("calls: at most {MAX_CALLS}"));
        }
        let mut calls: Vec<Call> = Vec::with_capacity(c.calls.len());
        for (i, call) in c.calls.into_iter().enumerate() {
            let at = |field: &str, e: String| format!("calls[{i}].{field}: {e}");
            if call.name.is_empty() {
                return Err(at("name", "must not be empty".into()));
            }
            if c.on_partial == OnPartial::Partial && call.name == ERRORS_MEMBER {
                return Err(at(
                    "name",
                    "`errors` names the failed calls in a partial answer; pick another name".into(),
                ));
            }
            if let Some(j) = calls.iter().position(|c| c.name == call.name) {
                return Err(at("name", format!("duplicate of calls[{j}].name")));
            }
            if call.upstream.is_empty() {
                return Err(at("upstream", "must name a granted `[upstreams.*]`".into()));
            }
            if call.method.is_empty() || !call.method.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(at(
                    "method",
                    format!("{:?} is not a method, e.g. \"GET\"", call.method),
                ));
            }
            let path = Template::parse(&call.path).map_err(|e| at("path", e))?;
            let timeout_ms = call
                .timeout
                .map(|t| {
                    u32::try_from(t.0.as_millis()).map_err(|_| at("timeout", "too long".into()))
                })
                .transpose()?;
            for (k, h) in call.forward_headers.iter().enumerate() {
                weir_sdk::check_header_name(h)
                    .map_err(|e| at(&format!("forward_headers[{k}]"), e))?;
            }
            calls.push(Call {
                name: call.name,
                upstream: call.upstream,
                method: call.method,
                path,
                timeout_ms,
                forward_headers: call.forward_headers,
            });
        }
        Ok(Settings {
            calls,
            on_partial: c.on_partial,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> Result<Settings, String> {
        let c: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Settings::from_config(c)
    }

    #[test]
    fn decodes_calls_with_defaults() {
        let s = settings(
            r#"{"calls":[{"name":"user","upstream":"users","path":"/users/{segment.1}","timeout":"200ms"}]}"#,
        )
        .unwrap();
        assert_eq!(s.on_partial, OnPartial::Error);
        assert_eq!(s.calls[0].method, "GET");
        assert_eq!(s.calls[0].timeout_ms, Some(200));
        let s = settings(
            r#"{"calls":[{"name":"a","upstream":"u","path":"/"}],"on_partial":"partial"}"#,
        )
        .unwrap();
        assert_eq!(s.on_partial, OnPartial::Partial);
        assert!(
            settings(r#"{"calls":[],"on_partial":"maybe"}"#)
                .unwrap_err()
                .contains("unknown variant `maybe`")
        );
    }

    #[test]
    fn bad_calls_name_the_field() {
        let err = |j: &str| settings(j).unwrap_err();
        assert_eq!(
            err(r#"{"calls":[]}"#),
            "calls: at least one call is required"
        );
        assert_eq!(
            err(
                r#"{"calls":[{"name":"a","upstream":"u","path":"/"},{"name":"a","upstream":"u","path":"/"}]}"#
            ),
            "calls[1].name: duplicate of calls[0].name"
        );
        assert!(
            err(r#"{"calls":[{"name":"a","upstream":"u","path":"x"}]}"#)
                .starts_with("calls[0].path:")
        );
        assert!(
            err(r#"{"calls":[{"name":"a","upstream":"u","path":"/{x}"}]}"#)
                .starts_with("calls[0].path:")
        );
        assert!(
            err(r#"{"calls":[{"name":"a","upstream":"u","path":"/","method":"get"}]}"#)
                .starts_with("calls[0].method:")
        );
        assert!(
            err(
                r#"{"calls":[{"name":"errors","upstream":"u","path":"/"}],"on_partial":"partial"}"#
            )
            .starts_with("calls[0].name:")
        );
        assert!(
            err(r#"{"calls":[{"name":"a","upstream":"u","path":"/","forward_headers":["X"]}]}"#)
                .starts_with("calls[0].forward_headers[0]:")
        );
    }
}
