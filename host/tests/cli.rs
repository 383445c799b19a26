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

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "weir-cli-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
