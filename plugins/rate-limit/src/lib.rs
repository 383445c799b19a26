//! # rate-limit: token-bucket rate limiting for Weir routes
//!
//! Each request takes one token from a bucket chosen by `key` (client IP, a
//! header, a request variable such as `consumer`, or the whole route). The
//! bucket holds `burst` tokens and refills at `rate` per `per`. Buckets live
//! in the host's shared state, so every instance of the plugin counts against
//! the same buckets. A request finding the bucket empty gets a `429` with
//! `retry-after` and the IETF draft's `ratelimit-policy` and `ratelimit`
//! headers; allowed responses carry them too. With `plans`, each consumer
//! gets the limits of its plan (`free`, `pro`...).
//! See `README.md` for the config reference.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;
use weir_sdk::log::{self, Level};
use weir_sdk::state::{Bucket, take};
use weir_sdk::units::Duration;
use weir_sdk::{Action, Header, Plugin, Request, Response, check_header_name, reply};

/// The route's config table. Numbers are signed so that a bad value gets a
/// message naming its field rather than a bare serde error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Tokens added per `per`; required unless `plans` is given.
    #[serde(default)]
    pub rate: Option<i64>,
    /// The refill period, e.g. `"1s"`, `"500ms"`, `"1m"`, `"1h"`.
    #[serde(default = "default_per")]
    pub per: Duration,
    /// Bucket capacity; defaults to `rate`.
    #[serde(default)]
    pub burst: Option<i64>,
    /// `client_ip`, `header:<name>`, `var:<name>` or `route`.
    #[serde(default = "default_key")]
    pub key: String,
    /// Status of the refusal.
    #[serde(default = "default_status")]
    pub status: i64,
    /// Named limits, one per plan: `{ free = { rate = 100, per = "1m" }, ... }`.
    #[serde(default)]
    pub plans: BTreeMap<String, PlanConfig>,
    /// Where a request's plan name comes from: `var:<name>` or `header:<name>`.
    #[serde(default)]
    pub plan: Option<String>,
    /// Consumer (the value `key` selects) to plan name.
    #[serde(default)]
    pub consumers: BTreeMap<String, String>,
    /// The plan of a request that names none (or an unknown one); required with `plans`.
    #[serde(default)]
    pub default_plan: Option<String>,
    /// Also send the older `ratelimit-limit`, `-remaining` and `-reset` headers.
    #[serde(default = "yes")]
    pub legacy_headers: bool,
}

/// One plan's limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Tokens added per `per`.
    pub rate: i64,
    /// The refill period.
    #[serde(default = "default_per")]
    pub per: Duration,
    /// Bucket capacity; defaults to `rate`.
    #[serde(default)]
    pub burst: Option<i64>,
}

fn yes() -> bool {
    true
}

