//! The cases file (`weir test CASES.toml`): raw TOML, unknown keys refused.
//!
//! ```toml
//! manifest = "gateway.toml"            # relative to this file
//!
//! [upstream]                            # what the stub upstream answers
//! status = 200
//! headers = { content-type = "application/json" }
//! body = '{"ok":true}'
//!
//! [[case]]
//! name = "a request without a key gets 401"
//! request = { target = "/api/orders" }
//! expect = { status = 401, answered_by = "key-auth" }
//!
//! [[case]]
//! name = "the third call in a minute is refused"
//! [[case.steps]]
//! request = { target = "/api/orders", headers = { x-api-key = "k1" } }
//! repeat = 2
//! expect.status = 200
//! [[case.steps]]
//! request = { target = "/api/orders", headers = { x-api-key = "k1" } }
//! expect = { status = 429, headers = { retry-after = "60" } }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_spanned::Spanned;
use toml::value::Datetime;

use crate::config::Duration;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasesFile {
    /// `manifest`: the gateway manifest the cases run against (relative to this file).
    pub manifest: Option<Spanned<PathBuf>>,
    /// `[upstream]`: the stub upstream's answer unless a step says otherwise.
    #[serde(default)]
    pub upstream: StubAnswer,
    /// `[[case]]`: run in order, each from empty host state.
    #[serde(default, rename = "case")]
    pub cases: Vec<Spanned<Case>>,
}

/// `[[case]]`: one request (`request`, `expect`...) or a sequence (`steps`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// `name`: what the case shows, as a sentence.
    pub name: String,
    /// `manifest`: overrides the file's `manifest` for this case.
    pub manifest: Option<Spanned<PathBuf>>,
    /// `[[case.steps]]`: requests in order, sharing host state and clock.
    #[serde(default)]
    pub steps: Vec<Step>,
    // The one-step form: a step's fields directly in the case.
    /// See [`Step::request`].
    pub request: Option<RequestSpec>,
    /// See [`Step::expect`].
    pub expect: Option<Expect>,
    /// See [`Step::upstream`].
    pub upstream: Option<StubAnswer>,
    /// See [`Step::repeat`].
    pub repeat: Option<u32>,
    /// See [`Step::advance`].
    pub advance: Option<Duration>,
    /// See [`Step::time`].
    pub time: Option<Datetime>,
}

/// One request and what must come of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// `request`: what the client sends.
    pub request: RequestSpec,
    /// `expect`: what must be true of the outcome (each key optional).
    #[serde(default)]
    pub expect: Expect,
    /// `upstream`: the stub's answer for this step.
    pub upstream: Option<StubAnswer>,
    /// `repeat`: send the request this many times, expecting the same each time (default 1).
    pub repeat: Option<u32>,
    /// `advance`: move the clock (plugins' time and host state) forward this much first.
    pub advance: Option<Duration>,
    /// `time`: the wall clock plugins read, e.g. `2030-01-01T00:00:00Z`; later
    /// steps may only move it forward (host state moves with it).
    pub time: Option<Datetime>,
}

/// `request`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// `method` (default `GET`).
    #[serde(default = "get")]
    pub method: String,
    /// `target`: path and query, e.g. `/api/orders?page=2`.
    pub target: String,
    /// `headers`: name to value (or list of values); `host` defaults to `localhost`.
    #[serde(default)]
    pub headers: BTreeMap<String, OneOrMany>,
    /// `body`: sent as is.
    #[serde(default)]
    pub body: String,
    /// `client`: the peer address the gateway sees (default `192.0.2.10:40000`).
    pub client: Option<String>,
}

fn get() -> String {
    "GET".into()
}

/// A header value, or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One value.
    One(String),
    /// Several, sent as separate fields.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values in order.
    pub fn values(&self) -> &[String] {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v,
        }
    }
}

/// `[upstream]` / `upstream`: the stub upstream's answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StubAnswer {
    /// `status` (default 200).
    #[serde(default = "ok")]
    pub status: u16,
    /// `headers`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `body`.
    #[serde(default)]
    pub body: String,
}

fn ok() -> u16 {
    200
}

impl Default for StubAnswer {
    fn default() -> Self {
        StubAnswer {
            status: ok(),
            headers: BTreeMap::new(),
            body: String::new(),
        }
    }
}

/// `expect`: every key is optional; only what is given is checked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `status` the client gets.
    pub status: Option<u16>,
    /// `route`: the id of the route chosen.
    pub route: Option<String>,
    /// `answered_by`: the plugin that answered, `gateway`, or `upstream`.
    pub answered_by: Option<String>,
    /// `headers`: response headers and their exact values (several joined by `, `).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `present`: response headers that must be there, any value.
    #[serde(default)]
    pub present: Vec<String>,
    /// `absent`: response headers that must not be there.
    #[serde(default)]
    pub absent: Vec<String>,
    /// `body`: the response body, exactly.
    pub body: Option<String>,
    /// `body_contains`: text the response body must contain.
    pub body_contains: Option<String>,
    /// `vars`: request variables after the request chain, and their values.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// `upstream`: what the upstream received; `{ called = false }` when it must not be reached.
    pub upstream: Option<ExpectUpstream>,
}

/// `expect.upstream`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectUpstream {
    /// `called`: whether the upstream was reached at all (default true).
    pub called: Option<bool>,
    /// `method`.
    pub method: Option<String>,
    /// `target`: path and query as the upstream received them.
    pub target: Option<String>,
    /// `headers`: request headers and their exact values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `present`: request headers that must be there.
    #[serde(default)]
    pub present: Vec<String>,
    /// `absent`: request headers that must not be there.
    #[serde(default)]
    pub absent: Vec<String>,
    /// `body`: the request body as received.
    pub body: Option<String>,
}

/// Milliseconds since the Unix epoch of a full TOML offset date-time.
pub fn unix_ms(t: &Datetime) -> Result<u64, String> {
    let (Some(date), Some(time), Some(offset)) = (t.date, t.time, t.offset) else {
        return Err(format!(
            "time {t} needs a date, a time and an offset, e.g. 2030-01-01T00:00:00Z"
        ));
    };
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m, d) = (
        i64::from(date.year),
        i64::from(date.month),
        i64::from(date.day),
    );
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let offset_min = match offset {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => i64::from(minutes),
    };
    let secs = days * 86_400
        + i64::from(time.hour) * 3600
        + i64::from(time.minute) * 60
        + i64::from(time.second)
        - offset_min * 60;
    let ms = secs * 1000 + i64::from(time.nanosecond / 1_000_000);
    u64::try_from(ms).map_err(|_| format!("time {t} is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_date_times_become_unix_milliseconds() {
        let t = |s: &str| unix_ms(&s.parse::<Datetime>().unwrap());
        assert_eq!(t("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(t("2030-01-01T00:00:00Z"), Ok(1_893_456_000_000));
        assert_eq!(t("2000-02-29T12:30:15.250Z"), Ok(951_827_415_250));
        assert_eq!(t("2030-01-01T01:00:00+01:00"), Ok(1_893_456_000_000));
        assert!(t("2030-01-01").is_err());
        assert!(t("1969-12-31T23:59:59Z").is_err());
    }
}
