//! Route matching: host, then path (exact or segment-wise prefix), then
//! method. The most specific route wins: an exact host beats a wildcard beats
//! any host; then the longest path; an exact path beats a prefix of the same length.

use std::sync::Arc;

use http::Method;

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path equals this.
    Exact(String),
    /// The path equals this or continues with `/` after it (`/api` matches
    /// `/api` and `/api/x`, not `/apix`). A prefix ending in `/` matches anything below it.
    Prefix(String),
}

impl PathMatch {
    /// Whether `path` (normalised) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (p.ends_with('/')
                        || path.len() == p.len()
                        || path.as_bytes()[p.len()] == b'/')
            }
        }
    }

    fn rank(&self) -> (usize, u8) {
        match self {
            PathMatch::Exact(p) => (p.len(), 1),
            PathMatch::Prefix(p) => (p.len(), 0),
        }
    }
}

/// How a route matches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Any host.
    Any,
    /// This host, lower case, without port.
    Exact(String),
    /// Any subdomain of this suffix (stored with its leading dot: `.example.com`).
    Wildcard(String),
}

impl HostMatch {
    fn matches(&self, host: Option<&str>) -> bool {
        match (self, host) {
            (HostMatch::Any, _) => true,
            (HostMatch::Exact(h), Some(host)) => h == host,
            (HostMatch::Wildcard(suffix), Some(host)) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
            _ => false,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            HostMatch::Any => 0,
            HostMatch::Wildcard(_) => 1,
            HostMatch::Exact(_) => 2,
        }
    }
}

/// One entry in the routing table.
#[derive(Debug)]
pub struct RouteRule<T> {
    /// Host condition.
    pub host: HostMatch,
    /// Path condition.
    pub path: PathMatch,
    /// Allowed methods; empty means any.
    pub methods: Vec<Method>,
    /// What the route leads to.
    pub target: Arc<T>,
}

/// A routing table, sorted most specific first.
#[derive(Debug)]
pub struct Router<T> {
    rules: Vec<RouteRule<T>>,
}

impl<T> Router<T> {
    /// Builds the table; order of `rules` only breaks exact ties (first wins).
    pub fn new(mut rules: Vec<RouteRule<T>>) -> Self {
        // Stable sort keeps manifest order among equals.
        rules.sort_by(|a, b| {
            let ka = (a.host.rank(), a.path.rank(), !a.methods.is_empty());
            let kb = (b.host.rank(), b.path.rank(), !b.methods.is_empty());
            kb.cmp(&ka)
        });
        Router { rules }
    }

    /// The rules, most specific first.
    pub fn rules(&self) -> &[RouteRule<T>] {
        &self.rules
    }

    /// The best route for a request. `host` must be lower case without port.
    /// `Err(true)` means a route matched host and path but not the method.
    /// `CONNECT` and `TRACE` match only a route that lists them: a gateway
    /// does not tunnel or reflect requests unless told to.
    pub fn find(&self, host: Option<&str>, path: &str, method: &Method) -> Result<&Arc<T>, bool> {
        let mut method_mismatch = false;
        let opt_in = *method == Method::CONNECT || *method == Method::TRACE;
        for rule in &self.rules {
            if rule.host.matches(host) && rule.path.matches(path) {
                if (rule.methods.is_empty() && !opt_in) || rule.methods.contains(method) {
                    return Ok(&rule.target);
                }
                method_mismatch = true;
            }
        }
        Err(method_mismatch)
    }
}

/// Lower-cases a `Host`/authority value and strips its port.
pub fn host_of(authority: &str) -> String {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content.
        rest.split(']').next().unwrap_or(rest)
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(host: HostMatch, path: PathMatch, name: &'static str) -> RouteRule<&'static str> {
        RouteRule {
            host,
            path,
            methods: vec![],
            target: Arc::new(name),
        }
    }

    #[test]
    fn longest_and_most_specific_match_wins() {
        let r = Router::new(vec![
            rule(HostMatch::Any, PathMatch::Prefix("/".into()), "root"),
            rule(HostMatch::Any, PathMatch::Prefix("/api".into()), "api"),
            rule(HostMatch::Any, PathMatch::Prefix("/api/v2".into()), "v2"),
            rule(HostMatch::Any, PathMatch::Exact("/api".into()), "api-exact"),
            rule(
                HostMatch::Exact("a.test".into()),
                PathMatch::Prefix("/".into()),
                "host-a",
            ),
            rule(
                HostMatch::Wildcard(".w.test".into()),
                PathMatch::Prefix("/".into()),
                "wild",
            ),
        ]);
        let get = |h: Option<&str>, p: &str| **r.find(h, p, &Method::GET).unwrap();
        assert_eq!(get(None, "/x"), "root");
        assert_eq!(get(None, "/api"), "api-exact");
        assert_eq!(get(None, "/api/x"), "api");
        assert_eq!(get(None, "/apix"), "root");
        assert_eq!(get(None, "/api/v2/y"), "v2");
        assert_eq!(get(Some("a.test"), "/api/v2"), "host-a");
        assert_eq!(get(Some("x.w.test"), "/"), "wild");
        assert_eq!(get(Some("w.test"), "/"), "root");
    }

    #[test]
    fn method_mismatch_is_reported() {
        let mut only_post = rule(HostMatch::Any, PathMatch::Prefix("/p".into()), "p");
        only_post.methods = vec![Method::POST];
        let r = Router::new(vec![only_post]);
        assert!(r.find(None, "/p", &Method::POST).is_ok());
        assert!(r.find(None, "/p", &Method::GET).unwrap_err());
        assert!(!r.find(None, "/q", &Method::GET).unwrap_err());
    }

    #[test]
    fn host_of_strips_port_and_case() {
        assert_eq!(host_of("API.Example.com:8080"), "api.example.com");
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("example.com."), "example.com");
    }
}
