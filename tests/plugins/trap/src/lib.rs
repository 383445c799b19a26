//! Test plugin: panics (a wasm trap) when the request has `x-trap: 1`;
//! with `x-trap: memory` it grows its memory past the host's limit.
use weir_sdk::{Action, Plugin, Request};

#[derive(serde::Deserialize)]
struct Config {}

struct Trap;

impl Plugin for Trap {
    type Config = Config;

    fn new(_: Config) -> Result<Self, String> {
        Ok(Trap)
    }

    fn on_request(&mut self, req: &Request) -> Action {
        match req.header("x-trap").as_deref() {
            Some("1") => panic!("asked to trap"),
            Some("memory") => {
                let hog = vec![1u8; 256 << 20];
                std::hint::black_box(&hog);
            }
            _ => {}
        }
        let _ = req.set_header("x-trap-ok", "1");
        Action::Continue
    }
}

weir_sdk::export!(Trap);