fn default_per() -> Duration {
    Duration::from_secs(1)
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

/// One limit: a bucket shape and the header values that describe it.
#[derive(Debug)]
struct Limit {
    bucket: Bucket,
    /// Identifies the limit inside bucket keys.
    policy: String,
    /// `burst`, for the legacy `ratelimit-limit`.
    limit: String,
    /// The policy's name in the draft headers (the plan's, or `default`).
    name: String,
    /// `"<name>";q=<burst>;w=<per in s>`.
    policy_header: String,
}

impl Limit {
    fn new(
        field: &str,
        name: &str,
        rate: i64,
        per: Duration,
        burst: Option<i64>,
    ) -> Result<Self, String> {
        let max = i64::from(u32::MAX);
        let rate = in_range(&format!("{field}rate"), rate, 1, max)?;
        // Whole milliseconds: the manifest's durations have no finer unit.
        let per_ms = per.0.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        let burst = in_range(&format!("{field}burst"), burst.unwrap_or(rate), 1, max)?;
        Ok(Limit {
            bucket: Bucket {
                capacity: burst as u32,
                refill_per_sec: rate as f64 * 1000.0 / per_ms as f64,
            },
            policy: if field.is_empty() {
                format!("{rate}/{per_ms}ms/{burst}")
            } else {
                // The plan's name keeps two plans of the same shape apart.
                format!("{name}={rate}/{per_ms}ms/{burst}")
            },
            limit: burst.to_string(),
            name: name.to_owned(),
            policy_header: format!("\"{name}\";q={burst};w={}", ceil_secs(per_ms).max(1)),
        })
    }
}

/// Plan selection, when the config has `plans`.
#[derive(Debug)]
struct Plans {
    /// Where the plan name is read, if anywhere.
    source: Option<KeySource>,
    /// Plan name to index in `RateLimit::limits`.
    by_name: BTreeMap<String, usize>,
    /// Consumer to index.
    consumers: BTreeMap<String, usize>,
    default: usize,
}

/// Per limit, the headers responses get; the empty values are filled per response.
fn response_headers(limits: &[Limit], legacy: bool) -> Vec<Vec<Header>> {
    let header = |name: &str, value: &str| Header {
        name: name.to_owned(),
        value: value.to_owned(),
    };
    limits
        .iter()
        .map(|l| {
            let mut h = vec![
                header("ratelimit-policy", &l.policy_header),
                header("ratelimit", ""),
            ];
            if legacy {
                h.extend([
                    header("ratelimit-limit", &l.limit),
                    header("ratelimit-remaining", ""),
                    header("ratelimit-reset", ""),
                ]);
            }
            h
        })
        .collect()
}

/// What `on_request` decided, for `on_response`.
#[derive(Debug)]
struct Outcome {
    limit: usize,
    remaining: String,
    reset: String,
}

/// The filter, built once per instance from a validated [`Config`].
#[derive(Debug)]
pub struct RateLimit {
    key: KeySource,
    status: u16,
    /// One limit, or one per plan.
    limits: Vec<Limit>,
    plans: Option<Plans>,
    legacy: bool,
    /// Per limit, the response headers it sends (values rewritten per response).
    headers: Vec<Vec<Header>>,
    /// This request's outcome, for `on_response` (a request's hooks run on
    /// one instance, in turn).
    outcome: Option<Outcome>,
    /// The route's id: an instance serves one route, so it is asked for once.
    route: std::cell::OnceCell<String>,
}

impl RateLimit {
    /// Validates `config`; the error names the offending field.
    pub fn from_config(config: Config) -> Result<Self, String> {
        let status = in_range("status", config.status, 400, 599)?;
        let key = KeySource::parse(&config.key)?;
        let (limits, plans) = if config.plans.is_empty() {
            for (set, field) in [
                (config.plan.is_some(), "plan"),
                (!config.consumers.is_empty(), "consumers"),
                (config.default_plan.is_some(), "default_plan"),
            ] {
                if set {
                    return Err(format!("{field}: only meaningful with `plans`"));
                }
            }
            let rate = config
                .rate
                .ok_or_else(|| "missing field `rate` (or give `plans`)".to_string())?;
            let limit = Limit::new("", "default", rate, config.per, config.burst)?;
            (vec![limit], None)
        } else {
            if config.rate.is_some() || config.burst.is_some() {
                return Err(
                    "rate: give either `rate`/`per`/`burst` or `plans` (each plan has its own)"
                        .into(),
                );
            }
            let mut limits = Vec::new();
            let mut by_name = BTreeMap::new();
            for (name, plan) in &config.plans {
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(format!(
                        "plans: {name:?} is not a plan name (letters, digits, `-`, `_`, `.`)"
                    ));
                }
                let field = format!("plans.{name}.");
                by_name.insert(name.clone(), limits.len());
                limits.push(Limit::new(&field, name, plan.rate, plan.per, plan.burst)?);
            }
            let find = |field: &str, plan: &str| {
                by_name.get(plan).copied().ok_or_else(|| {
                    let known: Vec<&str> = by_name.keys().map(String::as_str).collect();
                    format!(
                        "{field}: no plan named {plan:?} (plans: {})",
                        known.join(", ")
                    )
                })
            };
            let default = find(
                "default_plan",
                config.default_plan.as_deref().ok_or_else(|| {
                    "default_plan: required with `plans` (the plan of a consumer that has none)"
                        .to_string()
                })?,
            )?;
            let mut consumers = BTreeMap::new();
            for (consumer, plan) in &config.consumers {
                consumers.insert(
                    consumer.clone(),
                    find(&format!("consumers.{consumer}"), plan)?,
                );
            }
            let source = match config.plan.as_deref() {
                None => None,
                Some(p) => match KeySource::parse(p).map_err(|e| e.replacen("key:", "plan:", 1))? {
                    k @ (KeySource::Header(_) | KeySource::Var(_)) => Some(k),
                    _ => {
                        return Err(format!(
                            "plan: {p:?} must be \"var:<name>\" or \"header:<name>\""
                        ));
                    }
                },
            };
            (
                limits,
                Some(Plans {
                    source,
                    by_name,
                    consumers,
                    default,
                }),
            )
        };
        let headers = response_headers(&limits, config.legacy_headers);
        Ok(Self {
            key,
            status: status as u16,
            limits,
            plans,
            legacy: config.legacy_headers,
            headers,
            outcome: None,
            route: std::cell::OnceCell::new(),
        })
    }

    /// The request's consumer (what `key` selects), or `None` for the client IP fallback.
    fn consumer(&self, req: &Request) -> Option<String> {
        match &self.key {
            KeySource::Route | KeySource::ClientIp => None,
            KeySource::Header(h) => req.header(h).filter(|v| !v.is_empty()),
            KeySource::Var(v) => req.get_var(v).filter(|v| !v.is_empty()),
        }
    }

    /// Which limit applies: the plan named by `plan`, else the consumer's, else the default.
    fn limit_for(&self, req: &Request, consumer: Option<&str>) -> usize {
        let Some(plans) = &self.plans else { return 0 };
        let named = match &plans.source {
            Some(KeySource::Header(h)) => req.header(h),
            Some(KeySource::Var(v)) => req.get_var(v),
            _ => None,
        };
        named
            .and_then(|n| plans.by_name.get(&n).copied())
            .or_else(|| consumer.and_then(|c| plans.consumers.get(c).copied()))
            .unwrap_or(plans.default)
    }

    fn key_for(&self, req: &Request, policy: &str, consumer: Option<&str>) -> String {
        let route = self.route.get_or_init(|| req.route_id());
        let part = match (&self.key, consumer) {
            (KeySource::Route, _) => KeyPart::Route,
            (KeySource::Header(_), Some(v)) => KeyPart::Header(v),
            (KeySource::Var(_), Some(v)) => KeyPart::Var(v),
            // Absent header or variable: fall back to the client IP.
            _ => {
                let addr = req.client_addr();
                return bucket_key(route, policy, KeyPart::Ip(client_ip(&addr)));
            }
        };
        bucket_key(route, policy, part)
    }

    /// The draft's `ratelimit` value.
    fn state_header(limit: &Limit, remaining: &str, reset: &str) -> String {
        format!("\"{}\";r={remaining};t={reset}", limit.name)
    }

    fn denied(&self, limit: &Limit, wait: &str) -> Action {
        let mut r = reply(self.status)
            .header("retry-after", wait)
            .header("ratelimit-policy", limit.policy_header.as_str())
            .header("ratelimit", Self::state_header(limit, "0", wait));
        if self.legacy {
            r = r
                .header("ratelimit-limit", limit.limit.as_str())
                .header("ratelimit-remaining", "0")
                .header("ratelimit-reset", wait);
        }
        r.text("rate limit exceeded\n").into()
    }
}

