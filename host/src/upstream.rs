//! Upstreams: named groups of weighted targets. Each plain `http://`
//! HTTP/1.1 target has a connection pool of its own ([`pool`]); TLS and h2c
//! targets share the upstream's hyper-util client.
//!
//! A request [`Upstream::admit`]s itself (the concurrency limit: over it the
//! answer is 503), then [`Upstream::pick`]s a target by the configured
//! [`Balance`], skipping targets that active health checks ([`health`]) or
//! passive ejection took out. When every target is out, all are tried
//! anyway ("panic mode"): never worse than no health checking. Each exchange
//! is [`Upstream::report`]ed, which drives passive ejection; retries spend
//! from a budget refilled by a share of requests.

pub mod echo;
mod health;
mod pick;
pub mod pool;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::HeaderName;
use http::uri::{Authority, Scheme};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::error::GatewayError;

pub use health::HealthCheck;

/// Where a request can go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The built-in echo server (`builtin:echo`).
    Echo,
    /// An `http://` or `https://` origin.
    Http {
        /// `https://`: TLS, with HTTP/2 or HTTP/1.1 by ALPN.
        tls: bool,
        /// `host:port`.
        authority: Authority,
    },
}

impl Target {
    /// Parses `builtin:echo` or `http[s]://host[:port]` (nothing after the authority).
    pub fn parse(s: &str) -> Result<Target, String> {
        if s == "builtin:echo" {
            return Ok(Target::Echo);
        }
        let uri: http::Uri = s
            .parse()
            .map_err(|e| format!("`{s}` is not a valid URL: {e}"))?;
        let tls = match uri.scheme() {
            Some(s) if *s == Scheme::HTTP => false,
            Some(s) if *s == Scheme::HTTPS => true,
            _ => {
                return Err(format!(
                    "`{s}`: targets are `http://`, `https://` URLs or `builtin:echo`"
                ));
            }
        };
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(format!(
                "`{s}`: a target is `http://host:port` with no path"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{s}` has no host"))?;
        Ok(Target::Http { tls, authority })
    }

    /// `http://host:port` or `https://host:port`; empty for `builtin:echo`.
    pub fn base_url(&self) -> String {
        match self {
            Target::Echo => String::new(),
            Target::Http { tls, authority } => {
                format!("{}://{authority}", if *tls { "https" } else { "http" })
            }
        }
    }
}

impl std::fmt::Display for Target {
    /// How a target is named in labels and logs: `host:port`, `https://host:port`, `builtin:echo`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Echo => f.write_str("builtin:echo"),
            Target::Http {
                tls: false,
                authority,
            } => write!(f, "{authority}"),
            Target::Http {
                tls: true,
                authority,
            } => write!(f, "https://{authority}"),
        }
    }
}

/// How a target is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Weighted round robin (smooth: weights 3 and 1 give a a b a, not a a a b).
    RoundRobin,
    /// Power of two choices: the less busy (in-flight / weight) of two drawn at random.
    LeastRequest,
    /// A ring of virtual nodes: a key keeps its target while that target is available.
    ConsistentHash(HashOn),
}

/// What a consistent hash is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// The client's IP address.
    ClientIp,
    /// A request header (requests without it are balanced round robin).
    Header(HeaderName),
}

/// Passive ejection: consecutive failed exchanges take a target out for a while.
#[derive(Debug, Clone, Copy)]
pub struct Passive {
    /// Failures in a row that eject (0: never).
    pub consecutive_failures: u32,
    /// How long an ejected target is skipped.
    pub ejection: Duration,
}

