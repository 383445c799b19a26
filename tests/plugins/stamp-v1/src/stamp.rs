// Shared by test-stamp-v1 and -v2, which differ only in `VERSION`.
use weir_sdk::{Action, Plugin, Request, Response};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

struct Stamp;

impl Plugin for Stamp {
    type Config = Config;

    fn new(_: Config) -> Result<Self, String> {
        Ok(Stamp)
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let _ = req.append_header("x-stamp", VERSION);
        Action::Continue
    }

    fn on_response(&mut self, _req: &Request, resp: &Response) {
        let _ = resp.append_header("x-stamp", VERSION);
    }
}

weir_sdk::export!(Stamp);
