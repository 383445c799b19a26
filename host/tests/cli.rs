//! The `weir` binary as an operator runs it.

use std::path::PathBuf;
use std::process::Command;

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[test]
fn check_accepts_the_quickstart_manifest() {
    let out = weir()
        .arg("check")
        .arg(repo("examples/quickstart/gateway.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok (3 routes, 4 plugins"), "{stdout}");
}

#[test]
fn check_fails_with_file_line_column_and_a_fix() {
    let dir = tempfile_dir();
    let manifest = dir.join("gateway.toml");
    std::fs::write(
        &manifest,
        "[[routes]]\nid = \"a\"\nupstream = \"nowhere\"\n",
    )
    .unwrap();
    let out = weir().arg("check").arg(&manifest).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gateway.toml:3:12: route `a`: unknown upstream `nowhere`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("help: define `[upstreams.nowhere]`"),
        "{stderr}"
    );
}

#[test]
fn version_and_help_answer() {
    let out = weir().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("weir "));
    let out = weir().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("run") && help.contains("check"), "{help}");
}

#[test]
fn audit_reports_every_plugin_of_a_manifest_with_its_routes_as_json() {
    let out = weir()
        .args(["audit", "--json"])
        .arg(repo("examples/quickstart/gateway.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let plugins = json["plugins"].as_array().unwrap();
    let names: Vec<&str> = plugins
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["headers", "jwt-auth", "key-auth", "rate-limit"]);
    let key_auth = &plugins[2];
    assert_eq!(key_auth["world"], "weir:plugin/plugin@0.2.0");
    assert_eq!(key_auth["policy"]["max_memory"], 64 << 20);
    assert_eq!(key_auth["policy"]["isolation"], "pooled");
    assert_eq!(key_auth["routes"][0]["route"], "keyed");
    assert_eq!(key_auth["routes"][0]["fail"], "closed");
    assert_eq!(key_auth["routes"][0]["fail_status"], 503);
}

#[test]
fn audit_of_a_plugin_file_prints_its_digest_and_verdict() {
    let wasm = repo("target/plugins/wasm32-wasip2/plugin/key_auth.wasm");
    let out = weir().arg("audit").arg(&wasm).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(std::fs::read(&wasm).unwrap()));
    assert!(
        stdout.contains(&format!("  sha256     {digest}\n")),
        "{stdout}"
    );
    assert!(stdout.contains("  verdict    loads\n"), "{stdout}");
    assert!(
        stdout.contains("  world      weir:plugin/plugin@0.2.0\n"),
        "{stdout}"
    );
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "weir-cli-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Reads the child's stderr on a thread so the test can wait with a timeout.
fn lines_of(stderr: std::process::ChildStderr) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next JSON log line whose `message` is `message`, within 60 s.
fn wait_for(rx: &std::sync::mpsc::Receiver<String>, message: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no `{message}` log line"));
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["message"] == message {
            return v;
        }
    }
}

