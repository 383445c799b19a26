//! Builds every plugin the tests load (first-party and test plugins) for
//! wasm32-wasip2 and exports the output folder as `WEIR_TEST_PLUGIN_DIR`.

include!("../host/build_plugins.rs");

const PLUGINS: [&str; 16] = [
    "key-auth",
    "jwt-auth",
    "headers",
    "rate-limit",
    "json-transform",
    "request-validator",
    "oauth2-introspect",
    "aggregate",
    "test-trap",
    "test-order",
    "test-stamp-v1",
    "test-stamp-v2",
    "test-wrong-world",
    "test-hostile",
    "test-socket",
    "test-probe",
];

fn main() {
    println!("cargo:rerun-if-changed=../host/build_plugins.rs");
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf();
    if let Err(e) = build_plugins(&workspace, &PLUGINS) {
        panic!("{e}");
    }
    println!(
        "cargo:rustc-env=WEIR_TEST_PLUGIN_DIR={}",
        plugin_out_dir(&workspace).display()
    );
}
