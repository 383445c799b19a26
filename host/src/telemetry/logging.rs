//! Log output: human-readable lines by default, one JSON object per line
//! with `--log-format json` or `[log] format = "json"`. The level comes from
//! `RUST_LOG` if set, else `[log] level`, else `info`.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

pub use crate::config::LogFormat;

/// How the process logs.
#[derive(Debug, Clone, Default)]
pub struct LogSettings {
    /// Line format.
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `info,weir::access=off`;
    /// `RUST_LOG` wins over it.
    pub level: Option<String>,
}

fn filter(level: Option<&str>) -> EnvFilter {
    // A RUST_LOG that does not parse falls back to the manifest, not to nothing.
    if std::env::var_os(EnvFilter::DEFAULT_ENV).is_some()
        && let Ok(f) = EnvFilter::try_from_default_env()
    {
        return f;
    }
    level
        .and_then(|l| EnvFilter::try_new(l).ok())
        .unwrap_or_else(|| EnvFilter::new("info"))
}

/// Checks an `[log] level` directive.
pub fn check_level(level: &str) -> Result<(), String> {
    EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A subscriber writing to `writer`; [`init`] uses stderr. Tests pass a buffer.
pub fn subscriber<W>(
    settings: &LogSettings,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let registry = tracing_subscriber::registry().with(filter(settings.level.as_deref()));
    match settings.format {
        LogFormat::Json => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .json()
                    // Event fields at the top level: `{"status":200,...}`, not `{"fields":{...}}`.
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(writer),
            ),
        ),
        LogFormat::Human => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(writer),
            ),
        ),
    }
}

/// Installs the process-wide subscriber, writing to stderr.
pub fn init(settings: &LogSettings) -> Result<(), String> {
    let ansi = std::io::stderr().is_terminal() && settings.format == LogFormat::Human;
    tracing::subscriber::set_global_default(subscriber(settings, std::io::stderr, ansi))
        .map_err(|e| e.to_string())
}