/// One HTTP/1.1 exchange over a fresh connection; returns the raw answer.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Kills the child when the test ends, pass or fail.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn run_with_json_logs_writes_one_access_line_per_request_and_serves_metrics() {
    let dir = tempfile_dir().join("json-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("gateway.toml");
    std::fs::write(
        &manifest,
        r#"
[server]
listen = ["127.0.0.1:0"]

[admin]
listen = "127.0.0.1:0"

[[routes]]
id = "echo"
upstream = "builtin:echo"
"#,
    )
    .unwrap();
    let mut child = weir()
        .args(["run", "--log-format", "json"])
        .arg(&manifest)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(child.stderr.take().unwrap());
    let _running = Running(child);

    let admin = wait_for(&rx, "admin listening")["addr"]
        .as_str()
        .unwrap()
        .to_string();
    let proxy = wait_for(&rx, "weir is listening")["addr"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = http_get(&proxy, "/hello?x=1");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let access = wait_for(&rx, "access");
    assert_eq!(access["target"], "weir::access");
    assert_eq!(access["level"], "INFO");
    assert_eq!(access["method"], "GET");
    assert_eq!(access["path"], "/hello");
    assert_eq!(access["route"], "echo");
    assert_eq!(access["status"], 200);
    assert_eq!(access["upstream"], "builtin:echo");
    assert!(access["duration_us"].is_u64(), "{access}");
    let request_id = access["request_id"].as_str().unwrap();
    assert!(
        answer.contains(&format!("x-request-id: {request_id}\r\n")),
        "{answer}"
    );

    let metrics = http_get(&admin, "/metrics");
    assert!(
        metrics.contains("weir_requests_total{route=\"echo\",status_class=\"2xx\"} 1\n"),
        "{metrics}"
    );
    assert!(http_get(&admin, "/readyz").starts_with("HTTP/1.1 200"));
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits() {
    use std::io::{Read, Write};
    // An origin that takes 1.5 s to answer its one request.
    let origin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin_addr = origin.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = origin.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow");
    });
    let dir = tempfile_dir().join("sigterm");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("gateway.toml");
    std::fs::write(
        &manifest,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nshutdown_timeout = \"10s\"\n\n[[routes]]\nid = \"slow\"\nupstream = \"http://{origin_addr}\"\n"
        ),
    )
    .unwrap();
    let mut child = weir()
        .args(["run", "--no-watch", "--log-format", "json"])
        .arg(&manifest)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(child.stderr.take().unwrap());
    let pid = child.id();
    let mut running = Running(child);
    let proxy = wait_for(&rx, "weir is listening")["addr"]
        .as_str()
        .unwrap()
        .to_string();
    let in_flight = {
        let proxy = proxy.clone();
        std::thread::spawn(move || http_get(&proxy, "/slow"))
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let draining = wait_for(&rx, "shutting down: draining in-flight requests");
    assert_eq!(draining["open_connections"], 1, "{draining}");
    let answer = in_flight.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("slow"), "{answer}");
    wait_for(&rx, "drained");
    let status = running.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        std::net::TcpStream::connect(&proxy).is_err(),
        "the listener is closed"
    );
}

#[test]
fn plugins_still_load_when_the_instance_pool_cannot_be_reserved() {
    // 6 GB of address space: far less than the pool's reservation.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v 6000000 && exec '{}' check '{}'",
            env!("CARGO_BIN_EXE_weir"),
            repo("examples/quickstart/gateway.toml").display()
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("ok (3 routes, 4 plugins"), "{stdout}");
    assert!(
        stderr.contains("cannot reserve the instance pool; allocating plugin instances on demand"),
        "{stderr}"
    );
}

#[test]
fn test_runs_the_policy_example_cases_and_passes() {
    let out = weir()
        .arg("test")
        .arg(repo("examples/policy-tests/cases.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok      the free plan allows two orders a minute"),
        "{stdout}"
    );
    assert!(stdout.contains("8 passed, 0 failed"), "{stdout}");
}

#[test]
fn test_prints_what_differed_and_exits_1() {
    let dir = tempfile_dir();
    let cases = dir.join("cases.toml");
    let manifest = repo("examples/policy-tests/gateway.toml");
    std::fs::write(
        &cases,
        format!(
            r#"
manifest = "{}"

[[case]]
name = "orders are open to all"
request = {{ target = "/api/orders" }}
expect = {{ status = 200, headers = {{ www-authenticate = "none" }}, upstream = {{ headers = {{ x-consumer = "anyone" }} }} }}

[[case]]
name = "health answers"
request = {{ target = "/health" }}
expect.status = 200
"#,
            manifest.display()
        ),
    )
    .unwrap();
    let out = weir().arg("test").arg(&cases).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "FAILED  orders are open to all",
        "request: status: expected 200, got 401",
        r#"request: header www-authenticate: expected "none", got "ApiKey realm=\"weir\"""#,
        "request: upstream: expected to be called, got no request",
        "ok      health answers",
        "1 passed, 1 failed",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }

    let out = weir()
        .args(["test", "--json"])
        .arg(&cases)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failed"], 1);
    assert_eq!(report["cases"][0]["failures"][0]["what"], "status");
    assert_eq!(report["cases"][0]["failures"][0]["got"], "401");
    assert_eq!(report["cases"][1]["passed"], true);
}

