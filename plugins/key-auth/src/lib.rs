//! # key-auth: API-key authentication for Weir routes
//!
//! Looks for an API key in a request header (default `x-api-key`) and then,
//! if configured, in a query parameter. A known key lets the request through
//! with the credential stripped and the consumer's name in `consumer_header`
//! (default `x-consumer`) and in the request variable `consumer`; a missing or
//! unknown key gets a `401` with `www-authenticate: ApiKey realm="..."`.
//!
//! Keys are compared in constant time, and every configured key is compared
//! on each request so the time taken does not reveal which one matched.
//! See `README.md` for the config reference.

use std::borrow::Cow;

use serde::Deserialize;
use weir_sdk::log::{self, Level};
use weir_sdk::metrics;
use weir_sdk::{Action, Hooks, Plugin, Request, reply};

/// The route's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Header carrying the key; `""` disables header lookup.
    #[serde(default = "default_header")]
    pub header: String,
    /// Query parameter carrying the key; absent or `""` disables it.
    #[serde(default)]
    pub query: Option<String>,
    /// Header set on the upstream request to the consumer's name.
    #[serde(default = "default_consumer_header")]
    pub consumer_header: String,
    /// Realm announced in `www-authenticate`.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// The accepted keys.
    pub keys: Vec<KeyEntry>,
}

/// One accepted key and who it belongs to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The secret.
    pub key: String,
    /// The consumer's name, sent upstream.
    pub consumer: String,
}

fn default_header() -> String {
    "x-api-key".into()
}
fn default_consumer_header() -> String {
    "x-consumer".into()
}
fn default_realm() -> String {
    "weir".into()
}

/// The request variable holding the authenticated consumer.
const CONSUMER_VAR: &str = "consumer";

/// The filter, built once per instance from a validated [`Config`].
#[derive(Debug)]
pub struct KeyAuth {
    header: Option<String>,
    query: Option<String>,
    consumer_header: String,
    /// Precomputed `www-authenticate` value.
    challenge: String,
    keys: Vec<KeyEntry>,
}

impl KeyAuth {
    /// Validates `config`; the error names the offending field.
    pub fn from_config(config: Config) -> Result<Self, String> {
        let header = if config.header.is_empty() {
            None
        } else {
            check_header_name("header", &config.header)?;
            Some(config.header)
        };
        let query = match config.query {
            Some(q) if !q.is_empty() => {
                check_param_name("query", &q)?;
                Some(q)
            }
            _ => None,
        };
        if header.is_none() && query.is_none() {
            return Err("header, query: at least one place to look for the key must be set".into());
        }
        check_header_name("consumer_header", &config.consumer_header)?;
        if header.as_deref() == Some(config.consumer_header.as_str()) {
            return Err(format!(
                "consumer_header: must differ from header (both are {:?})",
                config.consumer_header
            ));
        }
        if let Some(c) = config
            .realm
            .chars()
            .find(|&c| c == '"' || c == '\\' || c.is_control())
        {
            return Err(format!("realm: must not contain {c:?}"));
        }
        if config.keys.is_empty() {
            return Err("keys: at least one key is required".into());
        }
        for (i, entry) in config.keys.iter().enumerate() {
            check_key(&entry.key).map_err(|e| format!("keys[{i}].key: {e}"))?;
            if entry.consumer.is_empty() {
                return Err(format!("keys[{i}].consumer: must not be empty"));
            }
            if entry.consumer.chars().any(|c| c.is_control()) {
                return Err(format!(
                    "keys[{i}].consumer: must not contain control characters"
                ));
            }
            // Never echo the key itself: config errors end up in logs.
            if let Some(j) = config.keys[..i].iter().position(|e| e.key == entry.key) {
                return Err(format!("keys[{i}].key: duplicate of keys[{j}].key"));
            }
        }
        Ok(Self {
            header,
            query,
            consumer_header: config.consumer_header,
            challenge: format!("ApiKey realm=\"{}\"", config.realm),
            keys: config.keys,
        })
    }

