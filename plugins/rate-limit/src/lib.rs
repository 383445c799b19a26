//! # rate-limit: token-bucket rate limiting for Weir routes
//!
//! Each request takes one token from a bucket chosen by `key` (client IP, a
//! header, a request variable such as `consumer`, or the whole route). The
//! bucket holds `burst` tokens and refills at `rate` per `per`. Buckets live
//! in the host's shared state, so every instance of the plugin counts against
//! the same buckets. A request finding the bucket empty gets a `429` with
//! `retry-after` and `ratelimit-*` headers; allowed responses carry
//! `ratelimit-limit`, `ratelimit-remaining` and `ratelimit-reset`.
//! See `README.md` for the config reference.

use serde::Deserialize;
use weir_sdk::log::{self, Level};
use weir_sdk::state::{Bucket, TakeResult, take};
use weir_sdk::{Action, Header, Plugin, Request, Response, check_header_name, reply};

/// The route's config table. Numbers are signed so that a bad value gets a
/// message naming its field rather than a bare serde error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Tokens added per `per`.
    pub rate: i64,
    /// The refill period, e.g. `"1s"`, `"500ms"`, `"1m"`, `"1h"`.
    #[serde(default = "default_per")]
    pub per: String,
    /// Bucket capacity; defaults to `rate`.
    #[serde(default)]
    pub burst: Option<i64>,
    /// `client_ip`, `header:<name>`, `var:<name>` or `route`.
    #[serde(default = "default_key")]
    pub key: String,
    /// Status of the refusal.
    #[serde(default = "default_status")]
    pub status: i64,
}

fn default_per() -> String {
    "1s".into()
}
fn default_key() -> String {
    "client_ip".into()
}
fn default_status() -> i64 {
    429
}

/// What a bucket is keyed on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeySource {
    ClientIp,
    Header(String),
    Var(String),
    Route,
}

impl KeySource {
    fn parse(s: &str) -> Result<Self, String> {
        if s == "client_ip" {
            Ok(Self::ClientIp)
        } else if s == "route" {
            Ok(Self::Route)
        } else if let Some(h) = s.strip_prefix("header:") {
            check_header_name(h).map_err(|e| format!("key: {e}"))?;
            Ok(Self::Header(h.to_owned()))
        } else if let Some(v) = s.strip_prefix("var:") {
            if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("key: {v:?} is not a valid variable name"));
            }
            Ok(Self::Var(v.to_owned()))
        } else {
            Err(format!(
                "key: {s:?} is not one of \"client_ip\", \"header:<name>\", \"var:<name>\", \"route\""
            ))
        }
    }
}

/// The part of a bucket key after the route and policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyPart<'a> {
    Ip(&'a str),
    Header(&'a str),
    Var(&'a str),
    Route,
}

/// Longer header or variable values are hashed: the host traps on state
/// keys over 512 bytes, and a client picks the header's length.
const MAX_KEY_VALUE: usize = 256;

/// `<route_id>:<policy>:<kind>[:<value>]`. The kind keeps a header value from
/// colliding with a fallback IP; the policy keeps two limits stacked on one
/// route apart (the host resets a bucket whose shape changes); `:` and `%` in
/// the route id are escaped so ids can't collide.
fn bucket_key(route_id: &str, policy: &str, part: KeyPart<'_>) -> String {
    let (kind, value) = match part {
        KeyPart::Ip(v) => ("ip", v),
        KeyPart::Header(v) => ("hdr", v),
        KeyPart::Var(v) => ("var", v),
        KeyPart::Route => ("route", ""),
    };
    let mut key = String::with_capacity(route_id.len() + policy.len() + value.len().min(64) + 12);
    for c in route_id.chars() {
        match c {
            ':' => key.push_str("%3A"),
            '%' => key.push_str("%25"),
            c => key.push(c),
        }
    }
    for piece in [":", policy, ":", kind] {
        key.push_str(piece);
    }
    if matches!(part, KeyPart::Route) {
        return key;
    }
    if value.len() > MAX_KEY_VALUE {
        // `#` marks a hashed value, so it can't equal a short literal one.
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        value.hash(&mut h);
        key.push_str(&format!("#:{:016x}", h.finish()));
    } else {
        key.push(':');
        key.push_str(value);
    }
    key
}

/// The IP part of `ip:port` or `[ipv6]:port`.
fn client_ip(addr: &str) -> &str {
    if let Some(v6) = addr.strip_prefix('[') {
        return v6.split_once(']').map_or(v6, |(ip, _)| ip);
    }
    match addr.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((ip, _)) if !ip.contains(':') => ip,
        _ => addr,
    }
}

/// Parses `<n>ms`, `<n>s`, `<n>m` or `<n>h` into milliseconds (> 0).
fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("{s:?} is not a duration (write e.g. \"500ms\", \"1s\", \"10s\", \"1m\", \"1h\")")
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    match n.checked_mul(scale) {
        Some(0) => Err(format!("{s:?} must be longer than zero")),
        Some(ms) => Ok(ms),
        None => Err(bad()),
    }
}

