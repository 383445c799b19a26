//! The Redis backend: several gateways pointed at one Redis share every
//! plugin's windows and buckets.
//!
//! Each operation is one Lua script, so one round trip and atomic on the
//! server; time is the server's (`TIME`), so gateways with skewed clocks
//! still agree on windows and refills. Keys are `{prefix}:{plugin}:{key}`
//! (plugin names cannot hold `:`), and expire when back at their initial
//! value, as the in-memory store drops them.
//!
//! A round trip that fails or takes longer than `[state] timeout` marks the
//! backend down (logged once); while it is down, calls do not wait for it:
//! fail-open plugins count in [`RedisBackend`]'s own local stores, fail-closed
//! ones trap. A probe (`PING` every [`PROBE_EVERY`]) marks it up again
//! (logged once), so recovery needs no restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Script};

use super::memory::SharedState;
use crate::plugin::bindings::weir::plugin::state::{Bucket, TakeResult, WindowCount};
use crate::telemetry::metrics::StateBackendMetrics;

/// How often a probe checks the backend, up or down.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Longest window sent to Redis (about 35 years): keeps the script's
/// millisecond arithmetic exact in Lua's doubles.
const MAX_WINDOW_MS: u64 = 1 << 40;

/// Adds `ARGV[1]` in the fixed window of `ARGV[2]` ms containing the
/// server's now; returns `{count, ms until the window resets}`.
static INCR_WINDOW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local w = tonumber(ARGV[2])
local start = now - now % w
local h = redis.call('HMGET', KEYS[1], 's', 'w')
local c
if tonumber(h[1]) == start and h[2] == ARGV[2] then
  c = redis.call('HINCRBY', KEYS[1], 'c', ARGV[1])
else
  redis.call('HSET', KEYS[1], 's', start, 'w', ARGV[2], 'c', ARGV[1])
  redis.call('PEXPIREAT', KEYS[1], start + w)
  c = tonumber(ARGV[1])
end
return {c, start + w - now}
",
    )
});

/// Takes `ARGV[3]` tokens from a bucket of capacity `ARGV[1]` refilling
/// `ARGV[2]` per second (a changed shape starts a fresh, full bucket);
/// returns `{allowed, whole tokens left, retry-after ms, reset ms}`, -1
/// meaning never.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local cap, rate, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 't', 'l', 'c', 'r')
local tokens, last = tonumber(h[1]), tonumber(h[2])
if tokens == nil or h[3] ~= ARGV[1] or h[4] ~= ARGV[2] then
  tokens, last = cap, now
end
tokens = math.min(cap, tokens + math.max(0, now - last) / 1000 * rate)
last = math.max(last, now)
local allowed = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
end
local function ms_until(target)
  if tokens >= target then return 0 end
  if rate <= 0 then return -1 end
  return math.floor((target - tokens) / rate * 1000) + 1
end
local reset = ms_until(cap)
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'l', last, 'c', ARGV[1], 'r', ARGV[2])
if reset > 0 then
  redis.call('PEXPIRE', KEYS[1], reset)
elseif reset == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('PERSIST', KEYS[1])
end
local retry = 0
if allowed == 0 then retry = ms_until(cost) end
return {allowed, math.floor(tokens), retry, reset}
",
    )
});