#[test]
fn test_refuses_a_malformed_cases_file_with_its_line_and_exits_2() {
    let dir = tempfile_dir();
    let cases = dir.join("cases.toml");
    std::fs::write(
        &cases,
        "manifest = \"gateway.toml\"\n\n[[case]]\nname = \"x\"\nrequest = { target = \"/\" }\nexpect = { stauts = 200 }\n",
    )
    .unwrap();
    let out = weir().arg("test").arg(&cases).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cases.toml:6:"), "{stderr}");
    assert!(stderr.contains("unknown field `stauts`"), "{stderr}");
}

#[test]
fn check_prints_conflicts_as_warnings_and_fails_on_them_when_denied() {
    let manifest = repo("tests/fixtures/lint/plugin-twice.toml");
    let out = weir().arg("check").arg(&manifest).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("plugin-twice.toml:13:1: warning: plugin `key-auth` is listed twice"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok, 1 warning"));
    let out = weir()
        .args(["check", "--deny-warnings"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn test_cases_set_the_clock_plugins_read() {
    // The quickstart's demo token expires at 2100-01-01T00:00:00Z.
    let token = std::fs::read_to_string(repo("examples/quickstart/demo.jwt")).unwrap();
    let dir = tempfile_dir();
    let cases = dir.join("clock.toml");
    std::fs::write(
        &cases,
        format!(
            r#"
manifest = "{}"

[[case]]
name = "the demo token works until 2100, not after"
[[case.steps]]
time = 2099-12-31T23:59:00Z
request = {{ target = "/jwt/x", headers = {{ authorization = "Bearer {token}" }} }}
expect = {{ status = 200, upstream = {{ headers = {{ x-user = "alice" }} }} }}
[[case.steps]]
advance = "2m"
request = {{ target = "/jwt/x", headers = {{ authorization = "Bearer {token}" }} }}
expect = {{ status = 401, answered_by = "jwt-auth" }}

[[case]]
name = "time only moves forward within a case"
[[case.steps]]
time = 2030-01-02T00:00:00Z
request = {{ target = "/jwt/x" }}
[[case.steps]]
time = 2030-01-01T00:00:00Z
request = {{ target = "/jwt/x" }}
"#,
            repo("examples/quickstart/gateway.toml").display(),
            token = token.trim()
        ),
    )
    .unwrap();
    let out = weir().arg("test").arg(&cases).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains("step 2: time goes backwards"),
        "stderr: {stderr}"
    );
    // Without the second case, the first passes.
    let text = std::fs::read_to_string(&cases).unwrap();
    let first = &text[..text.find("[[case]]\nname = \"time only").unwrap()];
    std::fs::write(&cases, first).unwrap();
    let out = weir().arg("test").arg(&cases).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("1 passed, 0 failed"), "{stdout}");
}

#[test]
fn plugin_new_writes_a_standalone_crate_and_refuses_to_overwrite() {
    let dir = tempfile_dir().join("scaffold");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = weir()
        .args(["plugin", "new", "tenant-check", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crate_dir = dir.join("tenant-check");
    let cargo = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    // Outside the source tree: its own workspace, the size profile, absolute paths.
    assert!(cargo.contains("\n[workspace]\n"), "{cargo}");
    assert!(cargo.contains("[profile.plugin]"), "{cargo}");
    let sdk = repo("sdk").canonicalize().unwrap();
    assert!(
        cargo.contains(&format!("weir-sdk = {{ path = \"{}\" }}", sdk.display()))
            || cargo.contains("/sdk\" }"),
        "{cargo}"
    );
    let lib = std::fs::read_to_string(crate_dir.join("src/lib.rs")).unwrap();
    assert!(lib.contains("weir_sdk::export!(TenantCheck);"), "{lib}");
    for f in ["tests/plugin.rs", "README.md", ".gitignore"] {
        assert!(crate_dir.join(f).is_file(), "{f} missing");
    }

    let again = weir()
        .args(["plugin", "new", "tenant-check", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let bad = weir()
        .args(["plugin", "new", "Tenant_Check", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("use lower-case letters"));
}
