//! # hello-plugin: a Weir filter
//!
//! Refuses requests that lack a header, and tags every response. Build it
//! with `cargo build --target wasm32-wasip2 --profile plugin`, test it with
//! `cargo test`, and list the `.wasm` in a gateway manifest (see README.md).

use weir_sdk::{Action, Hooks, Plugin, Request, Response, reply};

/// The route's `config` table, decoded and checked when the plugin loads:
/// a bad config fails `weir check` and startup, never a request.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Requests without this header get a 400.
    pub required_header: String,
    /// Set as `x-tag` on every response (default `hello-plugin`).
    #[serde(default = "default_tag")]
    pub tag: String,
}

fn default_tag() -> String {
    "hello-plugin".into()
}

/// The filter. One value lives in each sandboxed instance; an instance
/// serves one request at a time, and many requests over its life.
pub struct HelloPlugin {
    config: Config,
}

impl Plugin for HelloPlugin {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        // An error names the field; the gateway adds the route and plugin.
        if config.required_header.is_empty() {
            return Err("required_header: must not be empty".into());
        }
        Ok(Self { config })
    }

    fn hooks(&self) -> Hooks {
        // The gateway calls only these. Add `Hooks::SAME_INSTANCE` to keep
        // what `on_request` put in `self` for this request's `on_response`.
        Hooks::ON_REQUEST | Hooks::ON_RESPONSE
    }

    fn on_request(&mut self, req: &Request) -> Action {
        if req.header(&self.config.required_header).is_none() {
            // Answered here: the upstream is not called.
            return reply(400)
                .text(format!("missing header {}\n", self.config.required_header))
                .into();
        }
        Action::Continue
    }

    fn on_response(&mut self, _req: &Request, resp: &Response) {
        // An edit the gateway refuses (a bad value, a forbidden header) is an
        // error value, never a crash; here it is not worth failing for.
        let _ = resp.set_header("x-tag", &self.config.tag);
    }
}

weir_sdk::export!(HelloPlugin);
