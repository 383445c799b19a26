//! `weir plugin new NAME`: a plugin crate that builds for `wasm32-wasip2`
//! and passes its own test as it stands: `Cargo.toml` (with the size
//! profile), `src/lib.rs` (a commented filter), `tests/plugin.rs` (a test on
//! the real runtime through [`crate::testkit`]) and a `README.md`.
//!
//! The crate depends on the SDK and the gateway of the source tree this
//! `weir` was built from (by path: neither is on crates.io yet). Made inside
//! that tree's workspace, it leaves the workspace and profile tables to the
//! workspace; elsewhere it is a workspace of its own.

use std::path::{Component, Path, PathBuf};

/// The source tree this binary was built from (`host/..`).
fn source_tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Checks a crate name: lower-case letters, digits and `-`, starting with a letter.
fn check_name(name: &str) -> Result<(), String> {
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "plugin name `{name}`: use lower-case letters, digits and `-`, starting with a letter (e.g. `require-header`)"
        ))
    }
}

/// `require-header` → `RequireHeader`.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// `to` relative to `from` (both absolute), with `/` separators.
fn relative(from: &Path, to: &Path) -> String {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_string(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

/// The files of a new plugin crate `name` placed at `dir` (absolute), as
/// (relative path, content).
pub fn files(name: &str, dir: &Path) -> Result<Vec<(&'static str, String)>, String> {
    check_name(name)?;
    let tree = source_tree();
    let in_workspace = dir.starts_with(&tree);
    // Relative inside the tree (the crate moves with it), absolute outside.
    let path_to = |sub: &str| {
        let to = tree.join(sub);
        if in_workspace {
            relative(dir, &to)
        } else {
            to.display().to_string()
        }
    };
    let fill = |t: &str| {
        t.replace("{name}", name)
            .replace("{stem}", &name.replace('-', "_"))
            .replace("{Type}", &type_name(name))
            .replace("{sdk}", &path_to("sdk"))
            .replace("{host}", &path_to("host"))
    };
    let mut cargo = fill(CARGO_TOML);
    if !in_workspace {
        cargo.push_str(STANDALONE);
    }
    Ok(vec![
        ("Cargo.toml", cargo),
        ("src/lib.rs", fill(LIB_RS)),
        ("tests/plugin.rs", fill(TEST_RS)),
        ("README.md", fill(README)),
        (".gitignore", "/target\n".to_string()),
    ])
}

/// Writes the crate `name` into `parent/name`; refuses to overwrite.
pub fn new_plugin(name: &str, parent: &Path) -> Result<PathBuf, String> {
    let parent = std::path::absolute(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let dir = parent.join(name);
    if dir.exists() {
        return Err(format!(
            "{} already exists: pick another name or remove it",
            dir.display()
        ));
    }
    for (path, content) in files(name, &dir)? {
        let file = dir.join(path);
        if let Some(p) = file.parent() {
            std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        std::fs::write(&file, content).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(dir)
}

const CARGO_TOML: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# A WebAssembly component for Weir: `cargo build --target wasm32-wasip2 --release`.
crate-type = ["cdylib"]

[dependencies]
weir-sdk = { path = "{sdk}" }
serde = { version = "1", features = ["derive"] }

[dev-dependencies]
# `cargo test` runs the built component on the real Weir runtime (weir::testkit).
weir = { path = "{host}" }
tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
"#;

const STANDALONE: &str = r#"
# A workspace of its own; remove this table to add the crate to another workspace.
[workspace]

# `cargo build --target wasm32-wasip2 --profile plugin`: about half the size of
# `--release` (the host's own release profile keeps unwinding; this one aborts).
[profile.plugin]
inherits = "release"
opt-level = "s"
lto = true
codegen-units = 1
# Keep function names: the gateway's log names the function a trap happened in.
strip = "debuginfo"
panic = "abort"
"#;

const LIB_RS: &str = r#"//! # {name}: a Weir filter
//!
//! Refuses requests that lack a header, and tags every response. Build it
//! with `cargo build --target wasm32-wasip2 --profile plugin`, test it with
//! `cargo test`, and list the `.wasm` in a gateway manifest (see README.md).

use weir_sdk::{Action, Hooks, Plugin, Request, Response, reply};

/// The route's `config` table, decoded and checked when the plugin loads:
/// a bad config fails `weir check` and startup, never a request.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Requests without this header get a 400.
    pub required_header: String,
    /// Set as `x-tag` on every response (default `{name}`).
    #[serde(default = "default_tag")]
    pub tag: String,
}

fn default_tag() -> String {
    "{name}".into()
}

/// The filter. One value lives in each sandboxed instance; an instance
/// serves one request at a time, and many requests over its life.
pub struct {Type} {
    config: Config,
}

impl Plugin for {Type} {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        // An error names the field; the gateway adds the route and plugin.
        if config.required_header.is_empty() {
            return Err("required_header: must not be empty".into());
        }
        Ok(Self { config })
    }

    fn hooks(&self) -> Hooks {
        // The gateway calls only these. Add `Hooks::SAME_INSTANCE` to keep
        // what `on_request` put in `self` for this request's `on_response`.
        Hooks::ON_REQUEST | Hooks::ON_RESPONSE
    }

    fn on_request(&mut self, req: &Request) -> Action {
        if req.header(&self.config.required_header).is_none() {
            // Answered here: the upstream is not called.
            return reply(400)
                .text(format!("missing header {}\n", self.config.required_header))
                .into();
        }
        Action::Continue
    }

    fn on_response(&mut self, _req: &Request, resp: &Response) {
        // An edit the gateway refuses (a bad value, a forbidden header) is an
        // error value, never a crash; here it is not worth failing for.
        let _ = resp.set_header("x-tag", &self.config.tag);
    }
}

weir_sdk::export!({Type});
"#;

const TEST_RS: &str = r##"//! {name} on the real Weir runtime: the compiled component, its config
//! checks and its hooks, with no gateway to run (`weir::testkit`).

use weir::testkit::{Harness, TestRequest, build_plugin};

async fn harness(config: &str) -> Result<Harness, String> {
    let wasm = build_plugin(env!("CARGO_MANIFEST_DIR"))?;
    Harness::new(&wasm, config).await
}

#[tokio::test]
async fn a_request_without_the_header_gets_400_and_never_reaches_the_upstream() {
    let h = harness(r#"required_header = "x-tenant""#).await.unwrap();
    let out = h.send(TestRequest::get("/orders")).await;
    assert_eq!(out.status, 400);
    assert_eq!(out.answered_by.as_deref(), Some("plugin"));
    assert!(out.upstream.is_none());
}

#[tokio::test]
async fn a_request_with_the_header_passes_and_its_response_is_tagged() {
    let h = harness("required_header = \"x-tenant\"\ntag = \"checked\"")
        .await
        .unwrap();
    let out = h
        .send(TestRequest::get("/orders").header("x-tenant", "acme"))
        .await;
    assert_eq!(out.status, 200);
    assert_eq!(out.header("x-tag"), Some("checked"));
    assert_eq!(out.upstream.unwrap().headers["x-tenant"], "acme");
}

#[tokio::test]
async fn an_empty_header_name_is_refused_at_load() {
    let err = harness(r#"required_header = """#).await.err().unwrap();
    assert!(err.contains("required_header: must not be empty"), "{err}");
}
"##;

const README: &str = r#"# {name}

A Weir filter: refuses requests without a header (400) and tags responses.

```sh
rustup target add wasm32-wasip2
cargo build --target wasm32-wasip2 --profile plugin   # → target/wasm32-wasip2/plugin/{stem}.wasm
cargo test                                            # runs it on the real Weir runtime
```

(Inside a workspace, the workspace's own `target/` and profiles apply: use
`--release` if it has no `plugin` profile.)

In the gateway's manifest:

```toml
[plugins.{name}]
path = "target/wasm32-wasip2/plugin/{stem}.wasm"

[[routes]]
id = "api"
prefix = "/api"
upstream = "builtin:echo"

[[routes.plugins]]
name = "{name}"
config = { required_header = "x-tenant", tag = "checked" }
```

Then `weir check gateway.toml`, `weir run gateway.toml`, and:

```sh
curl -i localhost:8080/api/orders                      # 400 missing header x-tenant
curl -i -H 'x-tenant: acme' localhost:8080/api/orders  # 200, with x-tag: checked
```

## Config

| key | meaning | default |
|---|---|---|
| `required_header` | requests without it get a 400 | required |
| `tag` | the `x-tag` set on every response | `{name}` |
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_types_and_bad_names_are_refused() {
        assert_eq!(type_name("require-header"), "RequireHeader");
        assert_eq!(type_name("cors"), "Cors");
        for bad in ["", "Cors", "9lives", "a_b", "trailing-", "sp ace"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    /// `examples/hello-plugin` is `weir plugin new hello-plugin --dir examples`,
    /// so CI builds and tests exactly what the scaffold writes.
    #[test]
    fn the_committed_example_is_the_scaffold_output() {
        let dir = source_tree().join("examples/hello-plugin");
        for (path, content) in files("hello-plugin", &dir).unwrap() {
            let committed = std::fs::read_to_string(dir.join(path)).unwrap();
            assert_eq!(
                committed, content,
                "examples/hello-plugin/{path} differs: regenerate it"
            );
        }
    }

    #[test]
    fn paths_to_the_sdk_are_relative() {
        assert_eq!(
            relative(Path::new("/w/examples/p"), Path::new("/w/sdk")),
            "../../sdk"
        );
        assert_eq!(
            relative(Path::new("/tmp/p"), Path::new("/w/sdk")),
            "../../w/sdk"
        );
    }
}
