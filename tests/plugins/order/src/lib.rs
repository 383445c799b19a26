//! Test plugin: appends its `tag` to `x-order` on the request and to
//! `x-resp-order` on the response, so tests can see the chain order; with
//! `respond = STATUS` it answers early instead.
use weir_sdk::{Action, Plugin, Request, Response, reply};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    tag: String,
    #[serde(default)]
    respond: Option<u16>,
}

struct Order(Config);

impl Plugin for Order {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.tag.is_empty() {
            return Err("tag: must not be empty".into());
        }
        Ok(Order(config))
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let _ = req.append_header("x-order", &self.0.tag);
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
    }
}

weir_sdk::export!(Order);
