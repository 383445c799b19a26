//! Test plugin: panics (a wasm trap) when the request has `x-trap: 1`;
//! with `x-trap: memory` it grows its memory past the host's limit; with
//! `x-trap: spin` it loops forever. It imports nothing that may wait, so the
//! gateway calls it directly (no fiber): the CPU deadline must still stop it.
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
            Some("spin") => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
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
