//! Signing keys fetched from a JWKS URL on a granted upstream.
//!
//! The fetched document is kept in host state (`weir_sdk::cache`, shared by
//! every instance of the plugin, so one fetch serves them all) and parsed
//! into each instance. A set older than `refresh` is fetched again on the
//! next request; a token whose `kid` no key has triggers a fetch too, at most
//! once per `min_refresh_interval` (a key rotation). A failed fetch keeps the
//! keys already held and holds further fetches back for the same interval.

use serde::Deserialize;
use weir_sdk::log::Level;
use weir_sdk::units::Duration;
use weir_sdk::{cache, outbound};

use crate::jwk;
use crate::jwt::Key;

/// Host cache entries live at most a day; a longer `refresh` could not be shared.
const MAX_INTERVAL_MS: u64 = 86_400_000;
/// Room for the cache key prefix under the host's 512-byte key limit.
const MAX_NAME: usize = 400;

/// `jwks = { ... }` in the route config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// `upstream`: the `[upstreams.NAME]` serving the key set (in `grants.http`).
    upstream: String,
    /// `path`: path and query of the key set on that upstream.
    #[serde(default = "default_path")]
    path: String,
    /// `refresh`: how long a fetched set is used before it is fetched again.
    #[serde(default = "default_refresh")]
    refresh: Duration,
    /// `min_refresh_interval`: the least time between fetches for an unknown
    /// `kid` or after a failure.
    #[serde(default = "default_min_refresh")]
    min_refresh_interval: Duration,
    /// `timeout`: give up on a fetch after this long (the hook's
    /// `call_timeout` bounds it anyway).
    #[serde(default)]
    timeout: Option<Duration>,
}

fn default_path() -> String {
    "/.well-known/jwks.json".into()
}
fn default_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_min_refresh() -> Duration {
    Duration::from_secs(30)
}

/// Where the keys come from, and the keys this instance holds.
pub struct Jwks {
    upstream: String,
    path: String,
    refresh_ms: u64,
    min_refresh_ms: u64,
    timeout_ms: Option<u32>,
    /// Host cache key of the document: `<fetched-at ms>\n<body>`.
    set_key: String,
    /// Host cache key present while fetches are held back.
    hold_key: String,
    keys: Vec<Key>,
    /// When the held set was fetched (ms); `None` until one is.
    fetched_at: Option<u64>,
}

impl Jwks {
    /// Validates the config; errors start with the field name.
    pub fn new(config: JwksConfig) -> Result<Jwks, String> {
        if config.upstream.is_empty() {
            return Err("upstream: must name an [upstreams.*] entry".into());
        }
        if !config.path.starts_with('/') {
            return Err(format!("path: {:?} must start with `/`", config.path));
        }
        if config.upstream.len() + config.path.len() > MAX_NAME {
            return Err(format!(
                "path: upstream and path together must be under {MAX_NAME} bytes"
            ));
        }
        let ms = |d: Duration| u64::try_from(d.0.as_millis()).unwrap_or(u64::MAX);
        let (refresh_ms, min_refresh_ms) = (ms(config.refresh), ms(config.min_refresh_interval));
        if !(1000..=MAX_INTERVAL_MS).contains(&refresh_ms) {
            return Err("refresh: must be between 1s and 24h".into());
        }
        if min_refresh_ms > MAX_INTERVAL_MS {
            return Err("min_refresh_interval: must be at most 24h".into());
        }
        let timeout_ms = match config.timeout {
            None => None,
            Some(t) => Some(
                u32::try_from(ms(t))
                    .ok()
                    .filter(|t| *t > 0)
                    .ok_or("timeout: must be above 0 and below 49 days")?,
            ),
        };
        let name = format!("{}:{}", config.upstream, config.path);
        Ok(Jwks {
            set_key: format!("jwks:{name}"),
            hold_key: format!("jwks-hold:{name}"),
            upstream: config.upstream,
            path: config.path,
            refresh_ms,
            min_refresh_ms,
            timeout_ms,
            keys: Vec::new(),
            fetched_at: None,
        })
    }