/// An upstream's settings, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time to open a connection.
    pub connect_timeout: Duration,
    /// Time from sending a request to its response head.
    pub request_timeout: Duration,
    /// How long an unused pooled connection is kept.
    pub idle_timeout: Duration,
    /// How targets are chosen.
    pub balance: Balance,
    /// Extra attempts after a connect failure (idempotent requests without a body).
    pub retries: u32,
    /// Retries allowed as a share of requests.
    pub retry_budget: f64,
    /// Requests in flight allowed; more get 503.
    pub max_requests: usize,
    /// HTTP/2 with prior knowledge to `http://` targets.
    pub h2c: bool,
    /// TLS settings for `https://` targets (roots to trust).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Where `tls` trusts come from (`system`, `ca:<sha256>`), to tell configs apart.
    pub roots: Option<String>,
    /// Active health checks.
    pub health: Option<HealthCheck>,
    /// Passive ejection.
    pub passive: Passive,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            balance: Balance::RoundRobin,
            retries: 1,
            retry_budget: 0.2,
            max_requests: 1024,
            h2c: false,
            tls: None,
            roots: None,
            health: None,
            passive: Passive {
                consecutive_failures: 5,
                ejection: Duration::from_secs(30),
            },
        }
    }
}

/// The client every upstream uses: plain HTTP or rustls.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// A target with its weight and live state.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it is.
    pub target: Target,
    /// `http[s]://host:port`, built once.
    pub base_url: String,
    /// The pool of plain HTTP/1.1 targets; `None` for TLS, h2c and `builtin:echo`
    /// (TLS and h2c go through the upstream's shared client).
    pub pool: Option<Arc<pool::Pool>>,
    /// Its share relative to the others.
    pub weight: u32,
    /// `false` while active health checks say it is down.
    healthy: AtomicBool,
    /// Until when (ms since the upstream's epoch) passive ejection skips it.
    ejected_until: AtomicU64,
    /// Failed exchanges in a row.
    failures: AtomicU32,
    /// Exchanges in flight (least-request balancing).
    in_flight: AtomicUsize,
    /// Health-check results in a row (passes, failures).
    checks: (AtomicU32, AtomicU32),
}

impl Endpoint {
    /// Whether active health checks currently count it as up.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Exchanges in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// What goes before the path in a request's URI: nothing for a pooled
    /// target (origin form), the base URL for the shared client.
    pub fn uri_base(&self) -> &str {
        if self.pool.is_some() {
            ""
        } else {
            &self.base_url
        }
    }
}

/// A resolved upstream.
pub struct Upstream {
    /// Its name (or the literal target, for a route's inline upstream).
    pub name: String,
    endpoints: Vec<Endpoint>,
    targets: Vec<Target>,
    /// The settings it was built with.
    pub settings: Settings,
    picker: pick::Picker,
    in_flight: AtomicUsize,
    /// Retry budget, in thousandths of a retry.
    retry_milli: AtomicI64,
    epoch: Instant,
    fingerprint: String,
    /// The shared client: TLS and h2c targets, and health checks.
    pub client: HttpClient,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("targets", &self.targets)
            .finish()
    }
}

/// Most retries the budget can hold (also its initial balance).
const RETRY_BUDGET_CAP: i64 = 10;

