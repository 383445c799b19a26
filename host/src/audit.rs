//! `weir audit`: what a plugin is and what it may do, for a security review.
//!
//! For each plugin: sha256, size, the WIT world it targets, every import
//! grouped by [`Capability`] with what it yields under the grants, every
//! export, producer metadata (language, tools, `weir-sdk` version) and the
//! initial memory it declares. Given a manifest, also the sandbox in force
//! (limits, grants, pin, isolation) and, per route that uses the plugin, its
//! place in the chain and failure policy. The file is parsed, not run.

mod text;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmparser::{KnownCustom, Parser, Payload};

use crate::config::{Fail, Isolation, Stdio};
use crate::plugin::{Capability, Limits, Policy, Runtime};

/// The custom section the `weir_sdk::export!` macro puts its version in.
pub const SDK_SECTION: &str = "weir-sdk";

/// What `weir audit` found, for one plugin file or every plugin of a manifest.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The manifest audited, if any.
    pub manifest: Option<PathBuf>,
    /// One entry per plugin, by name.
    pub plugins: Vec<PluginReport>,
}

/// One plugin.
#[derive(Debug, Serialize)]
pub struct PluginReport {
    /// The name in the manifest, or the file stem.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// sha256 of the file, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: usize,
    /// The WIT world it targets, inferred from its `weir:plugin/filter` export.
    pub world: Option<String>,
    /// Imports grouped by capability, in a fixed order.
    pub imports: Vec<ImportGroup>,
    /// Every export.
    pub exports: Vec<String>,
    /// The `producers` metadata of the component and its modules: field → `name version`.
    pub producers: BTreeMap<String, Vec<String>>,
    /// The `weir-sdk` version it was built with, if it says.
    pub sdk: Option<String>,
    /// The largest initial linear memory a module declares, in bytes.
    pub initial_memory: u64,
    /// Whether the gateway would load it (under the manifest's policy, or the default one).
    pub admitted: bool,
    /// Why not, when it would not.
    pub refusal: Option<String>,
    /// The sandbox in force (with a manifest).
    pub policy: Option<PolicyReport>,
    /// The routes using it (with a manifest).
    pub routes: Vec<RouteUse>,
}

/// Imports of one capability.
#[derive(Debug, Serialize)]
pub struct ImportGroup {
    /// The capability.
    pub capability: Capability,
    /// Whether a plugin importing it may load.
    pub allowed: bool,
    /// What the plugin actually gets, under its grants.
    pub effect: String,
    /// The import names.
    pub names: Vec<String>,
}

/// The sandbox of a plugin as the manifest sets it.
#[derive(Debug, Serialize)]
pub struct PolicyReport {
    /// `isolation`.
    pub isolation: Isolation,
    /// `sha256` pin.
    pub sha256_pin: Option<String>,
    /// The limits in force, as the runtime holds them.
    #[serde(flatten)]
    pub limits: Limits,
    /// `grants.env`: names (values are never shown).
    pub env: Vec<String>,
    /// `grants.stdio`.
    pub stdio: Stdio,
    /// `grants.http`: upstreams it may call (`None`: not stated).
    pub http: Option<Vec<String>>,
}

/// One route's use of a plugin.
#[derive(Debug, Serialize)]
pub struct RouteUse {
    /// Route id.
    pub route: String,
    /// 1-based position in the route's chain.
    pub position: usize,
    /// `fail`.
    pub fail: Fail,
    /// `fail_status` (the answer when closed).
    pub fail_status: u16,
}

/// Why an audit could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file could not be read.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The file is not a WebAssembly binary the parser understands.
    #[error("{0}: not a WebAssembly component: {1}")]
    Parse(PathBuf, String),
    /// The manifest does not load; these are its errors.
    #[error("{0}")]
    Manifest(crate::ConfigErrors),
}

/// What parsing a plugin file yields, before any policy is applied.
struct Inspection {
    sha256: String,
    size: usize,
    imports: Vec<String>,
    exports: Vec<String>,
    producers: BTreeMap<String, Vec<String>>,
    sdk: Option<String>,
    initial_memory: u64,
}

/// Audits a `.wasm` file, or every plugin of a manifest (anything not starting with `\0asm`).
pub async fn audit(path: &Path) -> Result<Report, AuditError> {
    let head = std::fs::read(path).map_err(|e| AuditError::Read(path.to_path_buf(), e))?;
    if head.starts_with(b"\0asm") {
        audit_plugin(path).await
    } else {
        audit_manifest(path).await
    }
}

async fn audit_plugin(path: &Path) -> Result<Report, AuditError> {
    let found = inspect(path)?;
    let name = path
        .file_stem()
        .map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
    // Would it load with nothing granted? Compiling is the only full answer (world, types).
    let (rt, n, p) = (Runtime::global().clone(), name.clone(), path.to_path_buf());
    let verdict = tokio::task::spawn_blocking(move || rt.load(&n, &p, &Policy::default()))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let policy = Policy::default();
    Ok(Report {
        manifest: None,
        plugins: vec![report(
            name,
            path,
            found,
            &policy,
            verdict.err(),
            None,
            Vec::new(),
        )],
    })
}

