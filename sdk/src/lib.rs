//! # weir-sdk: write filters for the Weir API gateway
//!
//! A filter is a WebAssembly component that Weir runs in a sandbox on every
//! request of the routes that list it. Writing one takes four steps:
//!
//! 1. `cargo new --lib my-filter`, then in its `Cargo.toml` set
//!    `crate-type = ["cdylib"]` under `[lib]` and depend on `weir-sdk` and
//!    `serde` (with the `derive` feature).
//! 2. Implement [`Plugin`] for a type: its `Config` is the route's TOML table,
//!    decoded with serde when the plugin is loaded; every hook has a no-op
//!    default, and [`Plugin::hooks`] tells the gateway which ones to call.
//! 3. Call [`export!`] with the type.
//! 4. `cargo build --target wasm32-wasip2 --release` and list the
//!    `.wasm` in the gateway's manifest.
//!
//! ```no_run
//! use weir_sdk::{Action, Plugin, Request, reply};
//!
//! #[derive(serde::Deserialize)]
//! struct Config {
//!     /// Requests without this header are refused.
//!     required: String,
//! }
//!
//! struct RequireHeader {
//!     config: Config,
//! }
//!
//! impl Plugin for RequireHeader {
//!     type Config = Config;
//!
//!     fn new(config: Config) -> Result<Self, String> {
//!         Ok(Self { config })
//!     }
//!
//!     fn on_request(&mut self, req: &Request) -> Action {
//!         if req.header(&self.config.required).is_none() {
//!             return reply(400).text(format!("missing {}\n", self.config.required)).into();
//!         }
//!         Action::Continue
//!     }
//! }
//!
//! weir_sdk::export!(RequireHeader);
//! # fn main() {}
//! ```
//!
//! The guide from nothing to a deployed plugin (config, hooks, what `self`
//! means, host state, metrics, limits, testing with `weir::testkit`,
//! debugging) is this crate's `README.md`.
//!
//! Host services are in [`log`], [`clock`], [`state`] (shared counters and
//! token buckets, atomic across every instance of the plugin) and
//! [`metrics`] (counters in the gateway's Prometheus metrics).
//!
//! This SDK speaks `weir:plugin@0.2.0`. Each kind of access is its own WIT
//! interface (`edit-request`, `rewrite`, `vars`, `edit-response`, `state`...),
//! and a built plugin imports only those its code calls: `weir audit` shows
//! them as what the plugin may do. Every call into the gateway crosses the
//! sandbox boundary, so read a header once and keep it, and prefer
//! [`Request::set_headers`] / [`Request::set_vars`] for several edits.
#![deny(missing_docs)]

extern crate self as weir_sdk;

pub mod units;

use std::any::Any;
use std::cell::RefCell;

/// Bindings generated from the `weir:plugin` WIT package. Most authors only
/// need the re-exports at the crate root.
#[allow(missing_docs, unsafe_code)]
pub mod wit {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "weir_sdk::wit",
        runtime_path: "weir_sdk::__private::wit_bindgen::rt",
    });
}

pub use wit::exports::weir::plugin::filter::Hooks;
pub use wit::weir::plugin::body::{Bodies, BodyError};
pub use wit::weir::plugin::http::{Action, EditError, Header, Reply, Request, Response};

