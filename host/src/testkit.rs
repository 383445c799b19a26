//! Unit tests for plugins, without a gateway to run: a plain `cargo test` of
//! a plugin crate builds it for `wasm32-wasip2`, loads the component in the
//! real Weir runtime (same sandbox, limits, host state and config checks as
//! in production) on a one-route manifest, and sends it requests in-process.
//! Nothing is simulated but the upstream, a stub on 127.0.0.1 that records
//! what it received.
//!
//! In the plugin crate's `Cargo.toml`:
//!
//! ```toml
//! [dev-dependencies]
//! weir = { path = "../../host" }     # or the version you run
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//! ```
//!
//! and in `tests/plugin.rs`:
//!
//! ```no_run
//! use weir::testkit::{Harness, TestRequest, build_plugin};
//!
//! #[tokio::test]
//! async fn a_request_without_the_key_gets_401() {
//!     let wasm = build_plugin(env!("CARGO_MANIFEST_DIR")).unwrap();
//!     let h = Harness::new(&wasm, r#"keys = [{ key = "k1", consumer = "alice" }]"#)
//!         .await
//!         .unwrap();
//!     let out = h.send(TestRequest::get("/orders")).await;
//!     assert_eq!(out.status, 401);
//!     assert_eq!(out.answered_by.as_deref(), Some("plugin"));
//!     assert!(out.upstream.is_none());
//!
//!     let out = h.send(TestRequest::get("/orders").header("x-api-key", "k1")).await;
//!     assert_eq!(out.status, 200);
//!     let up = out.upstream.unwrap();
//!     assert_eq!(up.headers["x-consumer"], "alice");
//! }
//! # fn main() {}
//! ```
//!
//! Each [`Harness`] has its own host state (the plugin is loaded under a
//! name of its own), so tests run in parallel without sharing counters.
//! [`advance_clock`] moves the time every plugin of the process sees.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::HeaderMap;

use crate::cases::file::StubAnswer;
use crate::cases::stub::{Received, Stub};
use crate::config::Manifest;
use crate::plugin::Runtime;
use crate::plugin::host::clock;
use crate::proxy::ConnInfo;
use crate::snapshot::Snapshot;
use crate::telemetry::metrics::Metrics;

/// Builds the plugin crate at `manifest_dir` (pass `env!("CARGO_MANIFEST_DIR")`)
/// for `wasm32-wasip2` with the `plugin` profile when it has one (`release`
/// otherwise), once per process, and returns the `.wasm` path.
pub fn build_plugin(manifest_dir: &str) -> Result<PathBuf, String> {
    static BUILT: OnceLock<Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(Mutex::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = built.iter().find(|(d, _)| d == manifest_dir) {
        return Ok(path.clone());
    }
    let dir = Path::new(manifest_dir);
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
    let doc: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let name = doc
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .ok_or_else(|| format!("{}: no [package] name", manifest.display()))?
        .replace('-', "_");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The workspace's target dir (shared with the gateway's own plugin builds).
    let root = Command::new(&cargo)
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| dir.to_path_buf());
    let target = root.join("target/plugins");
    let mut profile = "plugin";
    let has_plugin_profile = std::fs::read_to_string(root.join("Cargo.toml"))
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .is_some_and(|t| t.get("profile").and_then(|p| p.get("plugin")).is_some());
    if !has_plugin_profile {
        profile = "release";
    }
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--target", "wasm32-wasip2", "--profile", profile])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target);
    // The test's own build settings must not leak into the wasm build.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building {} for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`):\n{}",
            manifest.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let wasm = target
        .join("wasm32-wasip2")
        .join(profile)
        .join(format!("{name}.wasm"));
    if !wasm.is_file() {
        return Err(format!("built, but {} is missing", wasm.display()));
    }
    built.push((manifest_dir.to_string(), wasm.clone()));
    Ok(wasm)
}

/// Moves the clock plugins read (and host state windows and buckets) forward,
/// for every plugin in this process.
pub fn advance_clock(by: std::time::Duration) {
    clock::advance(by.as_millis() as u64);
}

/// A request to send: method, target, headers, body, client address.
#[derive(Debug, Clone)]
pub struct TestRequest {
    method: http::Method,
    target: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    client: SocketAddr,
}

impl TestRequest {
    /// A request with `method` for `target` (path and query).
    pub fn new(method: http::Method, target: &str) -> Self {
        TestRequest {
            method,
            target: target.to_string(),
            headers: Vec::new(),
            body: Bytes::new(),
            client: crate::cases::DEFAULT_PEER,
        }
    }

    /// `GET target`.
    pub fn get(target: &str) -> Self {
        Self::new(http::Method::GET, target)
    }