async fn audit_manifest(path: &Path) -> Result<Report, AuditError> {
    let snap = crate::check(path).await.map_err(AuditError::Manifest)?;
    let mut plugins = Vec::new();
    // A rolled-out plugin's canaries are audited beside its stable version.
    let canaries = snap.rollouts.iter().flat_map(|(name, r)| {
        r.versions
            .iter()
            .skip(1)
            .map(move |v| (format!("{name} (version {})", v.label), name, &v.plugin))
    });
    let stable = snap.plugins.iter().map(|(name, lp)| {
        let shown = match snap.rollouts.get(name) {
            Some(r) => format!("{name} (version {}, stable)", r.versions[0].label),
            None => name.clone(),
        };
        (shown, name, lp)
    });
    for (shown, name, loaded) in stable.chain(canaries).collect::<Vec<_>>() {
        let found = inspect(&loaded.path)?;
        let policy = snap.policies.get(name).cloned().unwrap_or_default();
        let mut isolation = Isolation::default();
        let mut routes = Vec::new();
        for route in &snap.routes {
            for (i, cp) in route.chain.iter().enumerate() {
                if &*cp.plugin.name == name {
                    isolation = cp.isolation;
                    routes.push(RouteUse {
                        route: route.id.to_string(),
                        position: i + 1,
                        fail: cp.fail.mode,
                        fail_status: cp.fail.status.as_u16(),
                    });
                }
            }
        }
        let pr = policy_report(&policy, isolation);
        plugins.push(report(
            shown,
            &loaded.path,
            found,
            &policy,
            None,
            Some(pr),
            routes,
        ));
    }
    Ok(Report {
        manifest: Some(path.to_path_buf()),
        plugins,
    })
}

fn report(
    name: String,
    path: &Path,
    found: Inspection,
    policy: &Policy,
    refusal: Option<String>,
    policy_report: Option<PolicyReport>,
    routes: Vec<RouteUse>,
) -> PluginReport {
    let mut groups: BTreeMap<Capability, Vec<String>> = BTreeMap::new();
    for i in &found.imports {
        groups.entry(Capability::of(i)).or_default().push(i.clone());
    }
    let imports = groups
        .into_iter()
        .map(|(capability, names)| ImportGroup {
            capability,
            allowed: capability.allowed(),
            effect: capability.effect(&policy.grants, &names),
            names,
        })
        .collect();
    let world = found
        .exports
        .iter()
        .find_map(|e| e.strip_prefix("weir:plugin/filter"))
        .map(|version| format!("weir:plugin/plugin{version}"));
    PluginReport {
        name,
        path: path.to_path_buf(),
        sha256: found.sha256,
        size: found.size,
        world,
        imports,
        exports: found.exports,
        producers: found.producers,
        sdk: found.sdk,
        initial_memory: found.initial_memory,
        admitted: refusal.is_none(),
        refusal,
        policy: policy_report,
        routes,
    }
}

fn policy_report(p: &Policy, isolation: Isolation) -> PolicyReport {
    PolicyReport {
        isolation,
        sha256_pin: p.sha256.clone(),
        limits: p.limits.clone(),
        env: p.grants.env_names.clone(),
        stdio: p.grants.stdio,
        http: p.grants.http.clone(),
    }
}

/// Parses a component: top-level imports and exports, and the producers,
/// SDK section and memories of every nested module.
fn inspect(path: &Path) -> Result<Inspection, AuditError> {
    let bytes = std::fs::read(path).map_err(|e| AuditError::Read(path.to_path_buf(), e))?;
    let bad =
        |e: wasmparser::BinaryReaderError| AuditError::Parse(path.to_path_buf(), e.to_string());
    let mut found = Inspection {
        sha256: hex::encode(Sha256::digest(&bytes)),
        size: bytes.len(),
        imports: Vec::new(),
        exports: Vec::new(),
        producers: BTreeMap::new(),
        sdk: None,
        initial_memory: 0,
    };
    // parse_all walks nested modules and components inline; depth 1 is the component itself.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(&bytes) {
        match payload.map_err(bad)? {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding != wasmparser::Encoding::Component {
                    return Err(AuditError::Parse(
                        path.to_path_buf(),
                        "this is a core module; build for the wasm32-wasip2 target".into(),
                    ));
                }
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(r) if depth == 1 => {
                for i in r {
                    found.imports.push(i.map_err(bad)?.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(r) if depth == 1 => {
                for e in r {
                    found.exports.push(e.map_err(bad)?.name.name.to_string());
                }
            }
            Payload::MemorySection(r) => {
                for m in r {
                    let m = m.map_err(bad)?;
                    let bytes = m.initial.saturating_mul(u64::from(m.page_size()));
                    found.initial_memory = found.initial_memory.max(bytes);
                }
            }
            Payload::CustomSection(c) => match c.as_known() {
                KnownCustom::Producers(r) => {
                    for field in r {
                        let field = field.map_err(bad)?;
                        let values = found.producers.entry(field.name.to_string()).or_default();
                        for v in field.values {
                            let v = v.map_err(bad)?;
                            let entry = format!("{} {}", v.name, v.version).trim().to_string();
                            if !values.contains(&entry) {
                                values.push(entry);
                            }
                        }
                    }
                }
                _ if c.name() == SDK_SECTION => {
                    found.sdk = Some(String::from_utf8_lossy(c.data()).trim().to_string());
                }
                _ => {}
            },
            _ => {}
        }
    }
    Ok(found)
}

impl Report {
    /// The report as an operator reads it.
    pub fn to_text(&self) -> String {
        text::render(self)
    }
}