    /// The index of the key equal to `presented`, comparing against every key.
    fn find(&self, presented: &[u8]) -> Option<usize> {
        find_key(self.keys.iter().map(|e| e.key.as_bytes()), presented)
    }

    fn unauthorized(&self, body: &str) -> Action {
        reply(401)
            .header("www-authenticate", self.challenge.as_str())
            .text(body)
            .into()
    }
}

/// Where the key was found; only used for logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Header,
    Query,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Header => "header",
            Source::Query => "query",
        }
    }
}

impl Plugin for KeyAuth {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Self::from_config(config)
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let from_header = self
            .header
            .as_deref()
            .and_then(|h| req.header(h))
            .filter(|v| !v.is_empty());
        // Fetch the query once: it is needed both to find and to strip the key.
        let query = self.query.as_ref().and_then(|_| req.query());

        let (presented, source): (Cow<'_, [u8]>, Source) = match &from_header {
            Some(v) => (Cow::Borrowed(v.as_bytes()), Source::Header),
            None => match (self.query.as_deref(), query.as_deref()) {
                (Some(name), Some(q)) => match find_param(q, name) {
                    Some(v) if !v.is_empty() => (v, Source::Query),
                    _ => return self.missing(),
                },
                _ => return self.missing(),
            },
        };

        let Some(index) = self.find(&presented) else {
            log::log(
                Level::Debug,
                "invalid API key",
                &[("source", source.as_str())],
            );
            metrics::counter_add("key_auth_rejected", &[("reason", "invalid")], 1);
            return self.unauthorized("invalid API key\n");
        };
        let consumer = self.keys[index].consumer.as_str();

        // Fail closed: if the credential can't be stripped or the consumer
        // header can't be forced, the upstream must not see the request.
        if let Err(what) = self.forward(req, query.as_deref(), consumer) {
            log::log(
                Level::Error,
                "cannot prepare the upstream request",
                &[("error", &what)],
            );
            return reply(500).text("internal error\n").into();
        }
        Action::Continue
    }
}

impl KeyAuth {
    fn missing(&self) -> Action {
        log::debug("missing API key");
        metrics::counter_add("key_auth_rejected", &[("reason", "missing")], 1);
        self.unauthorized("missing API key\n")
    }

    /// Strips the credential and names the consumer on the upstream request.
    fn forward(&self, req: &Request, query: Option<&str>, consumer: &str) -> Result<(), String> {
        if let Some(h) = &self.header {
            req.remove_header(h)
                .map_err(|e| format!("remove {h}: {e:?}"))?;
        }
        if let (Some(name), Some(q)) = (&self.query, query)
            && let Some(rest) = remove_param(q, name)
        {
            req.set_query(rest.as_deref())
                .map_err(|e| format!("set query: {e:?}"))?;
        }
        // Always overwrite, so a client cannot forge the consumer.
        req.set_header(&self.consumer_header, consumer)
            .map_err(|e| format!("set {}: {e:?}", self.consumer_header))?;
        if let Err(e) = req.set_var(CONSUMER_VAR, consumer) {
            log::log(
                Level::Warn,
                "cannot set request variable",
                &[("var", CONSUMER_VAR), ("error", &format!("{e:?}"))],
            );
        }
        Ok(())
    }
}

weir_sdk::export!(KeyAuth);

// ---- pure logic, unit-tested natively ----

/// Compares in time that depends only on the lengths, not on where they differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// Compares `presented` with every key (no early exit) and returns the match.
fn find_key<'a>(keys: impl Iterator<Item = &'a [u8]>, presented: &[u8]) -> Option<usize> {
    let mut found = usize::MAX;
    for (i, key) in keys.enumerate() {
        // Branch-free select of the matching index.
        let mask = (ct_eq(key, presented) as usize).wrapping_neg();
        found = (i & mask) | (found & !mask);
    }
    (found != usize::MAX).then_some(found)
}

