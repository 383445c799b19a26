//! `weir audit`: what a security team reads about a plugin, as JSON and as text.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::plugin;

async fn audit_json(path: &str) -> Value {
    let report = weir::audit::audit(Path::new(path)).await.unwrap();
    serde_json::to_value(&report).unwrap()
}

/// The import group of `capability`, if any.
fn group<'a>(p: &'a Value, capability: &str) -> Option<&'a Value> {
    p["imports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["capability"] == capability)
}

#[tokio::test]
async fn a_plugin_is_reported_with_hash_world_capabilities_exports_and_producers() {
    let path = plugin("test_hostile");
    let bytes = std::fs::read(&path).unwrap();
    let json = audit_json(&path).await;
    let p = &json["plugins"][0];
    assert_eq!(p["name"], "test_hostile");
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(p["sha256"], sha);
    assert_eq!(p["size"], bytes.len());
    assert_eq!(p["world"], "weir:plugin/plugin@0.2.0");
    assert_eq!(p["exports"], json!(["weir:plugin/filter@0.2.0"]));
    assert_eq!(
        p["sdk"],
        env!("CARGO_PKG_VERSION"),
        "the weir-sdk version it was built with"
    );
    let tools = p["producers"]["processed-by"].as_array().unwrap();
    assert!(
        tools
            .iter()
            .any(|t| t.as_str().unwrap().starts_with("wit-bindgen-rust ")),
        "{tools:?}"
    );
    assert_eq!(
        (&p["admitted"], &p["refusal"]),
        (&json!(true), &Value::Null)
    );

    let weir = group(p, "weir").expect("weir imports");
    assert!(
        weir["names"]
            .as_array()
            .unwrap()
            .contains(&json!("weir:plugin/http@0.2.0"))
    );
    let fs = group(p, "filesystem").expect("it reads a file, so it imports wasi:filesystem");
    assert_eq!(fs["allowed"], true);
    assert_eq!(fs["effect"], "no preopened directories: nothing to open");
    let env = group(p, "environment").unwrap();
    assert_eq!(env["effect"], "empty environment, no arguments");
    assert!(group(p, "network").is_none());
    assert!(p["initial_memory"].as_u64().unwrap() > 0);
    assert_eq!(p["policy"], Value::Null, "no manifest, no policy");
}

#[tokio::test]
async fn what_a_plugin_may_do_shows_in_its_weir_imports() {
    let json = audit_json(&plugin("key_auth")).await;
    let weir = group(&json["plugins"][0], "weir").expect("weir imports");
    let names = weir["names"].as_array().unwrap();
    // key-auth reads the request, strips the key, names the consumer: no response edits, no state.
    for absent in ["edit-response", "state"] {
        assert!(
            !names.contains(&json!(format!("weir:plugin/{absent}@0.2.0"))),
            "{absent} in {names:?}"
        );
    }
    let effect = weir["effect"].as_str().unwrap();
    assert!(effect.contains("reads requests and responses"), "{effect}");
    assert!(effect.contains("sets request variables"), "{effect}");
    assert!(!effect.contains("edits response"), "{effect}");

    let json = audit_json(&plugin("headers")).await;
    let weir = group(&json["plugins"][0], "weir").unwrap();
    let effect = weir["effect"].as_str().unwrap();
    assert!(effect.contains("edits request headers"), "{effect}");
    assert!(
        effect.contains("edits response status and headers"),
        "{effect}"
    );
    assert!(!effect.contains("shared counters"), "{effect}");
}

#[tokio::test]
async fn a_plugin_built_for_wit_0_1_is_refused_with_how_to_rebuild() {
    let old = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/plugins/key_auth-wit-0.1.0.wasm"
    );
    let json = audit_json(old).await;
    let p = &json["plugins"][0];
    assert_eq!(p["world"], "weir:plugin/plugin@0.1.0");
    assert_eq!(p["admitted"], false);
    let refusal = p["refusal"].as_str().unwrap();
    assert!(
        refusal.contains("built for weir:plugin@0.1.0")
            && refusal.contains("speaks weir:plugin@0.2.0")
            && refusal.contains("rebuild it against weir-sdk 0.2"),
        "{refusal}"
    );

    // The gateway refuses it the same way, naming the manifest line.
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("gateway.toml");
    std::fs::write(
        &manifest,
        format!(
            "[plugins.old]\npath = \"{old}\"\n\n[[routes]]\nid = \"r\"\nprefix = \"/\"\nupstream = \"builtin:echo\"\n[[routes.plugins]]\nname = \"old\"\n"
        ),
    )
    .unwrap();
    let err = weir::check(&manifest).await.unwrap_err().to_string();
    assert!(err.contains("gateway.toml:2:"), "{err}");
    assert!(err.contains("built for weir:plugin@0.1.0"), "{err}");
}

#[tokio::test]
async fn a_plugin_that_imports_sockets_is_reported_as_refused() {
    let json = audit_json(&plugin("test_socket")).await;
    let p = &json["plugins"][0];
    assert_eq!(p["admitted"], false);
    let refusal = p["refusal"].as_str().unwrap();
    assert!(refusal.contains("imports `wasi:sockets/"), "{refusal}");
    let net = group(p, "network").expect("network imports listed");
    assert_eq!(net["allowed"], false);
    assert!(
        net["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().starts_with("wasi:sockets/tcp@")),
        "{net}"
    );
}

/// Values that change with every build or machine.
const MASKED: [&str; 4] = ["sha256", "size", "producers", "memory"];

#[tokio::test]
async fn the_text_audit_of_a_manifest_matches_the_blessed_report() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/audit");
    let report = weir::audit::audit(&dir.join("gateway.toml")).await.unwrap();
    let text = report.to_text().replace(&format!("{}/", dir.display()), "");
    let masked: String = text
        .lines()
        .map(|l| {
            let key = l.trim_start().split(' ').next().unwrap_or("");
            if l.starts_with("  ") && !l.starts_with("   ") && MASKED.contains(&key) {
                format!("  {key:<10} …\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let expected_path = dir.join("gateway.txt");
    if std::env::var_os("WEIR_BLESS").is_some() {
        std::fs::write(&expected_path, &masked).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    assert!(
        masked == expected,
        "--- expected\n{expected}--- actual\n{masked}(WEIR_BLESS=1 rewrites it)"
    );
}
