// Shared by host/build.rs and tests/build.rs (via `include!`): builds
// workspace plugin crates for wasm32-wasip2 with a nested cargo.
//
// The nested build uses its own target dir (`target/plugins`) because the
// outer cargo holds the lock on `target/` while build scripts run.

use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(dead_code)] // only the tests need it
/// Where plugin `.wasm` files land: `<workspace>/target/plugins/wasm32-wasip2/plugin/`.
fn plugin_out_dir(workspace: &Path) -> PathBuf {
    workspace.join("target/plugins/wasm32-wasip2/plugin")
}

fn wasm_target_installed() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    Command::new(rustc)
        .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).is_dir())
        .unwrap_or(false)
}

/// Builds `packages`; returns the error text on failure.
fn build_plugins(workspace: &Path, packages: &[&str]) -> Result<(), String> {
    for dir in ["wit", "sdk", "plugins", "tests/plugins"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    if !wasm_target_installed() {
        return Err("the wasm32-wasip2 target is not installed: run `rustup target add wasm32-wasip2`".into());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "plugin", "--target-dir"])
        .arg(workspace.join("target/plugins"));
    for p in packages {
        cmd.args(["-p", p]);
    }
    // Flags meant for the outer (host) build must not leak into the wasm build.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_PROFILE_RELEASE_PANIC",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("building plugins failed:\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}
