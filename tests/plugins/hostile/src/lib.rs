//! Test plugin: a hostile or buggy filter. Its `mode` says how it misbehaves;
//! with `mode = "ok"` it only stamps `x-hostile: ok` on the request.
//!
//! | mode | what it does |
//! |---|---|
//! | `ok` | stamps `x-hostile: ok` |
//! | `loop`, `loop-response`, `loop-init` | spins forever in on-request, on-response or init |
//! | `grow` | allocates 1 MiB at a time, forever |
//! | `recurse` | recurses without end |
//! | `panic` | sets `x-before-panic: 1`, then panics |
//! | `sleep` | sleeps 60 s (a host wait, not CPU) |
//! | `host-calls` | calls the host forever |
//! | `many-headers` | tries to add 1000 request headers, stamps how many were refused |
//! | `reply-headers`, `reply-body` | answers with 1000 headers, or a 512 KiB body |
//! | `reply-flood` | answers with 30 000 headers and a 4 MiB body (over the 1 MiB transfer cap) |
//! | `file` | tries to read `/etc/passwd`, stamps the result |
//! | `env` | stamps the value of the variable named by `var` and how many variables it sees |
//! | `counter` | stamps a count kept in a static: how many requests this instance saw |
//! | `stdout` | prints a line to stdout and one to stderr |
//! | `self-count` | counts requests in `self`, and stamps on the response whether `on-response` saw the same count |
//! | `reply-split` | answers with `content-length: 0` and a body that is itself an HTTP response |
//! | `reply-interim` | answers `101 Switching Protocols` with `upgrade: websocket` |
//! | `counter-flood` | adds to a counter forever |
//! | `log-flood` | emits 100 log records of 4000 bytes each per request (400 KiB), then stamps `logged` |
//! | `edit-framing` | tries to set framing and hop-by-hop headers on the request and the response (and a 1xx status), stamps how many edits were refused |
//! | `scribble` | counts the 4 KiB pages of two statics (2 MiB zeroed, 16 KiB initialised to 7) that an earlier request changed, stamps `stale N`, then changes every page |
//! | `state-flood` | takes a token from `n` host-state buckets keyed `<x-flood header>/<i>` (one token, refilled in 1000 s), stamps how many gave one |
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use weir_sdk::state::{Bucket, take};
use weir_sdk::{Action, Header, Plugin, Reply, Request, Response};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: String,
    #[serde(default)]
    var: String,
    /// Buckets per request in `state-flood`.
    #[serde(default)]
    n: u32,
}

struct Hostile(Config, u32);

static SEEN: AtomicU32 = AtomicU32::new(0);

/// One word per 4 KiB page of `scribble`'s statics.
const PAGE_WORDS: usize = 4096 / 8;
/// Zero-initialised (`.bss`): 2 MiB, more than the pool keeps resident per
/// slot, so a reset both copies pages back and decommits the rest.
static ZEROED: [AtomicU64; (2 << 20) / 8] = [const { AtomicU64::new(0) }; (2 << 20) / 8];
/// Initialised (`.data`, in the memory image): a reset copies it back from the image.
static SEEDED: [AtomicU64; (16 << 10) / 8] = [const { AtomicU64::new(7) }; (16 << 10) / 8];

/// Pages of the statics an earlier request of this instance changed; then
/// changes every one.
fn scribble() -> usize {
    let pages = |statics: &'static [AtomicU64], pristine: u64| {
        statics
            .iter()
            .step_by(PAGE_WORDS)
            .filter(|w| w.swap(pristine + 1, Ordering::Relaxed) != pristine)
            .count()
    };
    pages(&ZEROED, 0) + pages(&SEEDED, 7)
}

/// Framing and hop-by-hop headers, each with a value that would desync or hijack a connection.
const FRAMING: [(&str, &str); 9] = [
    ("content-length", "0"),
    ("Transfer-Encoding", "chunked"),
    ("connection", "close"),
    ("upgrade", "websocket"),
    ("expect", "100-continue"),
    ("te", "gzip"),
    ("keep-alive", "timeout=5"),
    ("proxy-authorization", "Basic eA=="),
    ("trailer", "x-evil"),
];

fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Recurses until the stack runs out; the depth check only hides that from the compiler.
fn recurse(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return 0;
    }
    black_box(recurse(depth + 1)) + 1
}

fn huge_reply(headers: usize, body: usize) -> Action {
    let headers = (0..headers)
        .map(|i| Header {
            name: format!("x-h{i}"),
            value: "v".into(),
        })
        .collect();
    Action::Respond(Reply {
        status: 200,
        headers,
        body: vec![b'x'; body],
    })
}