// Each kind of change is its own WIT interface, so a plugin imports (and
// `weir audit` shows) only what its code calls: a method never called here
// is dropped at link time, and its interface with it.
impl Request {
    /// Replaces every value of a header with one value.
    pub fn set_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        wit::weir::plugin::edit_request::set_header(self, name, value)
    }
    /// Sets several headers in one call to the gateway (cheaper than one
    /// [`Request::set_header`] each). Stops at the first refused one and says
    /// which (its index); those before it are set.
    pub fn set_headers(&self, headers: &[Header]) -> Result<(), (u32, EditError)> {
        wit::weir::plugin::edit_request::set_headers(self, headers)
    }
    /// Adds a value to a header, keeping the others.
    pub fn append_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        wit::weir::plugin::edit_request::append_header(self, name, value)
    }
    /// Removes a header; returns whether it was present.
    pub fn remove_header(&self, name: &str) -> Result<bool, EditError> {
        wit::weir::plugin::edit_request::remove_header(self, name)
    }
    /// Rewrites the path sent upstream (must start with `/`; normalised like
    /// incoming paths; routing is not redone).
    pub fn set_path(&self, path: &str) -> Result<(), EditError> {
        wit::weir::plugin::rewrite::set_path(self, path)
    }
    /// Replaces the query string (`None` removes it).
    pub fn set_query(&self, query: Option<&str>) -> Result<(), EditError> {
        wit::weir::plugin::rewrite::set_query(self, query)
    }
    /// Sets a per-request variable visible to later filters and to response
    /// hooks (e.g. `consumer` from an auth filter). Variables never leave the gateway.
    pub fn set_var(&self, name: &str, value: &str) -> Result<(), EditError> {
        wit::weir::plugin::vars::set_var(self, name, value)
    }
    /// The request body, if this filter asked for it in [`Plugin::new`]
    /// ([`body::buffer`]) and it is not in an encoding the gateway does not
    /// decode. Empty when the request has none.
    pub fn body(&self) -> Result<Vec<u8>, BodyError> {
        wit::weir::plugin::body::request_body(self)
    }
    /// Replaces the request body sent upstream (`on_request` only; the
    /// gateway sets `content-length`). At most the plugin's `max_body_bytes`.
    pub fn set_body(&self, body: &[u8]) -> Result<(), BodyError> {
        wit::weir::plugin::body::set_request_body(self, body)
    }
    /// Sets several variables in one call to the gateway. Stops at the first
    /// refused one and says which (its index); those before it are set.
    pub fn set_vars(&self, vars: &[(&str, &str)]) -> Result<(), (u32, EditError)> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        wit::weir::plugin::vars::set_vars(self, &vars)
    }
}

impl Response {
    /// Changes the status code (200..=599).
    pub fn set_status(&self, status: u16) -> Result<(), EditError> {
        wit::weir::plugin::edit_response::set_status(self, status)
    }
    /// Replaces every value of a header with one value.
    pub fn set_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        wit::weir::plugin::edit_response::set_header(self, name, value)
    }
    /// Sets several headers in one call to the gateway (cheaper than one
    /// [`Response::set_header`] each). Stops at the first refused one and says
    /// which (its index); those before it are set.
    pub fn set_headers(&self, headers: &[Header]) -> Result<(), (u32, EditError)> {
        wit::weir::plugin::edit_response::set_headers(self, headers)
    }
    /// Adds a value to a header, keeping the others.
    pub fn append_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        wit::weir::plugin::edit_response::append_header(self, name, value)
    }
    /// Removes a header; returns whether it was present.
    pub fn remove_header(&self, name: &str) -> Result<bool, EditError> {
        wit::weir::plugin::edit_response::remove_header(self, name)
    }
    /// The response body (the upstream's or an early reply's), if this
    /// filter asked for it in [`Plugin::new`] ([`body::buffer`]).
    pub fn body(&self) -> Result<Vec<u8>, BodyError> {
        wit::weir::plugin::body::response_body(self)
    }
    /// Replaces the response body sent to the client (the gateway sets
    /// `content-length`). At most the plugin's `max_body_bytes`.
    pub fn set_body(&self, body: &[u8]) -> Result<(), BodyError> {
        wit::weir::plugin::body::set_response_body(self, body)
    }
}

/// Bodies: a filter asks for them once, in [`Plugin::new`], and reads or
/// replaces them with [`Request::body`], [`Request::set_body`],
/// [`Response::body`] and [`Response::set_body`].
///
/// Asking costs every request of the route a buffered body (up to the
/// plugin's `max_body_bytes`; a larger one is refused, 413 or 502), so ask
/// only for what this config needs. Bodies are handed over decoded (gzip
/// and deflate); another encoding gives [`BodyError::Encoded`].
///
/// ```no_run
/// # use weir_sdk::{Bodies, body};
/// // In `Plugin::new`:
/// body::buffer(Bodies::REQUEST | Bodies::RESPONSE);
/// ```
pub mod body {
    pub use crate::wit::weir::plugin::body::{Bodies, BodyError};

