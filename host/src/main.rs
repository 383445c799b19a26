//! The `weir` command: run or check a gateway manifest, or audit plugins.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use weir::config::{LogFormat, Manifest};
use weir::telemetry::logging::{self, LogSettings};

/// Weir: an API gateway whose policies are sandboxed WebAssembly components.
#[derive(Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    /// Log line format; overrides the manifest's `[log] format`.
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the routes of a manifest, reloading when it or a plugin file
    /// changes (and on SIGHUP).
    Run {
        /// Path to the manifest (TOML).
        manifest: PathBuf,
        /// Do not watch files; reload only on SIGHUP.
        #[arg(long)]
        no_watch: bool,
    },
    /// Load a manifest and every plugin and config it references, then exit:
    /// 0 when it would run, 1 with every error found. Policy conflicts
    /// (shadowed routes, a route missing its siblings' authentication...)
    /// are printed as warnings.
    Check {
        /// Path to the manifest (TOML).
        manifest: PathBuf,
        /// Exit 1 on warnings too.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Run policy test cases (requests and what must come of them) against
    /// a manifest's real routes and plugins, in-process, with a stub
    /// upstream: 0 when every case passes, 1 when one fails, 2 when the
    /// cases cannot run.
    Test {
        /// Path to the cases file (TOML).
        cases: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Control a running gateway through its admin API: a rolled-out
    /// plugin's versions (promote, rollback, reset), status, reload.
    Ctl {
        /// The admin API's `host:port` (default: `[admin] listen` of
        /// `--manifest`, else 127.0.0.1:9901).
        #[arg(long)]
        admin: Option<String>,
        /// Read the admin address and token from this manifest's `[admin]`.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// The environment variable holding the admin token.
        #[arg(long, default_value = "WEIR_ADMIN_TOKEN")]
        token_env: String,
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// Plugin authoring: `weir plugin new NAME` writes a plugin crate that
    /// builds for wasm32-wasip2 and passes its test as it stands.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Report what plugins are and may do: sha256, size, WIT world, imports
    /// by capability, exports, producers; given a manifest, also the limits,
    /// grants, isolation and failure policy in force per route.
    Audit {
        /// A plugin `.wasm`, or a manifest (every plugin it lists).
        path: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Every request runs this version (the only canary when the plugin has one).
    Promote {
        /// The plugin's name in the manifest.
        plugin: String,
        /// The version's label (or a sha256 prefix).
        #[arg(long)]
        version: Option<String>,
    },
    /// Every canary out of rotation: the stable version serves every request.
    Rollback {
        /// The plugin's name in the manifest.
        plugin: String,
    },
    /// Back to the manifest's weights, every version in rotation.
    Reset {
        /// The plugin's name in the manifest.
        plugin: String,
    },
    /// Each rolled-out plugin's versions, shares, budget windows and removals.
    Status,
    /// Reload the manifest and plugins now.
    Reload,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Write a new plugin crate NAME (Cargo.toml with the size profile,
    /// src/lib.rs with a commented filter, tests/plugin.rs, README.md).
    New {
        /// The crate name: lower-case letters, digits and `-`.
        name: String,
        /// The folder to create it in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

/// `[log]` from the manifest, overridden by the flag. A manifest that does
/// not parse logs with the defaults; loading it again reports the error.
fn log_settings(cli: &Cli) -> LogSettings {
    let manifest = match &cli.command {
        Command::Run { manifest, .. } | Command::Check { manifest, .. } => Some(manifest),
        // `audit` takes a manifest or a plugin file; it logs with the defaults.
        Command::Audit { .. } | Command::Plugin { .. } | Command::Ctl { .. } => None,
        // The report is the output; the gateway's own lines only for problems.
        Command::Test { .. } => {
            return LogSettings {
                format: cli.log_format.unwrap_or_default(),
                level: Some("warn,weir::access=off".into()),
            };
        }
    };
    let from_file = manifest
        .and_then(|m| Manifest::load(m).ok())
        .map(|m| m.doc.log);
    LogSettings {
        format: cli
            .log_format
            .or(from_file.as_ref().map(|l| l.format))
            .unwrap_or_default(),
        level: from_file.and_then(|l| l.level.map(|l| l.into_inner())),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(&log_settings(&cli)) {
        eprintln!("error: cannot start logging: {e}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        match cli.command {
            Command::Check {
                manifest,
                deny_warnings,
            } => check(&manifest, deny_warnings).await,
            Command::Audit { path, json } => match weir::audit::audit(&path).await {
                Ok(report) => {
                    print_report(json, &report, || report.to_text());
                    // Scripts can gate on it: 1 when a plugin would be refused.
                    if report.plugins.iter().all(|p| p.admitted) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(weir::audit::AuditError::Manifest(errors)) => {
                    eprintln!("{errors}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            },
            Command::Test { cases, json } => test(&cases, json).await,
            Command::Plugin {
                command: PluginCommand::New { name, dir },
            } => match weir::scaffold::new_plugin(&name, &dir) {
                Ok(dir) => {
                    println!("created {}", dir.display());
                    println!(
                        "next: cd {} && cargo test   (then see its README.md)",
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            },
            Command::Ctl {
                admin,
                manifest,
                token_env,
                command,
            } => ctl(admin, manifest.as_deref(), &token_env, command).await,
            Command::Run { manifest, no_watch } => match run(manifest, !no_watch).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e:#}");
                    ExitCode::FAILURE
                }
            },
        }
    })
}

/// `weir check`: errors fail; warnings print, and fail with `--deny-warnings`.
async fn check(manifest: &std::path::Path, deny_warnings: bool) -> ExitCode {
    match weir::check_with_warnings(manifest).await {
        Ok((snap, warnings)) => {
            for w in &warnings {
                eprintln!("{w}");
            }
            let verdict = match warnings.len() {
                0 => "ok".to_string(),
                1 => "ok, 1 warning".to_string(),
                n => format!("ok, {n} warnings"),
            };
            println!(
                "{}: {verdict} ({} routes, {} plugins, loaded in {:?})",
                manifest.display(),
                snap.routes.len(),
                snap.plugins.len(),
                snap.load_time
            );
            if deny_warnings && !warnings.is_empty() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a report as pretty JSON or as its text.
fn print_report<R: serde::Serialize>(json: bool, report: &R, text: impl FnOnce() -> String) {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("error: {e}"),
        }
    } else {
        print!("{}", text());
    }
}

/// `weir test`: 0 when every case passes, 1 when one fails, 2 when they cannot run.
async fn test(cases: &std::path::Path, json: bool) -> ExitCode {
    match weir::cases::run(cases).await {
        Ok(report) => {
            print_report(json, &report, || report.to_text());
            if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// `weir ctl`: 0 when the gateway did it, 1 when it refused or cannot be reached.
async fn ctl(
    admin: Option<String>,
    manifest: Option<&std::path::Path>,
    token_env: &str,
    command: CtlCommand,
) -> ExitCode {
    use http::Method;
    use weir::ctl::AdminTarget;
    let from_manifest = match manifest.map(AdminTarget::from_manifest).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let target = AdminTarget {
        addr: admin
            .or_else(|| from_manifest.as_ref().map(|t| t.addr.clone()))
            .unwrap_or_else(|| "127.0.0.1:9901".into()),
        token: std::env::var(token_env)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|t| t.trim().to_string())
            .or_else(|| from_manifest.and_then(|t| t.token)),
    };
    let (method, path) = match &command {
        CtlCommand::Promote { plugin, version } => (
            Method::POST,
            match version {
                Some(v) => format!("/plugins/{plugin}/promote?version={v}"),
                None => format!("/plugins/{plugin}/promote"),
            },
        ),
        CtlCommand::Rollback { plugin } => (Method::POST, format!("/plugins/{plugin}/rollback")),
        CtlCommand::Reset { plugin } => (Method::POST, format!("/plugins/{plugin}/reset")),
        CtlCommand::Status => (Method::GET, "/plugins".into()),
        CtlCommand::Reload => (Method::POST, "/reload".into()),
    };
    match target.call(method, &path).await {
        Ok(body) => {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            match command {
                CtlCommand::Status => {
                    let rollouts: Vec<_> = json
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|p| !p["rollout"].is_null())
                        .collect();
                    if rollouts.is_empty() {
                        println!("no plugin is rolled out in versions");
                    }
                    for p in rollouts {
                        print!("{}", weir::ctl::describe_rollout(&p["rollout"]));
                    }
                }
                CtlCommand::Reload => print!("{body}"),
                _ => print!("{}", weir::ctl::describe_rollout(&json)),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(manifest: PathBuf, watch: bool) -> anyhow::Result<()> {
    // The admin listener comes up first so probes see `/readyz` 503 while plugins compile.
    let starting = weir::Gateway::begin(&manifest).await?;
    if let Some(addr) = starting.admin_addr() {
        tracing::info!(%addr, "admin listening");
    }
    let mut gateway = starting.finish().await?;
    let snap = gateway.snapshot();
    for addr in gateway.local_addrs() {
        tracing::info!(%addr, routes = snap.routes.len(), plugins = snap.plugins.len(), load_time = ?snap.load_time, "weir is listening");
    }
    for route in &snap.routes {
        let chain: Vec<&str> = route.chain.iter().map(|p| &*p.plugin.name).collect();
        tracing::info!(route = %route.id, upstream = %route.upstream.name, plugins = ?chain, "route");
    }
    drop(snap);
    if watch {
        gateway.watch();
    }
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // Errors are logged by the reloader; the old snapshot keeps serving.
                let _ = gateway.reload_because("SIGHUP").await;
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let open = gateway.open_connections();
    tracing::info!(
        open_connections = open,
        "shutting down: draining in-flight requests"
    );
    let dropped = gateway.shutdown().await;
    if dropped > 0 {
        tracing::warn!(dropped, "drain deadline passed; connections closed");
    } else {
        tracing::info!("drained");
    }
    Ok(())
}