/// The first value of parameter `name` in `query`, percent-decoded.
/// `+` stays literal: base64 keys are often sent unencoded.
fn find_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, [u8]>> {
    query.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (*percent_decode(n) == *name.as_bytes()).then(|| percent_decode(v))
    })
}

/// `query` without any `name` parameter: `None` if there was none to remove,
/// `Some(None)` if nothing is left. Other pairs keep their order and encoding.
fn remove_param(query: &str, name: &str) -> Option<Option<String>> {
    let is_name = |pair: &str| {
        let n = pair.split_once('=').map_or(pair, |(n, _)| n);
        *percent_decode(n) == *name.as_bytes()
    };
    if !query.split('&').any(is_name) {
        return None;
    }
    let mut rest = String::with_capacity(query.len());
    for pair in query.split('&').filter(|p| !p.is_empty() && !is_name(p)) {
        if !rest.is_empty() {
            rest.push('&');
        }
        rest.push_str(pair);
    }
    Some((!rest.is_empty()).then_some(rest))
}

/// Decodes `%XX` escapes; malformed escapes are kept as they are.
fn percent_decode(s: &str) -> Cow<'_, [u8]> {
    if !s.contains('%') {
        return Cow::Borrowed(s.as_bytes());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Cow::Owned(out)
}

/// A header-name check whose error names the config field.
fn check_header_name(field: &str, name: &str) -> Result<(), String> {
    weir_sdk::check_header_name(name).map_err(|e| format!("{field}: {e}"))
}

fn check_param_name(field: &str, name: &str) -> Result<(), String> {
    if name
        .chars()
        .any(|c| matches!(c, '&' | '=' | '#' | '%' | '+') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{field}: {name:?} is not a valid query parameter name"
        ));
    }
    Ok(())
}

