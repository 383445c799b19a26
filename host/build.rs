//! Builds the first-party plugins (plugins/*) for wasm32-wasip2 when the
//! gateway is built from this workspace, so `cargo run -- run
//! examples/quickstart/gateway.toml` works with nothing else to do.
//! Set `WEIR_SKIP_PLUGINS=1` to skip.

include!("build_plugins.rs");

const FIRST_PARTY: [&str; 13] = [
    "key-auth",
    "jwt-auth",
    "headers",
    "rate-limit",
    "cors",
    "ip-filter",
    "request-size",
    "bot-filter",
    "basic-auth",
    "json-transform",
    "request-validator",
    "oauth2-introspect",
    "aggregate",
];

fn main() {
    println!("cargo:rerun-if-env-changed=WEIR_SKIP_PLUGINS");
    println!("cargo:rerun-if-changed=build_plugins.rs");
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("host/ is inside the workspace")
        .to_path_buf();
    // Outside this workspace (e.g. a published crate) there is nothing to build.
    if std::env::var_os("WEIR_SKIP_PLUGINS").is_some() || !workspace.join("plugins").is_dir() {
        return;
    }
    if let Err(e) = build_plugins(&workspace, &FIRST_PARTY) {
        // The gateway itself still builds; only the bundled plugins are missing.
        for line in e.lines().take(40) {
            println!("cargo:warning={line}");
        }
    }
}
