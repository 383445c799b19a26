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
    assert_eq!(key_auth["world"], "weir:plugin/plugin@0.1.0");
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
        stdout.contains("  world      weir:plugin/plugin@0.1.0\n"),
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