/// A key must be something a client can send in a header.
fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        Err("must not be empty")
    } else if key.chars().any(|c| c.is_control()) {
        Err("must not contain control characters")
    } else if key.trim() != key {
        Err("must not start or end with whitespace")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, consumer: &str) -> KeyEntry {
        KeyEntry {
            key: key.into(),
            consumer: consumer.into(),
        }
    }

    fn config(keys: Vec<KeyEntry>) -> Config {
        Config {
            header: default_header(),
            query: None,
            consumer_header: default_consumer_header(),
            realm: default_realm(),
            keys,
        }
    }

    #[test]
    fn decodes_config() {
        let c: Config =
            serde_json::from_str(r#"{"keys":[{"key":"k","consumer":"alice"}]}"#).unwrap();
        let f = KeyAuth::from_config(c).unwrap();
        assert_eq!(f.header.as_deref(), Some("x-api-key"));
        assert_eq!(f.query, None);
        assert_eq!(f.consumer_header, "x-consumer");
        let unknown =
            serde_json::from_str::<Config>(r#"{"keys":[],"header_name":"x"}"#).unwrap_err();
        assert!(unknown.to_string().contains("unknown field `header_name`"));
        let unknown =
            serde_json::from_str::<Config>(r#"{"keys":[{"key":"k","consumer":"a","role":"x"}]}"#);
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("unknown field `role`")
        );
        assert!(
            serde_json::from_str::<Config>("{}")
                .unwrap_err()
                .to_string()
                .contains("missing field `keys`")
        );
    }

    #[test]
    fn compares_keys() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(ct_eq(b"", b""));
        let keys: [&[u8]; 3] = [b"one", b"two", b"three"];
        assert_eq!(find_key(keys.into_iter(), b"two"), Some(1));
        assert_eq!(find_key(keys.into_iter(), b"three"), Some(2));
        assert_eq!(find_key(keys.into_iter(), b"four"), None);
        assert_eq!(find_key(keys.into_iter(), b""), None);
    }

    #[test]
    fn finds_params() {
        let get = |q, n| find_param(q, n).map(|v| String::from_utf8(v.into_owned()).unwrap());
        assert_eq!(get("api_key=abc&x=1", "api_key").as_deref(), Some("abc"));
        assert_eq!(
            get("x=1&api_key=a%2Bb%3D&api_key=2", "api_key").as_deref(),
            Some("a+b=")
        );
        assert_eq!(get("x=1&api%5Fkey=z", "api_key").as_deref(), Some("z"));
        assert_eq!(get("api_key", "api_key").as_deref(), Some(""));
        assert_eq!(get("a+b=1", "api_key"), None);
        assert_eq!(get("xapi_key=1&api_keyx=2", "api_key"), None);
        assert_eq!(get("k=a+b", "k").as_deref(), Some("a+b"));
        assert_eq!(get("k=%zz%4", "k").as_deref(), Some("%zz%4"));
    }

    #[test]
    fn removes_params() {
        assert_eq!(remove_param("a=1&b=2", "api_key"), None);
        assert_eq!(remove_param("api_key=k", "api_key"), Some(None));
        assert_eq!(remove_param("api_key=k&api_key=j", "api_key"), Some(None));
        assert_eq!(
            remove_param("z=1&api_key=k&a=2&api_key&m=%20", "api_key"),
            Some(Some("z=1&a=2&m=%20".into()))
        );
        assert_eq!(
            remove_param("&api_key=k&&b=2&", "api_key"),
            Some(Some("b=2".into()))
        );
        assert_eq!(
            remove_param("api%5fkey=k&b", "api_key"),
            Some(Some("b".into()))
        );
    }

    #[test]
    fn decodes_percent() {
        assert_eq!(&*percent_decode("plain"), b"plain");
        assert_eq!(&*percent_decode("%41%62%"), b"Ab%");
        assert_eq!(&*percent_decode("%ff"), &[0xff]);
        assert_eq!(&*percent_decode("%é"), "%é".as_bytes());
    }

    #[test]
    fn validates_config() {
        let err = |c: Config| KeyAuth::from_config(c).unwrap_err();
        assert_eq!(err(config(vec![])), "keys: at least one key is required");
        assert_eq!(
            err(config(vec![
                entry("a", "x"),
                entry("b", "y"),
                entry("c", "")
            ])),
            "keys[2].consumer: must not be empty"
        );
        assert_eq!(
            err(config(vec![entry("", "x")])),
            "keys[0].key: must not be empty"
        );
        assert_eq!(
            err(config(vec![entry(" k", "x")])),
            "keys[0].key: must not start or end with whitespace"
        );
        let e = err(config(vec![
            entry("same", "x"),
            entry("other", "y"),
            entry("same", "z"),
        ]));
        assert_eq!(e, "keys[2].key: duplicate of keys[0].key");
        assert!(!e.contains("same"));

        let mut c = config(vec![entry("k", "x")]);
        c.header = "X-Api-Key".into();
        assert_eq!(
            err(c),
            r#"header: "X-Api-Key" must be lower case (write "x-api-key")"#
        );
        let mut c = config(vec![entry("k", "x")]);
        c.consumer_header = "bad name".into();
        assert_eq!(
            err(c),
            r#"consumer_header: "bad name" is not a valid header name"#
        );
        let mut c = config(vec![entry("k", "x")]);
        c.header = String::new();
        assert!(err(c).starts_with("header, query:"));
        let mut c = config(vec![entry("k", "x")]);
        c.query = Some("a&b".into());
        assert_eq!(
            err(c),
            r#"query: "a&b" is not a valid query parameter name"#
        );
        let mut c = config(vec![entry("k", "x")]);
        c.realm = "a\"b".into();
        assert!(err(c).starts_with("realm:"));
        let mut c = config(vec![entry("k", "x")]);
        c.consumer_header = "x-api-key".into();
        assert!(err(c).starts_with("consumer_header: must differ"));

        let mut c = config(vec![entry("k", "x")]);
        c.header = String::new();
        c.query = Some("api_key".into());
        let ok = KeyAuth::from_config(c).unwrap();
        assert_eq!(ok.header, None);
        assert_eq!(ok.challenge, "ApiKey realm=\"weir\"");
        assert_eq!(ok.find(b"k"), Some(0));
    }
}