    /// The keys held, or `None` while no set was ever fetched.
    pub fn keys(&self) -> Option<&[Key]> {
        self.fetched_at.map(|_| self.keys.as_slice())
    }

    /// Brings the keys up to date for a token naming `kid` (`known` says
    /// whether a configured key has it): adopts a newer set another instance
    /// fetched, else fetches when the set is missing or stale, or when `kid`
    /// is unknown and fetches are not held back.
    pub fn update(&mut self, kid: Option<&str>, known: bool, now_ms: u64) {
        let unknown = |j: &Jwks| {
            kid.is_some_and(|kid| !known && !j.keys.iter().any(|k| k.kid.as_deref() == Some(kid)))
        };
        let stale = |j: &Jwks| j.fetched_at.is_none_or(|at| now_ms >= at + j.refresh_ms);
        if !stale(self) && !unknown(self) {
            return;
        }
        self.adopt_shared();
        let stale = stale(self);
        if (!stale && !unknown(self)) || cache::get(&self.hold_key).is_some() {
            return;
        }
        if !stale {
            // A rotation: at most one fetch per interval, whatever it finds.
            self.hold();
        }
        match self.fetch() {
            Ok((body, keys)) => {
                self.keys = keys;
                self.fetched_at = Some(now_ms);
                let mut value = format!("{now_ms}\n").into_bytes();
                value.extend_from_slice(&body);
                if !cache::set(&self.set_key, &value, MAX_INTERVAL_MS) {
                    weir_sdk::log::warn("jwks: the key set does not fit in host state");
                }
            }
            Err(why) => {
                self.hold();
                let held = if self.fetched_at.is_some() {
                    "keeping the keys held"
                } else {
                    "no keys yet"
                };
                weir_sdk::log::log(
                    Level::Warn,
                    "jwks fetch failed",
                    &[
                        ("upstream", &self.upstream),
                        ("path", &self.path),
                        ("error", &why),
                        ("then", held),
                    ],
                );
            }
        }
    }

    fn hold(&self) {
        if self.min_refresh_ms > 0 {
            cache::set(&self.hold_key, b"", self.min_refresh_ms);
        }
    }

    /// Takes the set in host state if it is newer than the one held.
    fn adopt_shared(&mut self) {
        let Some(value) = cache::get(&self.set_key) else {
            return;
        };
        let Some(split) = value.iter().position(|b| *b == b'\n') else {
            return;
        };
        let at = std::str::from_utf8(&value[..split])
            .ok()
            .and_then(|s| s.parse::<u64>().ok());
        let Some(at) = at.filter(|at| self.fetched_at.is_none_or(|mine| *at > mine)) else {
            return;
        };
        if let Ok((keys, _)) = jwk::parse_set(&value[split + 1..]) {
            self.keys = keys;
            self.fetched_at = Some(at);
        }
    }

    /// Fetches and parses the set: its body and usable keys.
    fn fetch(&self) -> Result<(Vec<u8>, Vec<Key>), String> {
        let mut req =
            outbound::get(&self.upstream, &self.path).header("accept", "application/json");
        if let Some(ms) = self.timeout_ms {
            req = req.timeout_ms(ms);
        }
        let resp = req.send().map_err(|e| format!("{e:?}"))?;
        if resp.status != 200 {
            return Err(format!("status {}", resp.status));
        }
        let (keys, skipped) = jwk::parse_set(&resp.body)?;
        for why in &skipped {
            weir_sdk::log::log(Level::Debug, "jwks key skipped", &[("why", why)]);
        }
        if keys.is_empty() {
            return Err(format!("no usable key ({} skipped)", skipped.len()));
        }
        Ok((resp.body, keys))
    }
}
