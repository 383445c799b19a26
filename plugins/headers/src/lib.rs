//! # headers: edit request and response headers on a Weir route
//!
//! Each direction (`[request]`, `[response]`) applies, in this order:
//! `remove` (drop headers), `rename` (move every value to a new name),
//! `set` (replace with one value) and `add` (append a value). Values of
//! `set` and `add` are templates with placeholders such as `${client_ip}`,
//! `${header.x-foo}` or `${var.consumer}`, parsed once when the config is
//! loaded. Placeholders always read the downstream request, also in the
//! response hook. See `README.md` for the config reference.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::BTreeMap;

use serde::Deserialize;
use weir_sdk::log::{self, Level};
use weir_sdk::{EditError, Hooks, Plugin, Request, Response, check_header_name};

/// The route's config table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Edits to the request sent upstream.
    pub request: OpsConfig,
    /// Edits to the response sent to the client.
    pub response: OpsConfig,
}

/// The edits for one direction, as written in the config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Headers to drop.
    pub remove: Vec<String>,
    /// `old = "new"`: every value of `old` moves to `new`, replacing it.
    pub rename: BTreeMap<String, String>,
    /// `name = "template"`: replaces every value with one.
    pub set: BTreeMap<String, String>,
    /// `name = "template"`: appends a value.
    pub add: BTreeMap<String, String>,
}

/// A piece of a value template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Lit(String),
    ClientIp,
    ClientAddr,
    RouteId,
    Method,
    Path,
    Host,
    Header(String),
    Var(String),
}

/// A parsed value: literal text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template(Vec<Segment>);