/// `[state]` with a Redis URL, resolved.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// The URL as written (it never holds a password).
    pub url: String,
    /// The password, read from `password_env` at load.
    pub password: Option<String>,
    /// Longest wait for one round trip.
    pub timeout: Duration,
    /// First part of every key.
    pub prefix: String,
    /// PEM CA certificates trusted for `rediss://`; the system's roots when `None`.
    pub ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .field("prefix", &self.prefix)
            .field("ca", &self.ca.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

/// Why a state call could not reach the shared backend.
#[derive(Debug, Clone, thiserror::Error)]
#[error("state backend {backend} is unreachable: {why}")]
pub struct StateUnavailable {
    /// The backend's URL.
    pub backend: String,
    /// What failed.
    pub why: String,
}

/// A connection to one Redis, its health, and the local stores fail-open
/// plugins use while it is down. Shared by every snapshot of a gateway whose
/// `[state]` did not change.
pub struct RedisBackend {
    settings: RedisSettings,
    conn: ConnectionManager,
    up: AtomicBool,
    fallback: SharedState,
    metrics: StateBackendMetrics,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.settings.url)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// A backend for `settings`; connects lazily (a load never waits for
    /// Redis) and starts its probe, which ends when the backend is dropped.
    /// Needs a tokio runtime.
    pub fn new(
        settings: RedisSettings,
        metrics: StateBackendMetrics,
    ) -> Result<Arc<RedisBackend>, String> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(settings.url.as_str())
            .map_err(|e| format!("invalid Redis URL `{}`: {e}", settings.url))?;
        if let Some(p) = &settings.password {
            let redis = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(redis);
        }
        let client = match &settings.ca {
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(|e| e.to_string())?;
        // Few, quick reconnect attempts: callers never wait past `timeout`
        // anyway, and the probe keeps trying.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())?;
        metrics.set_up(true);
        let backend = Arc::new(RedisBackend {
            settings,
            conn,
            up: AtomicBool::new(true),
            fallback: SharedState::default(),
            metrics,
        });
        tokio::spawn(probe(Arc::downgrade(&backend)));
        Ok(backend)
    }

    /// The settings it was made from.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Whether the last round trip or probe succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The local stores fail-open plugins count in while it is down.
    pub(super) fn fallback(&self) -> &SharedState {
        &self.fallback
    }

    /// Counts one call served from local state.
    pub(super) fn fell_back(&self) {
        self.metrics.fell_back();
    }

    /// The error a call gets while the backend is marked down.
    pub(super) fn down(&self) -> StateUnavailable {
        self.unavailable("down since a failed round trip; waiting for a probe to succeed")
    }

    fn unavailable(&self, why: impl Into<String>) -> StateUnavailable {
        StateUnavailable {
            backend: self.settings.url.clone(),
            why: why.into(),
        }
    }

    /// The key of `plugin`'s `key` on the server.
    pub(super) fn key_prefix(&self, plugin: &str) -> String {
        format!("{}:{plugin}:", self.settings.prefix)
    }

    /// [`super::memory::PluginStore::incr_window`] on the server.
    pub(super) async fn incr_window(
        &self,
        key: &str,
        delta: u64,
        window_ms: u64,
    ) -> Result<WindowCount, StateUnavailable> {
        let window_ms = window_ms.clamp(1, MAX_WINDOW_MS);
        let mut call = INCR_WINDOW.key(key);
        call.arg(delta).arg(window_ms);
        let (count, reset_ms): (u64, u64) =
            self.round_trip(call.invoke_async(&mut self.conn())).await?;
        Ok(WindowCount { count, reset_ms })
    }

    /// [`super::memory::PluginStore::take`] on the server.
    pub(super) async fn take(
        &self,
        key: &str,
        bucket: Bucket,
        cost: u32,
    ) -> Result<TakeResult, StateUnavailable> {
        let rate = if bucket.refill_per_sec.is_finite() {
            bucket.refill_per_sec.max(0.0)
        } else {
            0.0
        };
        let mut call = TAKE.key(key);
        // `{rate:?}` prints a float exactly as Lua's `tonumber` reads it back.
        call.arg(bucket.capacity).arg(format!("{rate:?}")).arg(cost);
        let (allowed, remaining, retry, reset): (i64, i64, i64, i64) =
            self.round_trip(call.invoke_async(&mut self.conn())).await?;
        let ms = |v: i64| u64::try_from(v).unwrap_or(u64::MAX);
        Ok(TakeResult {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            retry_after_ms: ms(retry),
            reset_ms: ms(reset),
        })
    }

    /// [`super::memory::PluginStore::cache_get`] on the server.
    pub(crate) async fn cache_get(&self, key: &str) -> Result<Option<Vec<u8>>, StateUnavailable> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        self.round_trip(cmd.query_async(&mut self.conn())).await
    }

    /// [`super::memory::PluginStore::cache_set`] on the server (its own
    /// `maxmemory` policy bounds it there).
    pub(crate) async fn cache_set(
        &self,
        key: &str,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<(), StateUnavailable> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("PX").arg(ttl_ms.max(1));
        self.round_trip(cmd.query_async::<()>(&mut self.conn()))
            .await
    }

    /// [`super::memory::PluginStore::cache_delete`] on the server.
    pub(crate) async fn cache_delete(&self, key: &str) -> Result<(), StateUnavailable> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(key);
        self.round_trip(cmd.query_async::<()>(&mut self.conn()))
            .await
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Awaits one round trip under `timeout`, timing and counting it; a
    /// failure marks the backend down.
    async fn round_trip<T: FromRedisValue>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StateUnavailable> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.settings.timeout, call).await;
        self.metrics.round_trip(started.elapsed());
        let why = match result {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if e.is_timeout() => {
                self.metrics.error("timeout");
                format!("no answer within {:?}", self.settings.timeout)
            }
            Ok(Err(e)) => {
                self.metrics.error("error");
                e.to_string()
            }
            Err(_) => {
                self.metrics.error("timeout");
                format!("no answer within {:?}", self.settings.timeout)
            }
        };
        self.mark_down(&why);
        Err(self.unavailable(why))
    }

    fn mark_down(&self, why: &str) {
        if self.up.swap(false, Ordering::Relaxed) {
            self.metrics.set_up(false);
            tracing::warn!(
                target: "weir::state",
                backend = %self.settings.url,
                error = why,
                "state backend unreachable: plugins with state_failure = \"open\" count in local memory, \"closed\" ones fail, until it answers again"
            );
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.metrics.set_up(true);
            tracing::info!(target: "weir::state", backend = %self.settings.url, "state backend reachable again: shared state resumes");
        }
    }
}