    /// Asks for bodies on this route. Call it in [`crate::Plugin::new`]; elsewhere it does nothing.
    pub fn buffer(which: Bodies) {
        crate::wit::weir::plugin::body::buffer(which);
    }
}

/// HTTP calls to the upstreams the manifest grants this plugin
/// (`grants = { http = ["idp"] }` in `[plugins.NAME]`).
///
/// A hook may make `max_outbound_calls` calls (default 8); each waits without
/// holding a gateway worker and is cut by what is left of the hook's
/// `call_timeout`. Every failure is a [`CallError`] to handle, never a trap.
///
/// ```no_run
/// use weir_sdk::outbound;
///
/// # fn f() -> Result<(), outbound::CallError> {
/// let resp = outbound::post("idp", "/introspect")
///     .header("content-type", "application/x-www-form-urlencoded")
///     .body("token=abc")
///     .timeout_ms(200)
///     .send()?;
/// if resp.status == 200 {
///     let claims: serde_json::Value = resp.json().unwrap_or_default();
/// }
/// # Ok(()) }
/// ```
pub mod outbound {
    use crate::wit::weir::plugin::outbound as host;
    pub use crate::wit::weir::plugin::outbound::{CallError, IncomingResponse, OutgoingRequest};

    /// Starts a request to `upstream` (a `[upstreams.NAME]` granted to this plugin).
    pub fn request(method: &str, upstream: &str, path: &str) -> OutgoingRequest {
        OutgoingRequest {
            upstream: upstream.into(),
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms: None,
        }
    }
    /// A `GET` request.
    pub fn get(upstream: &str, path: &str) -> OutgoingRequest {
        request("GET", upstream, path)
    }
    /// A `POST` request.
    pub fn post(upstream: &str, path: &str) -> OutgoingRequest {
        request("POST", upstream, path)
    }

    impl OutgoingRequest {
        /// Adds a header.
        pub fn header(mut self, name: &str, value: &str) -> Self {
            self.headers.push(crate::Header {
                name: name.into(),
                value: value.into(),
            });
            self
        }
        /// Sets the body.
        pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
            self.body = body.into();
            self
        }
        /// Sets a JSON body and its `content-type`.
        pub fn json(self, body: &serde_json::Value) -> Self {
            self.header("content-type", "application/json")
                .body(body.to_string())
        }
        /// Gives up after `ms` milliseconds.
        pub fn timeout_ms(mut self, ms: u32) -> Self {
            self.timeout_ms = Some(ms);
            self
        }
        /// Sends it and waits for the whole response.
        pub fn send(self) -> Result<IncomingResponse, CallError> {
            host::send(&self)
        }
    }

    /// Sends every request at once (in parallel) and waits for all; results in order.
    pub fn send_all(reqs: &[OutgoingRequest]) -> Vec<Result<IncomingResponse, CallError>> {
        host::send_all(reqs)
    }

    impl IncomingResponse {
        /// The first value of a header (names are lower case).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.as_str())
        }
        /// The body decoded as JSON.
        pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
            serde_json::from_slice(&self.body).map_err(|e| e.to_string())
        }
    }
}

/// A cache of byte values with an expiry, in host state: every instance of
/// this plugin (and every gateway on the same `[state]` backend) sees it.
/// Values count towards the plugin's `max_state_bytes`; a [`set`] that does
/// not fit returns false.
pub mod cache {
    use crate::wit::weir::plugin::cache as host;

    /// The value under `key`, unless absent or expired.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        host::get(key)
    }
    /// Stores `value` under `key` for `ttl_ms` milliseconds (at most a day).
    pub fn set(key: &str, value: &[u8], ttl_ms: u64) -> bool {
        host::set(key, value, ttl_ms)
    }
    /// Forgets `key`.
    pub fn delete(key: &str) {
        host::delete(key);
    }
}

