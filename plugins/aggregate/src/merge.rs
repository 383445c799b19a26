//! Merging the calls' answers into one document. Pure logic, unit-tested natively.

use serde_json::{Map, Value, json};

use crate::config::{ERRORS_MEMBER, OnPartial};

/// The reply to send: status, content type and body.
#[derive(Debug, PartialEq)]
pub struct Merged {
    /// 200 or 502.
    pub status: u16,
    /// `application/json` or `application/problem+json`.
    pub content_type: &'static str,
    /// The document.
    pub body: Value,
}

/// Merges `(name, answer or why it failed)` in config order.
///
/// Every call answered: 200 `{ name: answer, ... }`. Some failed: with
/// `partial`, 200 with `null` for each failed one and `errors: { name: why }`;
/// with `error`, or when every call failed, 502 problem+json (RFC 9457)
/// with the same `errors` member.
pub fn merge(parts: Vec<(&str, Result<Value, String>)>, on_partial: OnPartial) -> Merged {
    let total = parts.len();
    let mut doc = Map::with_capacity(total + 1);
    let mut errors = Map::new();
    for (name, result) in parts {
        match result {
            Ok(v) => {
                doc.insert(name.to_string(), v);
            }
            Err(why) => {
                doc.insert(name.to_string(), Value::Null);
                errors.insert(name.to_string(), Value::String(why));
            }
        }
    }
    if errors.is_empty() {
        return Merged {
            status: 200,
            content_type: "application/json",
            body: Value::Object(doc),
        };
    }
    let failed = errors.len();
    if on_partial == OnPartial::Partial && failed < total {
        doc.insert(ERRORS_MEMBER.to_string(), Value::Object(errors));
        return Merged {
            status: 200,
            content_type: "application/json",
            body: Value::Object(doc),
        };
    }
    Merged {
        status: 502,
        content_type: "application/problem+json",
        body: json!({
            "type": "about:blank",
            "title": "Bad Gateway",
            "status": 502,
            "detail": format!("{failed} of {total} upstream calls failed"),
            ERRORS_MEMBER: errors,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_answers_merge_under_their_names() {
        let m = merge(
            vec![
                ("user", Ok(json!({"id": 1}))),
                ("orders", Ok(json!([1, 2]))),
            ],
            OnPartial::Error,
        );
        assert_eq!(m.status, 200);
        assert_eq!(m.body, json!({"user": {"id": 1}, "orders": [1, 2]}));
    }

    #[test]
    fn a_failure_is_null_plus_errors_in_partial_mode() {
        let m = merge(
            vec![
                ("user", Ok(json!({"id": 1}))),
                ("orders", Err("timeout".into())),
            ],
            OnPartial::Partial,
        );
        assert_eq!(m.status, 200);
        assert_eq!(
            m.body,
            json!({"user": {"id": 1}, "orders": null, "errors": {"orders": "timeout"}})
        );
    }

    #[test]
    fn a_failure_is_a_502_problem_in_error_mode_and_when_all_fail() {
        let m = merge(
            vec![("user", Ok(json!(1))), ("orders", Err("status 500".into()))],
            OnPartial::Error,
        );
        assert_eq!(m.status, 502);
        assert_eq!(m.content_type, "application/problem+json");
        assert_eq!(m.body["errors"], json!({"orders": "status 500"}));
        assert_eq!(m.body["detail"], "1 of 2 upstream calls failed");
        let m = merge(vec![("user", Err("timeout".into()))], OnPartial::Partial);
        assert_eq!(m.status, 502);
    }
}
