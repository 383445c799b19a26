//! Path templates: `/users/{segment.1}/orders?{query}`, parsed at load and
//! filled per request. Pure logic, unit-tested natively.

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Text copied as it is.
    Literal(String),
    /// `{path}`: the request's (normalised) path, as it is.
    Path,
    /// `{query}`: the request's query string without `?` (empty if none).
    Query,
    /// `{segment.N}`: the Nth segment of the path (0-based), percent-encoded.
    Segment(usize),
    /// `{header.NAME}`: the request header's first value, percent-encoded.
    Header(String),
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What a template reads from the request.
pub trait Source {
    /// The request's path.
    fn path(&self) -> &str;
    /// The request's query string, if any.
    fn query(&self) -> Option<&str>;
    /// A header's first value.
    fn header(&self, name: &str) -> Option<String>;
}

impl Template {
    /// Parses `text`; the error says what is wrong (the caller names the field).
    pub fn parse(text: &str) -> Result<Template, String> {
        if !text.starts_with('/') {
            return Err(format!("{text:?} must start with `/`"));
        }
        if text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '#')
        {
            return Err(format!("{text:?} is not a valid request path"));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("{text:?}: `{{` without `}}`"));
            };
            parts.push(placeholder(&rest[open + 1..open + close])?);
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("{text:?}: `}}` without `{{`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// Fills the template from `req`. A header it names that the request
    /// lacks is an error naming it. A trailing `?` or `&` left by an empty
    /// `{query}` is dropped.
    pub fn render(&self, req: &impl Source) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Path => out.push_str(req.path()),
                Part::Query => out.push_str(req.query().unwrap_or("")),
                Part::Segment(n) => {
                    let seg = req
                        .path()
                        .split('/')
                        .filter(|s| !s.is_empty())
                        .nth(*n)
                        .ok_or_else(|| format!("the path has no segment {n}"))?;
                    out.push_str(&encode(seg));
                }
                Part::Header(name) => {
                    let v = req
                        .header(name)
                        .ok_or_else(|| format!("missing header {name}"))?;
                    out.push_str(&encode(&v));
                }
            }
        }
        while out.ends_with(['?', '&']) {
            out.pop();
        }
        Ok(out)
    }
}

fn placeholder(name: &str) -> Result<Part, String> {
    match name {
        "path" => Ok(Part::Path),
        "query" => Ok(Part::Query),
        _ => {
            if let Some(n) = name.strip_prefix("segment.") {
                return n
                    .parse()
                    .map(Part::Segment)
                    .map_err(|_| format!("`{{{name}}}`: N in segment.N must be a number"));
            }
            if let Some(h) = name.strip_prefix("header.") {
                weir_sdk::check_header_name(h).map_err(|e| format!("`{{{name}}}`: {e}"))?;
                return Ok(Part::Header(h.to_string()));
            }
            Err(format!(
                "unknown placeholder `{{{name}}}` (known: {{path}}, {{query}}, {{segment.N}}, {{header.NAME}})"
            ))
        }
    }
}

/// Percent-encodes a value for one path segment: only unreserved characters
/// stay, and `.`/`..` are encoded whole, so a value can never add segments
/// or climb out of the one it fills.
fn encode(v: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let dots = v == "." || v == "..";
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') || (b == b'.' && !dots) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Req {
        path: &'static str,
        query: Option<&'static str>,
        user: Option<&'static str>,
    }

    impl Source for Req {
        fn path(&self) -> &str {
            self.path
        }
        fn query(&self) -> Option<&str> {
            self.query
        }
        fn header(&self, name: &str) -> Option<String> {
            (name == "x-user")
                .then_some(self.user)
                .flatten()
                .map(str::to_string)
        }
    }

    const REQ: Req = Req {
        path: "/me/42",
        query: Some("page=2"),
        user: Some("al/ice"),
    };

    fn render(t: &str, r: &Req) -> Result<String, String> {
        Template::parse(t)?.render(r)
    }

    #[test]
    fn fills_placeholders() {
        assert_eq!(render("/static", &REQ).unwrap(), "/static");
        assert_eq!(
            render("/api{path}?{query}", &REQ).unwrap(),
            "/api/me/42?page=2"
        );
        assert_eq!(render("/orders/{segment.1}", &REQ).unwrap(), "/orders/42");
        assert_eq!(
            render("/users/{header.x-user}", &REQ).unwrap(),
            "/users/al%2Fice"
        );
        let no_query = Req { query: None, ..REQ };
        assert_eq!(render("/o?{query}", &no_query).unwrap(), "/o");
        assert_eq!(render("/o?a=1&{query}", &no_query).unwrap(), "/o?a=1");
    }

    #[test]
    fn missing_values_are_errors_naming_them() {
        let anon = Req { user: None, ..REQ };
        assert_eq!(
            render("/u/{header.x-user}", &anon).unwrap_err(),
            "missing header x-user"
        );
        assert_eq!(
            render("/u/{segment.5}", &REQ).unwrap_err(),
            "the path has no segment 5"
        );
        let dots = Req {
            user: Some(".."),
            ..REQ
        };
        assert_eq!(render("/u/{header.x-user}", &dots).unwrap(), "/u/%2E%2E");
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(
            Template::parse("users")
                .unwrap_err()
                .contains("must start with `/`")
        );
        assert!(
            Template::parse("/u/{nope}")
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(Template::parse("/u/{path").unwrap_err().contains("without"));
        assert!(Template::parse("/u/}").unwrap_err().contains("without"));
        assert!(
            Template::parse("/u/{segment.x}")
                .unwrap_err()
                .contains("number")
        );
        assert!(
            Template::parse("/u/{header.X-User}")
                .unwrap_err()
                .contains("lower case")
        );
        assert!(Template::parse("/u v").is_err());
    }
}