/// Milliseconds to whole seconds, rounded up.
fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

fn in_range(field: &str, v: i64, lo: i64, hi: i64) -> Result<i64, String> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{field}: must be between {lo} and {hi} (got {v})"))
    }
}

/// The request variables carrying the outcome to `on_response`.
const VAR_LIMIT: &str = "ratelimit.limit";
const VAR_REMAINING: &str = "ratelimit.remaining";
const VAR_RESET: &str = "ratelimit.reset";

/// The filter, built once per instance from a validated [`Config`].
#[derive(Debug)]
pub struct RateLimit {
    key: KeySource,
    bucket: Bucket,
    status: u16,
    /// Identifies the limit inside bucket keys.
    policy: String,
    /// Precomputed header values.
    limit: String,
    policy_header: String,
    /// This request's `ratelimit-remaining` and `ratelimit-reset`, for
    /// `on_response` (a request's hooks run on one instance, in turn).
    outcome: Option<(String, String)>,
    /// The route's id: an instance serves one route, so it is asked for once.
    route: std::cell::OnceCell<String>,
}

impl RateLimit {
    /// Validates `config`; the error names the offending field.
    pub fn from_config(config: Config) -> Result<Self, String> {
        let max = i64::from(u32::MAX);
        let rate = in_range("rate", config.rate, 1, max)?;
        let per_ms = parse_duration_ms(&config.per).map_err(|e| format!("per: {e}"))?;
        let burst = in_range("burst", config.burst.unwrap_or(rate), 1, max)?;
        let status = in_range("status", config.status, 400, 599)?;
        let key = KeySource::parse(&config.key)?;
        Ok(Self {
            key,
            bucket: Bucket {
                capacity: burst as u32,
                refill_per_sec: rate as f64 * 1000.0 / per_ms as f64,
            },
            status: status as u16,
            policy: format!("{rate}/{per_ms}ms/{burst}"),
            limit: burst.to_string(),
            policy_header: format!("{burst};w={}", ceil_secs(per_ms).max(1)),
            outcome: None,
            route: std::cell::OnceCell::new(),
        })
    }

    fn key_for(&self, req: &Request) -> String {
        let route = self.route.get_or_init(|| req.route_id());
        let value = match &self.key {
            KeySource::Route => return bucket_key(route, &self.policy, KeyPart::Route),
            KeySource::ClientIp => None,
            KeySource::Header(h) => req.header(h).filter(|v| !v.is_empty()),
            KeySource::Var(v) => req.get_var(v).filter(|v| !v.is_empty()),
        };
        let part = match (&self.key, &value) {
            (KeySource::Header(_), Some(v)) => KeyPart::Header(v),
            (KeySource::Var(_), Some(v)) => KeyPart::Var(v),
            // Absent header or variable: fall back to the client IP.
            _ => {
                let addr = req.client_addr();
                return bucket_key(route, &self.policy, KeyPart::Ip(client_ip(&addr)));
            }
        };
        bucket_key(route, &self.policy, part)
    }

    fn denied(&self, r: &TakeResult) -> Action {
        let wait = ceil_secs(r.retry_after_ms).max(1).to_string();
        reply(self.status)
            .header("retry-after", wait.as_str())
            .header("ratelimit-limit", self.limit.as_str())
            .header("ratelimit-remaining", "0")
            .header("ratelimit-reset", wait)
            .header("ratelimit-policy", self.policy_header.as_str())
            .text("rate limit exceeded\n")
            .into()
    }
}

impl Plugin for RateLimit {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Self::from_config(config)
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let key = self.key_for(req);
        let r = take(&key, self.bucket, 1);
        // Recorded on refusal too, so a limiter earlier in the chain can't
        // overwrite our `remaining: 0` in its response hook.
        let (remaining, reset) = if r.allowed {
            (r.remaining.to_string(), ceil_secs(r.reset_ms).to_string())
        } else {
            (
                "0".to_owned(),
                ceil_secs(r.retry_after_ms).max(1).to_string(),
            )
        };
        let vars = [
            (VAR_LIMIT, self.limit.as_str()),
            (VAR_REMAINING, &remaining),
            (VAR_RESET, &reset),
        ];
        if let Err((i, e)) = req.set_vars(&vars) {
            log::log(
                Level::Warn,
                "cannot set request variable",
                &[("var", vars[i as usize].0), ("error", &format!("{e:?}"))],
            );
        }
        self.outcome = Some((remaining, reset));
        if r.allowed {
            Action::Continue
        } else {
            log::debug("rate limit exceeded");
            self.denied(&r)
        }
    }

    fn on_response(&mut self, _req: &Request, resp: &Response) {
        // Kept in `self`, not read back from the variables: three host calls fewer.
        let Some((remaining, reset)) = self.outcome.take() else {
            return;
        };
        let headers = [
            ("ratelimit-limit", self.limit.clone()),
            ("ratelimit-remaining", remaining),
            ("ratelimit-reset", reset),
        ]
        .map(|(name, value)| Header {
            name: name.to_owned(),
            value,
        });
        if let Err((i, e)) = resp.set_headers(&headers) {
            log::log(
                Level::Warn,
                "cannot set response header",
                &[
                    ("header", headers[i as usize].name.as_str()),
                    ("error", &format!("{e:?}")),
                ],
            );
        }
    }
}

