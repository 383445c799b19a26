//! Upstreams: named groups of targets, picked round robin, reached through a
//! pooled keep-alive client; plus the built-in demo upstream.

pub mod echo;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;

/// Where a request can go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The built-in echo server (`builtin:echo`).
    Echo,
    /// An `http://host:port` origin.
    Http(Authority),
}

impl Target {
    /// Parses `builtin:echo` or `http://host[:port]` (nothing after the authority).
    pub fn parse(s: &str) -> Result<Target, String> {
        if s == "builtin:echo" {
            return Ok(Target::Echo);
        }
        let uri: http::Uri = s
            .parse()
            .map_err(|e| format!("`{s}` is not a valid URL: {e}"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(format!(
                "`{s}`: only `http://` targets and `builtin:echo` are supported"
            ));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(format!(
                "`{s}`: a target is `http://host:port` with no path"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{s}` has no host"))?;
        Ok(Target::Http(authority))
    }
}

/// A resolved upstream.
pub struct Upstream {
    /// Its name (or the literal target, for a route's inline upstream).
    pub name: String,
    targets: Vec<Target>,
    next: AtomicUsize,
    /// Time allowed from sending the request to the response head.
    pub request_timeout: Duration,
    /// The pooled client.
    pub client: Client<HttpConnector, Body>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("targets", &self.targets)
            .finish()
    }
}

impl Upstream {
    /// A new upstream with its own connection pool.
    pub fn new(
        name: String,
        targets: Vec<Target>,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Upstream {
            name,
            targets,
            next: AtomicUsize::new(0),
            request_timeout,
            client,
        }
    }

    /// The next target, round robin.
    pub fn pick(&self) -> &Target {
        self.pick_indexed().1
    }

    /// The next target and its index in [`Upstream::targets`], round robin.
    pub fn pick_indexed(&self) -> (usize, &Target) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len();
        (i, &self.targets[i])
    }

    /// All targets.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }
}
