//! `builtin:echo`: a demo upstream that answers with what it received, as
//! JSON, so the quickstart needs nothing else running.

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};

use crate::body::{Body, full};

/// Answers `req` with a JSON description of it: method, path, query, headers, body.
pub async fn respond(req: Request<Body>) -> Result<Response<Body>, crate::body::BoxError> {
    let (parts, body) = req.into_parts();
    let body: Bytes = body.collect().await?.to_bytes();
    let mut headers = Map::new();
    for name in parts.headers.keys() {
        let values: Vec<Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let v = if values.len() == 1 {
            values.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(values)
        };
        headers.insert(name.as_str().to_string(), v);
    }
    let doc = json!({
        "upstream": "builtin:echo",
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut text = serde_json::to_string_pretty(&doc)?;
    text.push('\n');
    let mut resp = Response::new(full(text));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