/// Pings the backend every [`PROBE_EVERY`] while it exists, marking it up or down.
async fn probe(backend: Weak<RedisBackend>) {
    let mut every = tokio::time::interval(PROBE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(b) = backend.upgrade() else { return };
        let mut conn = b.conn();
        let ping = tokio::time::timeout(
            b.settings.timeout,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        match ping {
            Ok(Ok(_)) => b.mark_up(),
            Ok(Err(e)) => {
                b.metrics.error("error");
                b.mark_down(&e.to_string());
            }
            Err(_) => {
                b.metrics.error("timeout");
                b.mark_down(&format!("no answer within {:?}", b.settings.timeout));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The scripts against a real `redis-server` (started on a free port),
    //! beside the in-memory store doing the same.

    use std::process::{Command, Stdio};

    use super::*;
    use crate::plugin::host::state::memory::{PluginStore, Quota};
    use crate::telemetry::metrics::Metrics;

    const ROOMY: Quota = Quota {
        entries: 100,
        bytes: 1 << 20,
    };

    struct Server(std::process::Child, u16);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn redis_server() -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir", "/tmp"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): `apt-get install -y redis-server`")
            });
        // Owned first, so a panic below still kills and reaps it.
        let server = Server(child, port);
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server does not listen on {port}");
    }

    fn backend(server: &Server) -> Arc<RedisBackend> {
        let settings = RedisSettings {
            url: format!("redis://127.0.0.1:{}/0", server.1),
            password: None,
            timeout: Duration::from_secs(2),
            prefix: "unit".into(),
            ca: None,
        };
        RedisBackend::new(settings, Metrics::new().state_backend("unit")).unwrap()
    }

    #[tokio::test]
    async fn windows_and_buckets_on_redis_answer_as_in_memory() {
        let server = redis_server();
        let redis = backend(&server);
        let memory = PluginStore::default();

        for delta in [1, 2, 0, 5] {
            let r = redis.incr_window("unit:p:w", delta, 60_000).await.unwrap();
            let m = memory
                .incr_window("w".into(), delta, 60_000, ROOMY)
                .unwrap();
            assert_eq!(r.count, m.count);
            assert!(r.reset_ms <= 60_000 && r.reset_ms > 0, "{}", r.reset_ms);
        }
        // Another window length starts afresh.
        let r = redis.incr_window("unit:p:w", 1, 30_000).await.unwrap();
        assert_eq!(r.count, 1);

        let b = Bucket {
            capacity: 3,
            refill_per_sec: 1.0,
        };
        for _ in 0..4 {
            let r = redis.take("unit:p:b", b, 1).await.unwrap();
            let m = memory.take("b".into(), b, 1, ROOMY).unwrap();
            assert_eq!((r.allowed, r.remaining), (m.allowed, m.remaining));
        }
        let r = redis.take("unit:p:b", b, 1).await.unwrap();
        assert!(!r.allowed);
        assert!(
            r.retry_after_ms > 0 && r.retry_after_ms <= 1001,
            "{}",
            r.retry_after_ms
        );
        assert!(r.reset_ms > 2000 && r.reset_ms <= 3001, "{}", r.reset_ms);

        // A bucket that never refills says so, and a changed shape starts full.
        let never = Bucket {
            capacity: 1,
            refill_per_sec: 0.0,
        };
        assert!(redis.take("unit:p:n", never, 1).await.unwrap().allowed);
        let r = redis.take("unit:p:n", never, 1).await.unwrap();
        assert_eq!(
            (r.allowed, r.retry_after_ms, r.reset_ms),
            (false, u64::MAX, u64::MAX)
        );
        let bigger = Bucket {
            capacity: 2,
            refill_per_sec: 0.0,
        };
        assert_eq!(
            redis.take("unit:p:n", bigger, 1).await.unwrap().remaining,
            1
        );
    }

    #[tokio::test]
    async fn a_dead_redis_is_an_error_within_the_timeout_and_marks_the_backend_down() {
        let server = redis_server();
        let redis = backend(&server);
        redis.incr_window("unit:p:d", 1, 1000).await.unwrap();
        assert!(redis.is_up());
        drop(server);
        let e = redis.incr_window("unit:p:d", 1, 1000).await.unwrap_err();
        assert!(e.to_string().contains("is unreachable"), "{e}");
        assert!(!redis.is_up());
    }
}
