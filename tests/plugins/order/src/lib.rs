//! Test plugin: appends its `tag` to `x-order` on the request and to
//! `x-resp-order` on the response, so tests can see the chain order; with
//! `respond = STATUS` it answers early instead. `hooks = "request"` or
//! `"response"` asks for one hook only, `"both"` both without `same-instance`;
//! `raw_path = true` copies the path the client sent into `x-raw-path`;
//! `x-seen` on the response is how many `on-request` calls its instance ran.
use weir_sdk::{Action, Hooks, Plugin, Request, Response, reply};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    tag: String,
    #[serde(default)]
    respond: Option<u16>,
    #[serde(default)]
    hooks: Option<String>,
    #[serde(default)]
    raw_path: bool,
}

struct Order(Config, u32);

impl Plugin for Order {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.tag.is_empty() {
            return Err("tag: must not be empty".into());
        }
        Ok(Order(config, 0))
    }

    fn hooks(&self) -> Hooks {
        match self.0.hooks.as_deref() {
            Some("request") => Hooks::ON_REQUEST,
            Some("response") => Hooks::ON_RESPONSE,
            Some("both") => Hooks::ON_REQUEST | Hooks::ON_RESPONSE,
            _ => Hooks::ON_REQUEST | Hooks::ON_RESPONSE | Hooks::SAME_INSTANCE,
        }
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let _ = req.append_header("x-order", &self.0.tag);
        self.1 += 1;
        if self.0.raw_path {
            let _ = req.set_header("x-raw-path", &req.raw_path());
        }
        match self.0.respond {
            Some(status) => reply(status)
                .header("x-answered-by", self.0.tag.as_str())
                .text("early\n")
                .into(),
            None => Action::Continue,
        }
    }

    fn on_response(&mut self, _req: &Request, resp: &Response) {
        let _ = resp.append_header("x-resp-order", &self.0.tag);
        let _ = resp.append_header("x-seen", &self.1.to_string());
    }
}

weir_sdk::export!(Order);
