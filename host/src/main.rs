//! The `weir` command: run or check a gateway manifest, or audit plugins.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Weir: an API gateway whose policies are sandboxed WebAssembly components.
#[derive(Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the routes of a manifest.
    Run {
        /// Path to the manifest (TOML).
        manifest: PathBuf,
    },
    /// Load a manifest and every plugin and config it references, then exit:
    /// 0 when it would run, 1 with every error found.
    Check {
        /// Path to the manifest (TOML).
        manifest: PathBuf,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
            Command::Check { manifest } => match weir::check(&manifest).await {
                Ok(snap) => {
                    println!(
                        "{}: ok ({} routes, {} plugins, loaded in {:?})",
                        manifest.display(),
                        snap.routes.len(),
                        snap.plugins.len(),
                        snap.load_time
                    );
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    ExitCode::FAILURE
                }
            },
            Command::Audit { path, json } => match weir::audit::audit(&path).await {
                Ok(report) => {
                    if json {
                        match serde_json::to_string_pretty(&report) {
                            Ok(text) => println!("{text}"),
                            Err(e) => eprintln!("error: {e}"),
                        }
                    } else {
                        print!("{}", report.to_text());
                    }
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
            Command::Run { manifest } => match run(manifest).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e:#}");
                    ExitCode::FAILURE
                }
            },
        }
    })
}

async fn run(manifest: PathBuf) -> anyhow::Result<()> {
    let gateway = weir::Gateway::start(&manifest).await?;
    let snap = gateway.snapshot();
    for addr in gateway.local_addrs() {
        tracing::info!(%addr, routes = snap.routes.len(), plugins = snap.plugins.len(), load_time = ?snap.load_time, "weir is listening");
    }
    for route in &snap.routes {
        let chain: Vec<&str> = route.chain.iter().map(|p| &*p.plugin.name).collect();
        tracing::info!(route = %route.id, upstream = %route.upstream.name, plugins = ?chain, "route");
    }
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    gateway.shutdown().await;
    Ok(())
}