impl Upstream {
    /// A new upstream with its own connection pool. With active health checks
    /// configured it starts checking at once (this needs a tokio runtime);
    /// the checks stop when the upstream is dropped.
    pub fn new(name: String, targets: Vec<(Target, u32)>, settings: Settings) -> Arc<Upstream> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = settings.tls.clone().unwrap_or_else(no_roots);
        // `https://` targets offer h2 and http/1.1 by ALPN.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let mut client = Client::builder(TokioExecutor::new());
        client
            .pool_idle_timeout(settings.idle_timeout)
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        if settings.h2c {
            client.http2_only(true);
        }
        let client = client.build(connector);
        let endpoints: Vec<Endpoint> = targets
            .iter()
            .map(|(t, w)| Endpoint {
                target: t.clone(),
                base_url: t.base_url(),
                pool: match t {
                    Target::Http {
                        tls: false,
                        authority,
                    } if !settings.h2c => Some(Arc::new(pool::Pool::new(
                        authority,
                        settings.connect_timeout,
                        settings.idle_timeout,
                    ))),
                    _ => None,
                },
                weight: (*w).max(1),
                healthy: AtomicBool::new(true),
                ejected_until: AtomicU64::new(0),
                failures: AtomicU32::new(0),
                in_flight: AtomicUsize::new(0),
                checks: Default::default(),
            })
            .collect();
        let picker = pick::Picker::new(&endpoints, &settings.balance);
        let fingerprint = fingerprint(&targets, &settings);
        let up = Arc::new(Upstream {
            name,
            targets: targets.into_iter().map(|(t, _)| t).collect(),
            endpoints,
            picker,
            in_flight: AtomicUsize::new(0),
            retry_milli: AtomicI64::new(RETRY_BUDGET_CAP * 1000),
            epoch: Instant::now(),
            fingerprint,
            client,
            settings,
        });
        if let Some(check) = up.settings.health.clone()
            && up.targets.iter().any(|t| matches!(t, Target::Http { .. }))
        {
            tokio::spawn(health::run(Arc::downgrade(&up), check));
        }
        up
    }

    /// What it was built from; equal fingerprints mean interchangeable upstreams.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// All targets, in manifest order.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// All targets with their weights and state.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Takes a place under `max_requests`, or refuses with 503. The place is
    /// held until the returned guard (usually moved into the response body)
    /// is dropped.
    pub fn admit(self: &Arc<Self>) -> Result<Admitted, GatewayError> {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let admitted = Admitted {
            upstream: self.clone(),
            target: None,
        };
        if before >= self.settings.max_requests {
            return Err(GatewayError::UpstreamOverloaded(self.name.clone()));
        }
        // Refill the retry budget by its share of every request.
        let deposit = (self.settings.retry_budget * 1000.0) as i64;
        let cap = RETRY_BUDGET_CAP * 1000;
        let _ = self
            .retry_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b < cap).then(|| (b + deposit).min(cap))
            });
        Ok(admitted)
    }

    /// Spends one retry from the budget; `false` when it is empty.
    pub fn take_retry(&self) -> bool {
        self.retry_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= 1000).then_some(b - 1000)
            })
            .is_ok()
    }

    /// The target for a request with consistent-hash `key`, avoiding the
    /// targets in `tried` when another is available.
    pub fn pick(&self, key: Option<u64>, tried: &[usize]) -> usize {
        let now = self.now_ms();
        let usable = |i: usize| !tried.contains(&i) && self.available(i, now);
        self.picker
            .pick(&self.endpoints, key, usable)
            // Panic mode: everything is out, so try what has not been tried.
            .or_else(|| {
                self.picker
                    .pick(&self.endpoints, None, |i| !tried.contains(&i))
            })
            .unwrap_or_else(|| {
                self.picker
                    .pick(&self.endpoints, None, |_| true)
                    .unwrap_or(0)
            })
    }

    /// The consistent-hash key of a request, if the upstream hashes.
    pub fn hash_key(&self, client: std::net::IpAddr, headers: &http::HeaderMap) -> Option<u64> {
        match &self.settings.balance {
            Balance::ConsistentHash(HashOn::ClientIp) => Some(match client {
                std::net::IpAddr::V4(a) => pick::hash(&a.octets()),
                std::net::IpAddr::V6(a) => pick::hash(&a.octets()),
            }),
            Balance::ConsistentHash(HashOn::Header(name)) => {
                headers.get(name).map(|v| pick::hash(v.as_bytes()))
            }
            _ => None,
        }
    }

    /// Marks an exchange with target `i` as started (for least-request).
    pub fn begin(&self, admitted: &mut Admitted, i: usize) {
        if let Some(old) = admitted.target.replace(i) {
            self.endpoints[old]
                .in_flight
                .fetch_sub(1, Ordering::Relaxed);
        }
        self.endpoints[i].in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how an exchange with target `i` went; enough failures in a
    /// row eject the target for `[passive] ejection`.
    pub fn report(&self, i: usize, ok: bool) {
        let ep = &self.endpoints[i];
        if ok {
            ep.failures.store(0, Ordering::Relaxed);
            return;
        }
        let p = self.settings.passive;
        let n = ep.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if p.consecutive_failures > 0 && n >= p.consecutive_failures {
            ep.failures.store(0, Ordering::Relaxed);
            let until = self.now_ms() + p.ejection.as_millis() as u64;
            ep.ejected_until.store(until, Ordering::Relaxed);
            tracing::warn!(upstream = %self.name, target = %ep.target, failures = n, ejection = ?p.ejection, "target ejected after consecutive failures");
        }
    }

    /// Whether target `i` is neither down nor ejected.
    pub fn available(&self, i: usize, now_ms: u64) -> bool {
        let ep = &self.endpoints[i];
        ep.healthy() && ep.ejected_until.load(Ordering::Relaxed) <= now_ms
    }

    /// Whether passive ejection is skipping target `i` now.
    pub fn ejected(&self, i: usize) -> bool {
        self.endpoints[i].ejected_until.load(Ordering::Relaxed) > self.now_ms()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// One exchange with target `endpoint`, whatever kind it is (the demo
    /// echo, a pooled HTTP/1.1 target, or the shared client's TLS and h2c
    /// ones). No timeout: callers set their own.
    pub async fn exchange(
        &self,
        endpoint: &Endpoint,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, ExchangeError> {
        use http_body_util::BodyExt;
        let target = &endpoint.target;
        match (target, &endpoint.pool) {
            (Target::Echo, _) => echo::respond(req).await.map_err(ExchangeError::Failed),
            (_, Some(pool)) => match pool.send(req).await {
                Err(pool::Error::Connect(e)) => {
                    Err(ExchangeError::Connect(format!("{target}: {e}")))
                }
                Err(pool::Error::Exchange(e)) => Err(ExchangeError::Failed(Box::new(e))),
                Ok(resp) => {
                    Ok(resp.map(|b| b.map_err(|e| Box::new(e) as crate::body::BoxError).boxed()))
                }
            },
            (Target::Http { .. }, None) => match self.client.request(req).await {
                Err(e) if e.is_connect() => Err(ExchangeError::Connect(format!(
                    "{target}: {}",
                    crate::error::chain(&e)
                ))),
                Err(e) => Err(ExchangeError::Failed(Box::new(e))),
                Ok(resp) => {
                    Ok(resp.map(|b| b.map_err(|e| Box::new(e) as crate::body::BoxError).boxed()))
                }
            },
        }
    }
}

/// How one exchange with a target failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// No connection could be made (retryable on another target).
    Connect(String),
    /// The exchange failed after connecting (or the request body failed).
    Failed(crate::body::BoxError),
}

/// A request's place under an upstream's `max_requests` (and its target's
/// in-flight count); released on drop.
#[derive(Debug)]
pub struct Admitted {
    upstream: Arc<Upstream>,
    target: Option<usize>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.upstream.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(i) = self.target {
            self.upstream.endpoints[i]
                .in_flight
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A summary of everything an upstream is built from (the TLS config by its `roots`).
pub fn fingerprint(targets: &[(Target, u32)], settings: &Settings) -> String {
    let without_tls = Settings {
        tls: None,
        ..settings.clone()
    };
    format!("{targets:?} {without_tls:?}")
}

/// A TLS client config trusting nothing, for upstreams without `https://` targets.
fn no_roots() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            Arc::new(
                client_config(rustls::RootCertStore::empty()).expect("ring supports the defaults"),
            )
        })
        .clone()
}

/// A rustls client config trusting `roots` (ring provider, safe defaults).
pub fn client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, rustls::Error> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// Roots from a PEM file of CA certificates, or the system's when `None`.
pub fn load_roots(ca: Option<&std::path::Path>) -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("`{}`: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("`{}`: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("`{}` holds no PEM certificate", path.display()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no system CA certificates found".into());
            }
        }
    }
    Ok(roots)
}
