//! Test plugin: tries to open a TCP connection on each request. It imports
//! `wasi:sockets`, which Weir never grants, so it must be refused at load.
use weir_sdk::{Action, Plugin, Request};

#[derive(serde::Deserialize)]
struct Config {}

struct Socket;

impl Plugin for Socket {
    type Config = Config;

    fn new(_: Config) -> Result<Self, String> {
        Ok(Socket)
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let outcome = match std::net::TcpStream::connect("127.0.0.1:9") {
            Ok(_) => "connected".to_string(),
            Err(e) => format!("refused: {e}"),
        };
        let _ = req.set_header("x-socket", &outcome);
        Action::Continue
    }
}

weir_sdk::export!(Socket);