/// Logging into the gateway's log; records carry the plugin and route.
pub mod log {
    pub use crate::wit::weir::plugin::log::Level;
    use crate::wit::weir::plugin::log::log as host_log;

    /// Logs `message` at `level` with extra key/value `fields`.
    pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        host_log(level, message, &fields);
    }
    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message, &[]);
    }
    /// Logs at info level.
    pub fn info(message: &str) {
        log(Level::Info, message, &[]);
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message, &[]);
    }
    /// Logs at error level.
    pub fn error(message: &str) {
        log(Level::Error, message, &[]);
    }
}

/// Wall-clock time from the host.
pub mod clock {
    /// Milliseconds since the Unix epoch.
    pub fn now_ms() -> u64 {
        crate::wit::weir::plugin::clock::now_ms()
    }
    /// Seconds since the Unix epoch.
    pub fn now_secs() -> u64 {
        now_ms() / 1000
    }
}

/// Shared state owned by the host: counters and token buckets that every
/// instance of this plugin sees, updated atomically. The gateway bounds each
/// plugin's state (`max_state_entries`, `max_state_bytes`): creating a key
/// past that traps, so key by something bounded (a client, a tenant), not by
/// each request.
pub mod state {
    pub use crate::wit::weir::plugin::state::{Bucket, TakeResult, WindowCount, incr_window, take};
}

/// Counters in the gateway's Prometheus metrics.
///
/// `counter_add("keys_rejected", &[("reason", "missing")], 1)` shows up as
/// `weir_custom_keys_rejected_total{plugin="...",route="...",reason="missing"}`.
/// Names and label names are `[a-zA-Z_][a-zA-Z0-9_]*` (a name must not end
/// in `_total`); at most 8 labels; at most 1000 distinct series per plugin.
/// The host drops calls that break these rules, and counts the drops in
/// `weir_plugin_counter_drops_total`. Keep label values to a small set (a
/// reason, a tier), never a user id or a path.
pub mod metrics {
    /// Adds `delta` to the counter `name{labels}`.
    pub fn counter_add(name: &str, labels: &[(&str, &str)], delta: u64) {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        crate::wit::weir::plugin::metrics::counter_add(name, &labels, delta);
    }
}

/// A filter. Implement it for a type and pass the type to [`export!`].
///
/// One value of the type lives in each sandboxed instance and, unless the
/// route sets `isolation = "request"`, serves many requests one at a time.
/// With [`Hooks::SAME_INSTANCE`] (in the default [`Plugin::hooks`]) a
/// request's `on_request` and `on_response` run on the same instance with no
/// other request in between, so `self` may carry what `on_request` found to
/// `on_response` (set it afresh in every `on_request`). Keep state that all
/// instances must agree on in [`state`].
pub trait Plugin: Sized + 'static {
    /// The per-route config, decoded from the manifest's TOML table.
    type Config: serde::de::DeserializeOwned;

    /// Builds the filter from its config when the gateway loads it for a
    /// route. Returning `Err` rejects the config: `weir check` and startup
    /// fail with this message, naming the route and plugin. A filter that
    /// needs bodies asks for them here ([`body::buffer`]).
    fn new(config: Self::Config) -> Result<Self, String>;

    /// The hooks the gateway calls on this route, asked once after
    /// [`Plugin::new`]. The default is both hooks on the same instance. A
    /// filter with nothing to do on responses (with this config) returns
    /// [`Hooks::ON_REQUEST`], and the gateway skips that hook call on every
    /// request; one whose `on_response` needs nothing from its own
    /// `on_request` leaves out [`Hooks::SAME_INSTANCE`], and fewer instances
    /// are live under load.
    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST | Hooks::ON_RESPONSE | Hooks::SAME_INSTANCE
    }

    /// Runs for each request, in the route's plugin order. The default
    /// lets the request through.
    fn on_request(&mut self, req: &Request) -> Action {
        let _ = req;
        Action::Continue
    }

    /// Runs for each response, in reverse plugin order. The request is
    /// read-only here. The default does nothing.
    fn on_response(&mut self, req: &Request, resp: &Response) {
        let _ = (req, resp);
    }
}

