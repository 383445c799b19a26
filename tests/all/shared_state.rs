//! Host state on Redis (`[state] backend = "redis://..."`), through real
//! gateways and a real `redis-server` started on a free port for each test:
//! one limit across two gateways, each plugin's keys apart, counters kept
//! across a hot swap, and what a Redis that stalls or dies does (fail open:
//! local counting, logged once; fail closed: 503) until it is back.
//!
//! The two gateways of a test run in this process, but each has its own
//! backend and local state: only Redis connects them.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{Resp, TestCa, TestGateway, Upstream, eventually, get_url, logs, plugin};

/// A `redis-server` of this test's own, without persistence.
struct Redis {
    port: u16,
    child: Child,
    /// Arguments of `redis-server` beyond the common ones.
    server: Vec<String>,
    /// Arguments `redis-cli` needs to reach it.
    cli: Vec<String>,
}

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        Self::start_with(port, vec!["--port".into(), port.to_string()], vec![])
    }

    /// TLS only, with `password`: `dir` holds `ca.pem`, `redis.pem`, `redis-key.pem`.
    fn start_tls(dir: &std::path::Path, password: &str) -> Redis {
        let port = free_port();
        let file = |name: &str| dir.join(name).display().to_string();
        let server = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &file("redis.pem"),
            "--tls-key-file",
            &file("redis-key.pem"),
            "--tls-ca-cert-file",
            &file("ca.pem"),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            password,
        ];
        let cli = [
            "--tls",
            "--cacert",
            &file("ca.pem"),
            "-a",
            password,
            "--no-auth-warning",
        ];
        let strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect();
        Self::start_with(port, strings(&server), strings(&cli))
    }

    fn start_with(port: u16, server: Vec<String>, cli: Vec<String>) -> Redis {
        let mut redis = Redis {
            port,
            child: Self::spawn(&server),
            server,
            cli,
        };
        redis.wait_ready();
        redis
    }

    fn spawn(server: &[String]) -> Child {
        Command::new("redis-server")
            .args(server)
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                "/tmp",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): these tests need a real Redis; \
                     install it with `apt-get install -y redis-server` (.ci/run does)"
                )
            })
    }

    fn wait_ready(&mut self) {
        for _ in 0..250 {
            if self.cli(&["PING"]) == "PONG" {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("redis-server on port {} exited: {status}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} does not answer PING", self.port);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis-cli` against this server; its output, trimmed.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(&self.cli)
            .args(args)
            .output()
            .expect("redis-cli (from the redis-tools package) is missing");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The keys the server holds under `pattern`, sorted.
    fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .cli(&["--scan", "--pattern", pattern])
            .lines()
            .map(str::to_string)
            .collect();
        keys.sort();
        keys
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} redis-server failed");
    }

    /// Stops answering without closing connections (SIGSTOP): a slow Redis.
    fn pause(&self) {
        self.signal("-STOP");
    }

    fn resume(&self) {
        self.signal("-CONT");
    }

    /// Dies (SIGKILL): connections reset, nothing listens on the port.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A fresh, empty server on the same port.
    fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.server);
        self.wait_ready();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free port")
        .port()
}

/// A manifest whose `[state]` is `redis`, with `body` after it.
fn on_redis(redis: &Redis, body: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[state]\nbackend = \"{}\"\n\n{body}",
        redis.url()
    )
}

/// `[plugins.NAME]`: the bundled rate-limit plugin, with `extra` keys.
fn limiter(name: &str, extra: &str) -> String {
    format!(
        "[plugins.{name}]\npath = \"{}\"\n{extra}\n\n",
        plugin("rate_limit")
    )
}

/// Route `id` at `prefix` to `upstream` through `chain`: (plugin, its config table) in order.
fn route(id: &str, prefix: &str, upstream: &str, chain: &[(&str, &str)]) -> String {
    let mut r =
        format!("[[routes]]\nid = \"{id}\"\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\n");
    for (name, config) in chain {
        r += &format!("[[routes.plugins]]\nname = \"{name}\"\nconfig = {config}\n");
    }
    r + "\n"
}

/// A GET that must be answered, whatever Redis does: a request hanging
/// past every timeout fails the test instead of hanging it.
async fn answered(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Resp {
    tokio::time::timeout(Duration::from_secs(10), gw.get_with(path, headers))
        .await
        .unwrap_or_else(|_| panic!("GET {path} hung while Redis was down"))
}

/// Log lines that mention this Redis and `what`.
fn logged(redis: &Redis, what: &str) -> usize {
    let url = redis.url();
    logs()
        .lines()
        .filter(|l| l.contains(&url) && l.contains(what))
        .count()
}

/// The value of the metric sample named `name` whose labels name this Redis (and `extra`).
async fn metric(gw: &TestGateway, redis: &Redis, name: &str, extra: &str) -> f64 {
    let text = get_url(&gw.admin_url("/metrics")).await.body;
    let backend = format!(r#"backend="{}""#, redis.url());
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(&backend) && l.contains(extra))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} sample for {backend} {extra} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_10_holds_across_two_gateways_sharing_one_redis() {
    let redis = Redis::start();
    let up = Upstream::start("u").await;
    let manifest = on_redis(
        &redis,
        &(limiter("limiter", "")
            + &route(
                "cluster",
                "/api",
                &up.url(),
                &[("limiter", "{ rate = 10, per = \"1h\", key = \"route\" }")],
            )),
    );
    let (a, b) = (
        TestGateway::start(&manifest).await,
        TestGateway::start(&manifest).await,
    );

    // 30 requests at once, 15 on each gateway: the bucket (10 tokens, refilled
    // 10 an hour) is one, on the server, and each token is taken once.
    let mut sent = Vec::new();
    for i in 0..30 {
        let gw = if i % 2 == 0 { &a } else { &b };
        sent.push(async move { answered(gw, "/api/x", &[]).await });
    }
    let answers = futures_util::future::join_all(sent).await;
    let mut remaining: Vec<u32> = answers
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.header("ratelimit-remaining").unwrap().parse().unwrap())
        .collect();
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        (0..10).collect::<Vec<_>>(),
        "exactly 10 accepted in all, each taking its own token"
    );
    assert!(
        answers.iter().all(|r| r.status == 200 || r.status == 429),
        "{:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(up.seen().len(), 10);
    // Each gateway refuses on its own now, with the shared count.
    for gw in [&a, &b] {
        let r = answered(gw, "/api/x", &[]).await;
        assert_eq!(r.status, 429);
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(
        redis.keys("weir:limiter:*").len(),
        1,
        "one bucket, in Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_plugins_with_the_same_keys_keep_their_state_apart_on_one_redis() {
    let redis = Redis::start();
    let up = Upstream::start("u").await;
    // Same plugin, same config, same route: the same key strings, twice.
    let config = "{ rate = 2, per = \"1h\", key = \"route\" }";
    let manifest = on_redis(
        &redis,
        &(limiter("limiter-a", "")
            + &limiter("limiter-b", "")
            + &route(
                "isolated",
                "/api",
                &up.url(),
                &[("limiter-a", config), ("limiter-b", config)],
            )),
    );
    let gw = TestGateway::start(&manifest).await;
    // One shared bucket would lose two tokens a request and refuse the second.
    for left in ["1", "0"] {
        let r = answered(&gw, "/api/x", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("ratelimit-remaining"), Some(left));
    }
    assert_eq!(answered(&gw, "/api/x", &[]).await.status, 429);
    let a = redis.keys("weir:limiter-a:*");
    let b = redis.keys("weir:limiter-b:*");
    assert_eq!((a.len(), b.len()), (1, 1), "{a:?} {b:?}");
    assert_eq!(
        a[0].strip_prefix("weir:limiter-a:"),
        b[0].strip_prefix("weir:limiter-b:"),
        "the same key, under each plugin's own prefix"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_swapped_rate_limit_plugin_keeps_its_counters_in_redis() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let v1 = std::fs::read(plugin("rate_limit")).unwrap();
    // Version 2: the same code plus a custom section, so another sha256.
    let mut v2 = v1.clone();
    v2.extend_from_slice(&[0, 6, 4, b'w', b'e', b'i', b'r', 2]);
    std::fs::write(dir.path().join("rate-limit-v1.wasm"), &v1).unwrap();
    std::fs::write(dir.path().join("rate-limit-v2.wasm"), &v2).unwrap();
    let manifest = |file: &str| {
        let config = "{ rate = 5, per = \"1h\", key = \"route\" }";
        on_redis(
            &redis,
            &(format!("[plugins.limiter]\npath = \"{file}\"\n\n")
                + &route("swapped", "/api", "builtin:echo", &[("limiter", config)])),
        )
    };
    let gw = TestGateway::start_in(dir, &manifest("rate-limit-v1.wasm")).await;
    for left in ["4", "3", "2"] {
        let r = answered(&gw, "/api/x", &[]).await;
        assert_eq!(r.header("ratelimit-remaining"), Some(left));
    }
    let sha =
        |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap()[0]["sha256"].clone();
    let before = sha(&get_url(&gw.admin_url("/plugins")).await.body);

    gw.rewrite(&manifest("rate-limit-v2.wasm"));
    gw.gateway.reload().await.unwrap();
    let after = sha(&get_url(&gw.admin_url("/plugins")).await.body);
    assert_ne!(before, after, "version 2 serves");

    for left in ["1", "0"] {
        let r = answered(&gw, "/api/x", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("ratelimit-remaining"),
            Some(left),
            "counting goes on"
        );
    }
    assert_eq!(answered(&gw, "/api/x", &[]).await.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_stalls_or_dies_fail_open_counts_locally_fail_closed_answers_503_and_both_recover()
 {
    let mut redis = Redis::start();
    let up = Upstream::start("u").await;
    let manifest = on_redis(
        &redis,
        &(limiter("open-limit", "state_failure = \"open\"")
            + &limiter("closed-limit", "state_failure = \"closed\"")
            + &route(
                "outage-open",
                "/open",
                &up.url(),
                &[(
                    "open-limit",
                    "{ rate = 3, per = \"1h\", key = \"header:x-tenant\" }",
                )],
            )
            + &route(
                "outage-closed",
                "/closed",
                &up.url(),
                &[(
                    "closed-limit",
                    "{ rate = 100, per = \"1h\", key = \"route\" }",
                )],
            )),
    );
    let gw = TestGateway::start(&manifest).await;
    let open = async |tenant: &str| answered(&gw, "/open/x", &[("x-tenant", tenant)]).await;
    let closed = async || answered(&gw, "/closed/x", &[]).await;
    let readyz = gw.admin_url("/readyz");
    let ready = async || get_url(&readyz).await;
    let is_ready = || async { get_url(&readyz).await.body == "ready\n" };

    let r = open("t1").await;
    assert_eq!(r.header("ratelimit-remaining"), Some("2"));
    assert_eq!(closed().await.status, 200);
    assert_eq!(ready().await.body, "ready\n");

    // 1. Redis stalls: the first call waits out `[state] timeout` (50ms), then
    // nobody waits for it. The open plugin counts t1 afresh, locally.
    redis.pause();
    let r = open("t1").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("ratelimit-remaining"),
        Some("2"),
        "a fresh local bucket"
    );
    for left in ["1", "0"] {
        assert_eq!(open("t1").await.header("ratelimit-remaining"), Some(left));
    }
    assert_eq!(open("t1").await.status, 429, "the local bucket limits too");
    let r = closed().await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "service unavailable\n", "nothing about Redis leaks");
    let failed = logs().lines().any(|l| {
        l.contains("plugin failed")
            && l.contains(r#"route="outage-closed""#)
            && l.contains(r#"reason="state_backend""#)
    });
    assert!(failed, "no state_backend failure in the log");
    let r = ready().await;
    assert_eq!(r.status, 503, "a fail-closed plugin refuses requests");
    assert!(r.body.contains("unreachable"), "{}", r.body);
    assert_eq!(logged(&redis, "state backend unreachable"), 1, "said once");
    assert!(
        metric(
            &gw,
            &redis,
            "weir_state_backend_errors_total",
            r#"kind="timeout""#
        )
        .await
            >= 1.0
    );
    assert!(metric(&gw, &redis, "weir_state_backend_fallbacks_total", "").await >= 4.0);
    assert_eq!(metric(&gw, &redis, "weir_state_backend_up", "").await, 0.0);

    // 2. Redis answers again: the probe notices, no restart needed.
    redis.resume();
    eventually(Duration::from_secs(10), "readyz ready again", is_ready).await;
    assert_eq!(logged(&redis, "state backend reachable again"), 1);
    assert_eq!(closed().await.status, 200);
    assert_eq!(open("t2").await.status, 200);
    assert_eq!(
        redis.keys("weir:open-limit:*t2").len(),
        1,
        "t2 counted in Redis"
    );

    // 3. Redis dies: connections reset; same policies, one more log line.
    redis.kill();
    assert_eq!(open("t3").await.status, 200);
    assert_eq!(closed().await.status, 503);
    assert_eq!(open("t3").await.status, 200, "not waiting for a dead Redis");
    assert_eq!(logged(&redis, "state backend unreachable"), 2);
    assert!(
        metric(
            &gw,
            &redis,
            "weir_state_backend_errors_total",
            r#"kind="error""#
        )
        .await
            >= 1.0
    );

    // 4. A new, empty Redis on the same address: shared state resumes.
    redis.restart();
    eventually(
        Duration::from_secs(10),
        "readyz ready after restart",
        is_ready,
    )
    .await;
    assert_eq!(closed().await.status, 200);
    let r = open("t3").await;
    assert_eq!(
        r.header("ratelimit-remaining"),
        Some("2"),
        "t3 afresh, in Redis"
    );
    assert_eq!(redis.keys("weir:open-limit:*t3").len(), 1);
    assert_eq!(logged(&redis, "state backend reachable again"), 2);
    assert_eq!(metric(&gw, &redis, "weir_state_backend_up", "").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_a_password_from_the_environment_shares_state() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    ca.issue(&["127.0.0.1"]).write(dir.path(), "redis");
    // Cargo sets this for every test process; tests cannot set variables of
    // their own (`set_var` is unsafe), and any variable makes the point.
    let password = std::env::var("CARGO_PKG_NAME").unwrap();
    let redis = Redis::start_tls(dir.path(), &password);
    let manifest = format!(
        "[state]\nbackend = \"rediss://127.0.0.1:{}/0\"\nca = \"ca.pem\"\n\
         password_env = \"CARGO_PKG_NAME\"\n\n{}{}",
        redis.port,
        limiter("limiter", ""),
        route(
            "tls-state",
            "/api",
            "builtin:echo",
            &[("limiter", "{ rate = 2, per = \"1h\", key = \"route\" }")]
        ),
    );
    let gw = TestGateway::start_in(dir, &manifest).await;
    for left in ["1", "0"] {
        let r = answered(&gw, "/api/x", &[]).await;
        assert_eq!(r.header("ratelimit-remaining"), Some(left), "{}", r.body);
    }
    assert_eq!(answered(&gw, "/api/x", &[]).await.status, 429);
    assert_eq!(
        redis.keys("weir:limiter:*").len(),
        1,
        "counted on the TLS Redis"
    );
}

#[tokio::test]
async fn a_password_in_the_redis_url_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[state]\nbackend = \"redis://:hunter2@127.0.0.1:6379/0\"\n",
    )
    .unwrap();
    let err = match weir::Gateway::start(&path).await {
        Ok(_) => panic!("a password in the manifest was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("gateway.toml:5:"), "{err}");
    assert!(
        err.contains("the state backend URL holds a password"),
        "{err}"
    );
    assert!(err.contains("password_env"), "{err}");
}
