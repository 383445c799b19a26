//! `weir ctl`: a running gateway's admin API from the command line, for
//! operators who roll plugin versions forward and back by hand.
//!
//! ```text
//! weir ctl --manifest gateway.toml status          # every rolled-out plugin's versions and shares
//! weir ctl --manifest gateway.toml promote auth    # every request runs the canary
//! weir ctl --admin 10.0.0.5:9901 rollback auth     # every request runs the stable version
//! weir ctl reset auth                              # back to the manifest's weights
//! ```
//!
//! The admin address and token come from `--admin` and the token variable
//! (`WEIR_ADMIN_TOKEN` by default), or from a manifest's `[admin]` section;
//! the token is never taken on the command line, where `ps` would show it.

use std::fmt::Write as _;
use std::path::Path;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::config::Manifest;
use crate::snapshot::AdminSettings;

/// Where the admin API is and how to authenticate.
#[derive(Clone)]
pub struct AdminTarget {
    /// `host:port` of the admin listener.
    pub addr: String,
    /// Bearer token, if the gateway requires one.
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTarget")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Why a `weir ctl` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The manifest could not be read, or has no usable `[admin]`.
    #[error("{0}")]
    Manifest(String),
    /// The admin API could not be reached.
    #[error("cannot reach the admin API at {addr}: {error}")]
    Unreachable {
        /// Where it was looked for.
        addr: String,
        /// What went wrong.
        error: String,
    },
    /// The gateway refused the command.
    #[error("{status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The gateway's explanation.
        message: String,
    },
}

impl AdminTarget {
    /// The admin address and token of `[admin]` in a manifest.
    pub fn from_manifest(path: &Path) -> Result<AdminTarget, CtlError> {
        let m = Manifest::load(path).map_err(|e| CtlError::Manifest(e.to_string()))?;
        match AdminSettings::resolve(&m) {
            Ok(Some(s)) => Ok(AdminTarget {
                addr: s.listen.to_string(),
                token: s.token,
            }),
            Ok(None) => Err(CtlError::Manifest(format!(
                "{}: no `[admin]` section, so the gateway has no admin API to control",
                path.display()
            ))),
            Err(errors) => Err(CtlError::Manifest(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            )),
        }
    }

    /// Sends one admin request; the JSON (or text) of a 2xx answer.
    pub async fn call(&self, method: Method, path: &str) -> Result<String, CtlError> {
        let unreachable = |e: &dyn std::fmt::Display| CtlError::Unreachable {
            addr: self.addr.clone(),
            error: e.to_string(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| unreachable(&e))?;
        let client = Client::builder(TokioExecutor::new()).build_http();
        let resp = client.request(req).await.map_err(|e| unreachable(&e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        if status.is_success() {
            return Ok(text);
        }
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| text.trim().to_string());
        Err(CtlError::Refused {
            status: status.as_u16(),
            message,
        })
    }
}

/// One rollout (as the admin API shows it) in a few lines of text.
pub fn describe_rollout(r: &Value) -> String {
    let mut out = String::new();
    let name = r["plugin"].as_str().unwrap_or("?");
    let _ = write!(
        out,
        "{name} (sticky {})",
        r["sticky"].as_str().unwrap_or("?")
    );
    if let Some(p) = r["promoted"].as_str() {
        let _ = write!(out, ", promoted by hand: {p}");
    }
    out.push('\n');
    for v in r["versions"].as_array().into_iter().flatten() {
        let window = &v["window"];
        let _ = write!(
            out,
            "  {:<16} {:>6.2}%  weight {:<5} {}  {} calls, {} failed, p99 {}",
            v["label"].as_str().unwrap_or("?"),
            v["share_percent"].as_f64().unwrap_or(0.0),
            v["weight"],
            &v["sha256"].as_str().unwrap_or("")[..12.min(v["sha256"].as_str().unwrap_or("").len())],
            window["calls"],
            window["failures"],
            window["p99"]
                .as_u64()
                .map_or("-".to_string(), |us| format!("{us}µs")),
        );
        if v["stable"].as_bool() == Some(true) {
            out.push_str("  (stable)");
        }
        if let Some(removed) = v["removed"].as_object() {
            let _ = write!(
                out,
                "  OUT: {}",
                removed.get("cause").and_then(Value::as_str).unwrap_or("?")
            );
        }
        out.push('\n');
    }
    out
}