/// Checks a header name from a config: a non-empty HTTP token in lower case
/// (the host lower-cases names, so an upper-case name in a config is a typo).
/// Call it in [`Plugin::new`] so a bad name fails at load, not per request.
pub fn check_header_name(name: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(tchar) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "{name:?} must be lower case (write {:?})",
            name.to_ascii_lowercase()
        ));
    }
    Ok(())
}

/// Starts an early reply with `status`; finish with [`ReplyBuilder::text`],
/// [`ReplyBuilder::json`] or [`ReplyBuilder::empty`], or turn it into an
/// [`Action`] with `.into()`.
pub fn reply(status: u16) -> ReplyBuilder {
    ReplyBuilder {
        reply: Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        },
    }
}

/// Builds a [`Reply`] for [`Action::Respond`].
#[derive(Debug, Clone)]
pub struct ReplyBuilder {
    reply: Reply,
}

impl ReplyBuilder {
    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.reply.headers.push(Header {
            name: name.into(),
            value: value.into(),
        });
        self
    }
    /// Sets a `text/plain` body.
    pub fn text(self, body: impl Into<String>) -> Self {
        self.header("content-type", "text/plain; charset=utf-8")
            .body(body.into().into_bytes())
    }
    /// Sets an `application/json` body.
    pub fn json(self, body: &serde_json::Value) -> Self {
        self.header("content-type", "application/json")
            .body(body.to_string().into_bytes())
    }
    /// Sets the raw body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.reply.body = body.into();
        self
    }
    /// Finishes as an [`Action::Respond`].
    pub fn empty(self) -> Action {
        self.into()
    }
}

impl From<ReplyBuilder> for Action {
    fn from(b: ReplyBuilder) -> Action {
        Action::Respond(b.reply)
    }
}

/// Plumbing used by [`export!`]; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    /// This SDK's version, stored by [`export!`] in a `weir-sdk` custom
    /// section so `weir audit` can tell which SDK built a plugin.
    pub const SDK_VERSION: [u8; env!("CARGO_PKG_VERSION").len()] = {
        let v = env!("CARGO_PKG_VERSION").as_bytes();
        let mut out = [0u8; env!("CARGO_PKG_VERSION").len()];
        let mut i = 0;
        while i < v.len() {
            out[i] = v[i];
            i += 1;
        }
        out
    };

    use super::*;
    use crate::wit::exports::weir::plugin::filter::Guest;

    thread_local! {
        // One filter value per instance; wasm32-wasip2 instances are single-threaded.
        static FILTER: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    fn with_filter<P: Plugin, R>(f: impl FnOnce(&mut P) -> R) -> R {
        FILTER.with(|cell| {
            let mut slot = cell.borrow_mut();
            let filter = slot
                .as_mut()
                .and_then(|b| b.downcast_mut::<P>())
                .expect("weir: hook called before init");
            f(filter)
        })
    }

    /// Most config errors reported at once.
    const MAX_CONFIG_ERRORS: usize = 16;

    /// Decodes the route's config; errors name the field (`keys[0].consumer:
    /// ...`), one per line, every one found: after each error, the top-level
    /// field it is in is set aside and decoding tries again (until a field
    /// set aside is required: its absence is not the author's error).
    pub fn decode_config<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, String> {
        // A valid config decodes in one pass: `init` runs for every instance
        // (with `isolation = "request"`, every request). Only a bad one pays
        // for the error report below.
        if let Ok(config) = serde_json::from_str::<T>(json) {
            return Ok(config);
        }
        let mut value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let mut errors: Vec<String> = Vec::new();
        let mut set_aside: Vec<String> = Vec::new();
        loop {
            let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
                Ok(config) if errors.is_empty() => return Ok(config),
                Ok(_) => break,
                Err(e) => e,
            };
            let path = e.path().to_string();
            let msg = e.inner().to_string();
            if path == "."
                && let Some(field) = msg
                    .strip_prefix("missing field `")
                    .and_then(|m| m.split('`').next())
                && set_aside.iter().any(|f| f == field)
            {
                break;
            }
            errors.push(if path == "." {
                msg
            } else {
                format!("{path}: {msg}")
            });
            let top = match e.path().iter().next() {
                Some(serde_path_to_error::Segment::Map { key }) => key.clone(),
                _ => break,
            };
            let removed = match &mut value {
                serde_json::Value::Object(o) => o.remove(&top).is_some(),
                _ => false,
            };
            if !removed || errors.len() == MAX_CONFIG_ERRORS {
                break;
            }
            set_aside.push(top);
        }
        Err(errors.join("\n"))
    }

    /// Bridges the generated `Guest` trait to a [`Plugin`].
    pub struct Adapter<P>(std::marker::PhantomData<P>);

    thread_local! {
        // The hook running, for panic reports.
        static HOOK: std::cell::Cell<&'static str> = const { std::cell::Cell::new("init") };
    }

    /// Reports a panic's message and place through the host log (so it
    /// reaches the gateway log whatever the stdio grant), before the trap.
    fn report_panics() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                let payload = info.payload();
                let message = payload
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(a panic without a message)");
                let at = info.location().map_or_else(String::new, |l| {
                    format!("{}:{}:{}", l.file(), l.line(), l.column())
                });
                crate::log::log(
                    crate::log::Level::Error,
                    &format!("plugin panicked: {message}"),
                    &[("at", &at), ("hook", HOOK.get())],
                );
            }));
        });
    }

    impl<P: Plugin> Guest for Adapter<P> {
        fn init(config: String) -> Result<Hooks, String> {
            report_panics();
            HOOK.set("init");
            let config: P::Config = decode_config(&config)?;
            let filter = P::new(config)?;
            let hooks = filter.hooks();
            FILTER.with(|cell| *cell.borrow_mut() = Some(Box::new(filter)));
            Ok(hooks)
        }
        fn on_request(req: &Request) -> Action {
            HOOK.set("on-request");
            with_filter::<P, _>(|f| f.on_request(req))
        }
        fn on_response(req: &Request, resp: &Response) {
            HOOK.set("on-response");
            with_filter::<P, _>(|f| f.on_response(req, resp))
        }
    }
}