    /// `POST target` with `body`.
    pub fn post(target: &str, body: impl Into<Bytes>) -> Self {
        let mut r = Self::new(http::Method::POST, target);
        r.body = body.into();
        r
    }

    /// Adds a header (repeat for several values).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The client address the gateway sees (default `192.0.2.10:40000`).
    pub fn client(mut self, addr: SocketAddr) -> Self {
        self.client = addr;
        self
    }
}

/// What came of a request.
#[derive(Debug)]
pub struct Outcome {
    /// The status the client got.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The response body.
    pub body: Bytes,
    /// `Some("plugin")` when the plugin answered, `Some("gateway")` for the
    /// gateway's own answers (a failed plugin: 503), `None` when the upstream did.
    pub answered_by: Option<String>,
    /// The request variables after the request hook.
    pub vars: Vec<(String, String)>,
    /// What the upstream received, if it was called.
    pub upstream: Option<Received>,
}

impl Outcome {
    /// The response header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The request variable `name` after the request hook.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `v` as inline TOML (so nested tables stay inside the route's `config = { ... }`).
fn inline(v: &toml::Value) -> String {
    match v {
        toml::Value::Table(t) => {
            let fields: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{} = {}", toml::Value::String(k.clone()), inline(v)))
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
        toml::Value::Array(a) => {
            let items: Vec<String> = a.iter().map(inline).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// One plugin loaded with one config on a one-route gateway.
pub struct Harness {
    snap: Arc<Snapshot>,
    stub: Stub,
    answer: Mutex<StubAnswer>,
    plugin: String,
}

impl Harness {
    /// Loads `wasm` with `config` (the TOML table a route would give it, e.g.
    /// `rate = 10`). An error is what `weir check` would say: a config the
    /// plugin rejects, a plugin that does not load.
    pub async fn new(wasm: &Path, config: &str) -> Result<Harness, String> {
        Self::with_settings(wasm, config, "").await
    }

    /// [`Harness::new`] with extra `[plugins.NAME]` settings (limits, grants,
    /// `isolation`), as TOML lines, e.g. `max_memory = "16MiB"`.
    pub async fn with_settings(
        wasm: &Path,
        config: &str,
        settings: &str,
    ) -> Result<Harness, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let plugin = format!("plugin-{n}");
        let dir = std::env::temp_dir().join(format!("weir-testkit-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join("gateway.toml");
        let config: toml::Table = toml::from_str(config).map_err(|e| format!("config: {e}"))?;
        let manifest = format!(
            "[plugins.{plugin}]\npath = {wasm}\n{settings}\n\n[[routes]]\nid = \"test\"\nprefix = \"/\"\nupstream = \"builtin:echo\"\n\n[[routes.plugins]]\nname = \"{plugin}\"\nconfig = {config}\n",
            wasm = toml::Value::String(wasm.display().to_string()),
            config = inline(&toml::Value::Table(config)),
        );
        std::fs::write(&path, manifest).map_err(|e| e.to_string())?;
        let stub = Stub::start().await.map_err(|e| e.to_string())?;
        let loaded = match Manifest::load(&path) {
            Ok(m) => crate::cases::load_against_stub(
                m,
                &stub,
                Runtime::global(),
                &Arc::new(Metrics::new()),
            )
            .await
            .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Harness {
            snap: Arc::new(loaded?),
            stub,
            answer: Mutex::new(StubAnswer::default()),
            plugin,
        })
    }

    /// What the stub upstream answers from now on (default: 200, no body).
    pub fn upstream_answers(&self, status: u16, headers: &[(&str, &str)], body: &str) {
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = StubAnswer {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            body: body.to_string(),
        };
    }

    /// Sends `req` through the plugin (its request hook, the stub upstream
    /// unless the plugin answered, its response hook).
    pub async fn send(&self, req: TestRequest) -> Outcome {
        let answer = self
            .answer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.stub.prepare(answer);
        let headers = req.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let built =
            crate::cases::client_request(req.method.as_str(), &req.target, headers, req.body)
                .unwrap_or_else(|e| panic!("invalid test request: {e}"));
        let conn = ConnInfo {
            peer: req.client,
            tls: false,
        };
        let seen = crate::cases::send(&self.snap, built, conn).await;
        let answered_by = seen.observed.answered_by.as_deref().map(|who| {
            if who == self.plugin {
                "plugin".to_string()
            } else {
                who.to_string()
            }
        });
        Outcome {
            status: seen.status,
            headers: seen.headers,
            body: seen.body.unwrap_or_default(),
            answered_by,
            vars: seen.observed.vars,
            upstream: self.stub.received().pop(),
        }
    }
}