impl Plugin for RateLimit {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Self::from_config(config)
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let consumer = self.consumer(req);
        let index = self.limit_for(req, consumer.as_deref());
        let limit = &self.limits[index];
        let key = self.key_for(req, &limit.policy, consumer.as_deref());
        let r = take(&key, limit.bucket, 1);
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
            (VAR_LIMIT, limit.limit.as_str()),
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
        let action = if r.allowed {
            Action::Continue
        } else {
            log::debug("rate limit exceeded");
            self.denied(limit, &reset)
        };
        self.outcome = Some(Outcome {
            limit: index,
            remaining,
            reset,
        });
        action
    }

    fn on_response(&mut self, _req: &Request, resp: &Response) {
        // Kept in `self`, not read back from the variables: host calls fewer.
        let Some(Outcome {
            limit,
            remaining,
            reset,
        }) = self.outcome.take()
        else {
            return;
        };
        let name = &self.limits[limit].name;
        // The limit's header list, built once: only the values that change are
        // rewritten, in place (no allocation per response).
        let headers = &mut self.headers[limit];
        headers[1].value.clear();
        let _ = write!(headers[1].value, "\"{name}\";r={remaining};t={reset}");
        if self.legacy {
            headers[3].value.clone_from(&remaining);
            headers[4].value.clone_from(&reset);
        }
        if let Err((i, e)) = resp.set_headers(headers) {
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
        // As the SDK decodes it at load: errors are prefixed with the field's path.
        let c: Config = weir_sdk::__private::decode_config(json)?;
        RateLimit::from_config(c)
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
        let l = &r.limits[0];
        assert_eq!(l.bucket.capacity, 10);
        assert_eq!(l.bucket.refill_per_sec, 10.0);
        assert_eq!(r.status, 429);
        assert_eq!(r.key, KeySource::ClientIp);
        assert_eq!(l.policy_header, r#""default";q=10;w=1"#);

        let r = decode(r#"{"rate":30,"per":"1m","burst":5,"key":"var:consumer","status":503}"#)
            .unwrap();
        let l = &r.limits[0];
        assert_eq!(l.bucket.capacity, 5);
        assert_eq!(l.bucket.refill_per_sec, 0.5);
        assert_eq!(r.status, 503);
        assert_eq!(l.policy, "30/60000ms/5");
        assert_eq!(l.policy_header, r#""default";q=5;w=60"#);

        let r = decode(r#"{"rate":1,"per":"500ms"}"#).unwrap();
        assert_eq!(r.limits[0].bucket.refill_per_sec, 2.0);
        assert_eq!(r.limits[0].policy_header, r#""default";q=1;w=1"#);
    }

    #[test]
    fn loads_plans() {
        let r = decode(
            r#"{"key":"var:consumer","plan":"var:plan","default_plan":"free",
                "plans":{"free":{"rate":2,"per":"1m"},"pro":{"rate":100,"per":"1m","burst":10}},
                "consumers":{"bob":"pro"}}"#,
        )
        .unwrap();
        let plans = r.plans.as_ref().unwrap();
        let free = &r.limits[plans.by_name["free"]];
        let pro = &r.limits[plans.by_name["pro"]];
        assert_eq!(plans.default, plans.by_name["free"]);
        assert_eq!(plans.consumers["bob"], plans.by_name["pro"]);
        assert_eq!(free.policy_header, r#""free";q=2;w=60"#);
        assert_eq!(pro.policy_header, r#""pro";q=10;w=60"#);
        // Two plans of one shape still count apart.
        assert_ne!(free.policy, pro.policy);
        assert!(free.policy.starts_with("free="));
    }

    #[test]
    fn rejects_bad_config() {
        let err = |j: &str| decode(j).unwrap_err();
        assert!(err("{}").contains("missing field `rate`"));
        assert_eq!(
            err(r#"{"rate":0}"#),
            "rate: must be between 1 and 4294967295 (got 0)"
        );
        assert_eq!(
            err(r#"{"rate":5,"burst":-1}"#),
            "burst: must be between 1 and 4294967295 (got -1)"
        );
        assert_eq!(
            err(r#"{"rate":5,"per":"1x"}"#),
            r#"per: invalid duration `1x`: expected e.g. "500ms", "10s", "2m" or "1h""#
        );
        assert!(err(r#"{"rate":5,"per":"0s"}"#).starts_with("per: invalid duration `0s`"));
        assert_eq!(
            err(r#"{"rate":5,"status":200}"#),
            "status: must be between 400 and 599 (got 200)"
        );
        assert!(err(r#"{"rate":5,"key":"cookie:a"}"#).starts_with("key:"));
        assert!(err(r#"{"rate":5,"window":"1s"}"#).contains("unknown field `window`"));
        let plans = r#""plans":{"free":{"rate":1}}"#;
        assert!(err(&format!("{{{plans}}}")).starts_with("default_plan: required"));
        assert_eq!(
            err(&format!(r#"{{{plans},"default_plan":"gold"}}"#)),
            r#"default_plan: no plan named "gold" (plans: free)"#
        );
        assert_eq!(
            err(&format!(
                r#"{{{plans},"default_plan":"free","consumers":{{"al":"pro"}}}}"#
            )),
            r#"consumers.al: no plan named "pro" (plans: free)"#
        );
        assert!(
            err(&format!(r#"{{{plans},"default_plan":"free","rate":3}}"#))
                .starts_with("rate: give either")
        );
        assert_eq!(
            err(r#"{"plans":{"free":{"rate":0}},"default_plan":"free"}"#),
            "plans.free.rate: must be between 1 and 4294967295 (got 0)"
        );
        assert!(
            err(&format!(
                r#"{{{plans},"default_plan":"free","plan":"client_ip"}}"#
            ))
            .starts_with("plan:")
        );
        assert_eq!(
            err(r#"{"rate":1,"default_plan":"free"}"#),
            "default_plan: only meaningful with `plans`"
        );
    }

    #[test]
    fn rounds_seconds_up() {
        assert_eq!(ceil_secs(0), 0);
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(1000), 1);
        assert_eq!(ceil_secs(1001), 2);
    }
}