/// Exports a [`Plugin`] type as the component's filter.
///
/// ```ignore
/// weir_sdk::export!(MyFilter);
/// ```
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        type __WeirAdapter = $crate::__private::Adapter<$plugin>;
        $crate::wit::__export_plugin_world!(__WeirAdapter with_types_in $crate::wit);

        // Read by `weir audit`; a custom section holds no code and is never executed.
        #[allow(unsafe_code)]
        #[unsafe(link_section = "weir-sdk")]
        #[used]
        static __WEIR_SDK_VERSION: [u8; $crate::__private::SDK_VERSION.len()] =
            $crate::__private::SDK_VERSION;
    };
}

#[cfg(test)]
mod tests {
    use super::__private::decode_config;
    use crate::units::Duration;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Config {
        rate: u32,
        per: Duration,
        #[serde(default)]
        keys: Vec<Key>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Key {
        key: String,
    }

    #[test]
    fn every_config_error_is_reported_at_once_with_its_path() {
        let err = decode_config::<Config>(
            r#"{"rate": "ten", "per": "1d", "kye": 1, "keys": [{"key": "a"}, {"key": 5}]}"#,
        )
        .unwrap_err();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 4, "{err}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("rate: invalid type: string \"ten\"")),
            "{err}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("per: invalid duration `1d`")),
            "{err}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("kye: unknown field `kye`")),
            "{err}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("keys[1].key: invalid type: integer `5`")),
            "{err}"
        );
        // A field set aside is not reported again as missing.
        assert!(!err.contains("missing field"), "{err}");
        // A field that is really missing is.
        assert_eq!(
            decode_config::<Config>(r#"{"per": "1s"}"#).unwrap_err(),
            "missing field `rate`"
        );
        assert!(decode_config::<Config>(r#"{"rate": 1, "per": "1s"}"#).is_ok());
    }
}