impl Plugin for Hostile {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.mode == "loop-init" {
            spin();
        }
        Ok(Hostile(config, 0))
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one arm per hostile mode, listed in the module doc"
    )]
    fn on_request(&mut self, req: &Request) -> Action {
        let stamp = |v: &str| {
            let _ = req.set_header("x-hostile", v);
        };
        match self.0.mode.as_str() {
            "loop" => spin(),
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    black_box(&hoard);
                }
            }
            "recurse" => {
                recurse(0);
            }
            "panic" => {
                let _ = req.set_header("x-before-panic", "1");
                panic!("hostile plugin panics mid-request");
            }
            "sleep" => std::thread::sleep(std::time::Duration::from_secs(60)),
            "host-calls" => loop {
                black_box(req.method());
            },
            "many-headers" => {
                let refused = (0..1000)
                    .filter(|i| req.set_header(&format!("x-flood-{i}"), "x").is_err())
                    .count();
                stamp(&format!("refused {refused}"));
            }
            "reply-headers" => return huge_reply(1000, 0),
            "reply-body" => return huge_reply(0, 512 << 10),
            "reply-flood" => return huge_reply(30_000, 4 << 20),
            "file" => match std::fs::read_to_string("/etc/passwd") {
                Ok(s) => stamp(&format!("read {} bytes", s.len())),
                Err(e) => stamp(&format!("denied: {e}")),
            },
            "env" => {
                let value = std::env::var(&self.0.var).unwrap_or_else(|_| "absent".into());
                stamp(&format!("{value}; count={}", std::env::vars().count()));
            }
            "counter" => {
                let n = SEEN.fetch_add(1, Ordering::Relaxed) + 1;
                stamp(&n.to_string());
            }
            "scribble" => stamp(&format!("stale {}", scribble())),
            "stdout" => {
                println!("hello from stdout");
                eprintln!("hello from stderr");
                stamp("printed");
            }
            "self-count" => {
                self.1 += 1;
                let _ = req.set_var("count", &self.1.to_string());
            }
            "reply-split" => {
                return Action::Respond(Reply {
                    status: 200,
                    headers: vec![Header {
                        name: "content-length".into(),
                        value: "0".into(),
                    }],
                    body: b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged".to_vec(),
                });
            }
            "reply-interim" => {
                return Action::Respond(Reply {
                    status: 101,
                    headers: vec![Header {
                        name: "upgrade".into(),
                        value: "websocket".into(),
                    }],
                    body: vec![],
                });
            }
            "counter-flood" => loop {
                weir_sdk::metrics::counter_add("flood", &[], 1);
            },
            "log-flood" => {
                let filler = "x".repeat(3990);
                for i in 0..100 {
                    weir_sdk::log::warn(&format!("flood {i:03} {filler}"));
                }
                stamp("logged");
            }
            "edit-framing" => {
                let refused = FRAMING
                    .iter()
                    .filter(|(n, v)| {
                        req.set_header(n, v).is_err() && req.append_header(n, v).is_err()
                    })
                    .count();
                stamp(&format!("refused {refused} of {}", FRAMING.len()));
            }
            "state-flood" => {
                let tag = req.header("x-flood").unwrap_or_default();
                let bucket = Bucket {
                    capacity: 1,
                    refill_per_sec: 0.001,
                };
                let allowed = (0..self.0.n)
                    .filter(|i| take(&format!("{tag}/{i}"), bucket, 1).allowed)
                    .count();
                stamp(&format!("allowed {allowed} of {}", self.0.n));
            }
            _ => stamp("ok"),
        }
        Action::Continue
    }

    fn on_response(&mut self, req: &Request, resp: &Response) {
        if self.0.mode == "self-count" {
            let same = req.get_var("count") == Some(self.1.to_string());
            let _ = resp.set_header("x-same-instance", if same { "yes" } else { "no" });
        }
        if self.0.mode == "loop-response" {
            spin();
        }
        if self.0.mode == "edit-framing" {
            let refused = FRAMING
                .iter()
                .filter(|(n, v)| resp.set_header(n, v).is_err())
                .count()
                + usize::from(resp.remove_header("content-length").is_err())
                + usize::from(resp.set_status(100).is_err());
            let _ = resp.set_header("x-hostile-refused", &refused.to_string());
        }
        let _ = resp.set_header("x-hostile-response", "ran");
    }
}

weir_sdk::export!(Hostile);