impl Template {
    /// Parses `${...}` placeholders; `$${` writes a literal `${`.
    fn parse(s: &str) -> Result<Self, String> {
        if let Some(c) = s.chars().find(|&c| c.is_control() && c != '\t') {
            return Err(format!("{c:?} may not appear in a header value"));
        }
        let mut segments = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            lit.push_str(&rest[..i]);
            let tail = &rest[i..];
            if let Some(after) = tail.strip_prefix("$${") {
                lit.push_str("${");
                rest = after;
            } else if let Some(after) = tail.strip_prefix("${") {
                let end = after
                    .find('}')
                    .ok_or_else(|| format!("unterminated \"${{\" in {s:?}"))?;
                if !lit.is_empty() {
                    segments.push(Segment::Lit(std::mem::take(&mut lit)));
                }
                segments.push(placeholder(&after[..end])?);
                rest = &after[end + 1..];
            } else {
                lit.push('$');
                rest = &tail[1..];
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() || segments.is_empty() {
            segments.push(Segment::Lit(lit));
        }
        Ok(Self(segments))
    }

    /// The literal value, if the template has no placeholders.
    fn as_literal(&self) -> Option<&str> {
        match self.0.as_slice() {
            [Segment::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// Expands the template; `lookup` gives a placeholder's value (`None` = empty).
    fn expand(&self, mut lookup: impl FnMut(&Segment) -> Option<String>) -> Cow<'_, str> {
        if let Some(lit) = self.as_literal() {
            return Cow::Borrowed(lit);
        }
        let mut out = String::new();
        for seg in &self.0 {
            match seg {
                Segment::Lit(s) => out.push_str(s),
                other => out.push_str(lookup(other).as_deref().unwrap_or("")),
            }
        }
        Cow::Owned(out)
    }
}

fn placeholder(name: &str) -> Result<Segment, String> {
    let seg = match name {
        "client_ip" => Segment::ClientIp,
        "client_addr" => Segment::ClientAddr,
        "route_id" => Segment::RouteId,
        "method" => Segment::Method,
        "path" => Segment::Path,
        "host" => Segment::Host,
        _ => {
            if let Some(h) = name.strip_prefix("header.") {
                check_header_name(h).map_err(|e| format!("in ${{{name}}}: {e}"))?;
                Segment::Header(h.to_owned())
            } else if let Some(v) = name.strip_prefix("var.").filter(|v| is_var_name(v)) {
                Segment::Var(v.to_owned())
            } else {
                return Err(format!("unknown placeholder \"${{{name}}}\""));
            }
        }
    };
    Ok(seg)
}

fn is_var_name(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
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

/// The validated edits for one direction.
#[derive(Debug, Default)]
struct Ops {
    remove: Vec<String>,
    rename: Vec<(String, String)>,
    set: Vec<(String, Template)>,
    add: Vec<(String, Template)>,
}

impl Ops {
    fn from_config(section: &str, c: OpsConfig) -> Result<Self, String> {
        let name_err = |op: &str, e: String| format!("{section}.{op}: {e}");
        for name in &c.remove {
            check_header_name(name).map_err(|e| name_err("remove", e))?;
        }
        for (from, to) in &c.rename {
            check_header_name(from).map_err(|e| name_err("rename", e))?;
            check_header_name(to).map_err(|e| name_err("rename", e))?;
            let at = format!("{section}.rename.{from:?}");
            if from == to {
                return Err(format!("{at}: renames a header to itself"));
            }
            if c.rename.contains_key(to) {
                // Map order is not config order, so chains would be ambiguous.
                return Err(format!(
                    "{at}: target {to:?} is itself renamed; rename directly"
                ));
            }
            if c.rename.iter().any(|(f, t)| t == to && f < from) {
                return Err(format!("{at}: another header is also renamed to {to:?}"));
            }
            if c.remove.contains(from) {
                return Err(format!(
                    "{at}: {from:?} is removed first, so it would never be renamed"
                ));
            }
        }
        let templates = |op: &str, map: BTreeMap<String, String>| {
            map.into_iter()
                .map(|(name, value)| {
                    check_header_name(&name).map_err(|e| name_err(op, e))?;
                    let t = Template::parse(&value)
                        .map_err(|e| format!("{section}.{op}.{name:?}: {e}"))?;
                    Ok((name, t))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        Ok(Self {
            set: templates("set", c.set)?,
            add: templates("add", c.add)?,
            remove: c.remove,
            rename: c.rename.into_iter().collect(),
        })
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }

    /// Applies remove, rename, set, add to `target`; placeholders read `req`.
    fn apply(&self, target: &impl Headers, req: &Request, route: &OnceCell<String>) {
        for name in &self.remove {
            warn_on(name, "remove", target.remove(name).map(drop));
        }
        for (from, to) in &self.rename {
            let values = target.all(from);
            let Some((first, rest)) = values.split_first() else {
                continue;
            };
            warn_on(from, "remove", target.remove(from).map(drop));
            warn_on(to, "set", target.set(to, first));
            for v in rest {
                warn_on(to, "add", target.append(to, v));
            }
        }
        for (name, t) in &self.set {
            warn_on(
                name,
                "set",
                target.set(name, &t.expand(|s| lookup(req, route, s))),
            );
        }
        for (name, t) in &self.add {
            warn_on(
                name,
                "add",
                target.append(name, &t.expand(|s| lookup(req, route, s))),
            );
        }
    }
}

/// Reads a placeholder's value from the request.
fn lookup(req: &Request, route: &OnceCell<String>, seg: &Segment) -> Option<String> {
    match seg {
        Segment::Lit(s) => Some(s.clone()),
        Segment::ClientIp => Some(client_ip(&req.client_addr()).to_owned()),
        Segment::ClientAddr => Some(req.client_addr()),
        // An instance serves one route: asked for once.
        Segment::RouteId => Some(route.get_or_init(|| req.route_id()).clone()),
        Segment::Method => Some(req.method()),
        Segment::Path => Some(req.path()),
        Segment::Host => req.authority(),
        Segment::Header(h) => req.header(h),
        Segment::Var(v) => req.get_var(v),
    }
}

/// Skips a failed edit, logging why (never the value: it may come from the client).
fn warn_on(name: &str, op: &str, result: Result<(), EditError>) {
    if let Err(e) = result {
        log::log(
            Level::Warn,
            "header edit skipped",
            &[("header", name), ("op", op), ("error", edit_error_kind(&e))],
        );
    }
}

fn edit_error_kind(e: &EditError) -> &'static str {
    match e {
        EditError::InvalidName(_) => "invalid name",
        EditError::InvalidValue(_) => "invalid value",
        EditError::InvalidPath(_) => "invalid path",
        EditError::InvalidStatus(_) => "invalid status",
        EditError::ReadOnly => "read-only",
        EditError::TooLarge => "too large",
    }
}

/// What request and response have in common.
trait Headers {
    fn all(&self, name: &str) -> Vec<String>;
    fn set(&self, name: &str, value: &str) -> Result<(), EditError>;
    fn append(&self, name: &str, value: &str) -> Result<(), EditError>;
    fn remove(&self, name: &str) -> Result<bool, EditError>;
}

macro_rules! impl_headers {
    ($t:ty) => {
        impl Headers for $t {
            fn all(&self, name: &str) -> Vec<String> {
                self.header_all(name)
            }
            fn set(&self, name: &str, value: &str) -> Result<(), EditError> {
                self.set_header(name, value)
            }
            fn append(&self, name: &str, value: &str) -> Result<(), EditError> {
                self.append_header(name, value)
            }
            fn remove(&self, name: &str) -> Result<bool, EditError> {
                self.remove_header(name)
            }
        }
    };
}
impl_headers!(Request);
impl_headers!(Response);

/// The filter.
#[derive(Debug)]
pub struct HeadersFilter {
    request: Ops,
    response: Ops,
    route: OnceCell<String>,
}

impl HeadersFilter {
    /// Validates `config`; the error names the offending field.
    pub fn from_config(config: Config) -> Result<Self, String> {
        Ok(Self {
            request: Ops::from_config("request", config.request)?,
            response: Ops::from_config("response", config.response)?,
            route: OnceCell::new(),
        })
    }
}

impl Plugin for HeadersFilter {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Self::from_config(config)
    }

    fn hooks(&self) -> Hooks {
        // A direction with no edits costs no hook call; `on_response` reads the
        // request, not `self`, so no `SAME_INSTANCE`: fewer live instances.
        let mut hooks = Hooks::empty();
        if !self.request.is_empty() {
            hooks = hooks | Hooks::ON_REQUEST;
        }
        if !self.response.is_empty() {
            hooks = hooks | Hooks::ON_RESPONSE;
        }
        hooks
    }

    fn on_request(&mut self, req: &Request) -> weir_sdk::Action {
        if !self.request.is_empty() {
            self.request.apply(req, req, &self.route);
        }
        weir_sdk::Action::Continue
    }

    fn on_response(&mut self, req: &Request, resp: &Response) {
        if !self.response.is_empty() {
            self.response.apply(resp, req, &self.route);
        }
    }
}

weir_sdk::export!(HeadersFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use Segment::*;

    fn parse(s: &str) -> Vec<Segment> {
        Template::parse(s).unwrap().0
    }

    fn lit(s: &str) -> Segment {
        Lit(s.into())
    }

    #[test]
    fn parses_templates() {
        assert_eq!(parse("weir"), [lit("weir")]);
        assert_eq!(parse(""), [lit("")]);
        assert_eq!(parse("${route_id}"), [RouteId]);
        assert_eq!(
            parse("ip=${client_ip}, ${client_addr}${method} ${path}@${host}"),
            [
                lit("ip="),
                ClientIp,
                lit(", "),
                ClientAddr,
                Method,
                lit(" "),
                Path,
                lit("@"),
                Host
            ]
        );
        assert_eq!(
            parse("${header.x-req-id}/${var.consumer}!"),
            [
                Header("x-req-id".into()),
                lit("/"),
                Var("consumer".into()),
                lit("!")
            ]
        );
        assert_eq!(parse("cost $5 $"), [lit("cost $5 $")]);
        assert_eq!(parse("$${route_id}"), [lit("${route_id}")]);
        assert_eq!(parse("a$$${method}"), [lit("a$${method}")]);
        assert_eq!(
            parse("{}${var.ratelimit.remaining}"),
            [lit("{}"), Var("ratelimit.remaining".into())]
        );
    }

    #[test]
    fn rejects_bad_templates() {
        let err = |s| Template::parse(s).unwrap_err();
        assert_eq!(err("${nope}"), r#"unknown placeholder "${nope}""#);
        assert_eq!(
            err("x ${route_id"),
            r#"unterminated "${" in "x ${route_id""#
        );
        assert_eq!(err("${}"), r#"unknown placeholder "${}""#);
        assert_eq!(err("${var.}"), r#"unknown placeholder "${var.}""#);
        assert_eq!(
            err("${header.X-Foo}"),
            r#"in ${header.X-Foo}: "X-Foo" must be lower case (write "x-foo")"#
        );
        assert_eq!(err("a\r\nb"), r#"'\r' may not appear in a header value"#);
        assert!(Template::parse("tab\tok").is_ok());
        assert_eq!(
            err("${method}\n"),
            r#"'\n' may not appear in a header value"#
        );
    }

    #[test]
    fn expands_templates() {
        let t = Template::parse("${method} ${path} [${var.consumer}] ${header.x-a}").unwrap();
        let out = t.expand(|s| match s {
            Method => Some("GET".into()),
            Path => Some("/v1".into()),
            Var(v) if v == "consumer" => None,
            Header(h) => Some(format!("h:{h}")),
            _ => unreachable!(),
        });
        assert_eq!(out, "GET /v1 [] h:x-a");
        let t = Template::parse("static").unwrap();
        assert!(matches!(
            t.expand(|_| unreachable!()),
            Cow::Borrowed("static")
        ));
    }

    #[test]
    fn splits_client_ip() {
        assert_eq!(client_ip("192.0.2.1:5000"), "192.0.2.1");
        assert_eq!(client_ip("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(client_ip("2001:db8::1"), "2001:db8::1");
        assert_eq!(client_ip("192.0.2.1"), "192.0.2.1");
    }

    fn decode(json: &str) -> Result<HeadersFilter, String> {
        let c: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        HeadersFilter::from_config(c)
    }

    #[test]
    fn loads_config() {
        let f = decode(
            r#"{"request":{"remove":["x-internal"],"rename":{"x-old":"x-new"},
                "set":{"x-route":"${route_id}","x-client":"${client_ip}"},"add":{"x-trace-tag":"weir"}},
                "response":{"remove":["server"],"rename":{},"set":{"x-served-by":"weir"},"add":{}}}"#,
        )
        .unwrap();
        assert_eq!(f.request.remove, ["x-internal"]);
        assert_eq!(
            f.request.rename,
            [("x-old".to_string(), "x-new".to_string())]
        );
        assert_eq!(
            f.request.set[0],
            ("x-client".into(), Template(vec![ClientIp]))
        );
        assert_eq!(f.response.set[0].1.as_literal(), Some("weir"));
        assert!(decode("{}").unwrap().request.is_empty());
    }

    #[test]
    fn rejects_bad_config() {
        let err = |j| decode(j).unwrap_err();
        assert_eq!(
            err(r#"{"request":{"set":{"bad name":"x"}}}"#),
            r#"request.set: "bad name" is not a valid header name"#
        );
        assert_eq!(
            err(r#"{"response":{"remove":[""]}}"#),
            r#"response.remove: "" is not a valid header name"#
        );
        assert_eq!(
            err(r#"{"request":{"add":{"x-a":"${bogus}"}}}"#),
            r#"request.add."x-a": unknown placeholder "${bogus}""#
        );
        assert!(err(r#"{"request":{"rename":{"a":"b","b":"c"}}}"#).contains("is itself renamed"));
        assert!(
            err(r#"{"request":{"rename":{"a":"c","b":"c"}}}"#)
                .starts_with(r#"request.rename."b": another"#)
        );
        assert!(err(r#"{"request":{"rename":{"a":"a"}}}"#).contains("to itself"));
        assert!(
            err(r#"{"request":{"remove":["a"],"rename":{"a":"b"}}}"#).contains("removed first")
        );
        assert!(err(r#"{"request":{"replace":{}}}"#).contains("unknown field `replace`"));
        assert!(err(r#"{"requests":{}}"#).contains("unknown field `requests`"));
    }
}