weir_sdk::export!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(json: &str) -> Result<RateLimit, String> {
        let c: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        RateLimit::from_config(c)
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration_ms("1s"), Ok(1_000));
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("1m"), Ok(60_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        for bad in [
            "",
            "s",
            "1",
            "1.5s",
            "-1s",
            " 1s",
            "1 s",
            "1d",
            "1S",
            "99999999999999999999h",
        ] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_duration_ms("0s").unwrap_err(),
            r#""0s" must be longer than zero"#
        );
    }

    #[test]
    fn derives_keys() {
        let p = "10/1000ms/20";
        assert_eq!(
            bucket_key("api", p, KeyPart::Ip("192.0.2.1")),
            "api:10/1000ms/20:ip:192.0.2.1"
        );
        assert_eq!(
            bucket_key("api", p, KeyPart::Header("192.0.2.1")),
            "api:10/1000ms/20:hdr:192.0.2.1"
        );
        assert_eq!(
            bucket_key("api", p, KeyPart::Var("alice")),
            "api:10/1000ms/20:var:alice"
        );
        assert_eq!(
            bucket_key("api", p, KeyPart::Route),
            "api:10/1000ms/20:route"
        );
        // Route ids with `:` can't impersonate another route's key.
        assert_ne!(
            bucket_key("a:b", p, KeyPart::Route),
            bucket_key("a", p, KeyPart::Var("b"))
        );
        assert_eq!(
            bucket_key("a:%", p, KeyPart::Route),
            "a%3A%25:10/1000ms/20:route"
        );
    }

    #[test]
    fn splits_client_ip() {
        assert_eq!(client_ip("192.0.2.1:5000"), "192.0.2.1");
        assert_eq!(client_ip("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(client_ip("2001:db8::1"), "2001:db8::1");
    }

    #[test]
    fn parses_key_sources() {
        assert_eq!(KeySource::parse("client_ip"), Ok(KeySource::ClientIp));
        assert_eq!(KeySource::parse("route"), Ok(KeySource::Route));
        assert_eq!(
            KeySource::parse("header:x-user"),
            Ok(KeySource::Header("x-user".into()))
        );
        assert_eq!(
            KeySource::parse("var:consumer"),
            Ok(KeySource::Var("consumer".into()))
        );
        assert_eq!(
            KeySource::parse("header:bad name").unwrap_err(),
            r#"key: "bad name" is not a valid header name"#
        );
        assert!(KeySource::parse("var:").is_err());
        assert!(
            KeySource::parse("ip")
                .unwrap_err()
                .starts_with(r#"key: "ip" is not one of"#)
        );
    }

    #[test]
    fn loads_config() {
        let r = decode(r#"{"rate":10}"#).unwrap();
        assert_eq!(r.bucket.capacity, 10);
        assert_eq!(r.bucket.refill_per_sec, 10.0);
        assert_eq!(r.status, 429);
        assert_eq!(r.key, KeySource::ClientIp);
        assert_eq!(r.policy_header, "10;w=1");

        let r = decode(r#"{"rate":30,"per":"1m","burst":5,"key":"var:consumer","status":503}"#)
            .unwrap();
        assert_eq!(r.bucket.capacity, 5);
        assert_eq!(r.bucket.refill_per_sec, 0.5);
        assert_eq!(r.status, 503);
        assert_eq!(r.policy, "30/60000ms/5");
        assert_eq!(r.policy_header, "5;w=60");

        let r = decode(r#"{"rate":1,"per":"500ms"}"#).unwrap();
        assert_eq!(r.bucket.refill_per_sec, 2.0);
        assert_eq!(r.policy_header, "1;w=1");
    }

    #[test]
    fn rejects_bad_config() {
        let err = |j| decode(j).unwrap_err();
        assert!(err("{}").contains("missing field `rate`"));
        assert_eq!(
            err(r#"{"rate":0}"#),
            "rate: must be between 1 and 4294967295 (got 0)"
        );
        assert_eq!(
            err(r#"{"rate":5,"burst":-1}"#),
            "burst: must be between 1 and 4294967295 (got -1)"
        );
        assert!(err(r#"{"rate":5,"per":"1x"}"#).starts_with(r#"per: "1x" is not a duration"#));
        assert_eq!(
            err(r#"{"rate":5,"status":200}"#),
            "status: must be between 400 and 599 (got 200)"
        );
        assert!(err(r#"{"rate":5,"key":"cookie:a"}"#).starts_with("key:"));
        assert!(err(r#"{"rate":5,"window":"1s"}"#).contains("unknown field `window`"));
    }

    #[test]
    fn rounds_seconds_up() {
        assert_eq!(ceil_secs(0), 0);
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(1000), 1);
        assert_eq!(ceil_secs(1001), 2);
    }
}
