//! Log output: human-readable lines by default, one JSON object per line
//! with `--log-format json` or `[log] format = "json"`. The level comes from
//! `RUST_LOG` if set, else `[log] level`, else `info`.

use std::io::IsTerminal;

use serde::Deserialize;
use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line, event fields at the top level.
    Json,
}

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

/// A per-plugin log budget: a bucket of bytes refilled at a rate per second
/// (one second's worth of burst), and a limit on notes about what was dropped.
#[derive(Debug, Default)]
pub struct LogRate {
    state: std::sync::Mutex<RateState>,
}

#[derive(Debug, Default)]
struct RateState {
    tokens: f64,
    last: Option<std::time::Instant>,
    noted: Option<std::time::Instant>,
}

impl LogRate {
    /// Shortest time between two notes that records are being dropped.
    pub const NOTE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    /// Takes `bytes` from a budget of `per_sec` bytes per second; `false`: drop the record.
    pub fn admit(&self, bytes: usize, per_sec: usize) -> bool {
        let now = std::time::Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let cap = per_sec as f64;
        s.tokens = match s.last {
            None => cap,
            Some(last) => (s.tokens + now.duration_since(last).as_secs_f64() * cap).min(cap),
        };
        s.last = Some(now);
        let kept = s.tokens >= bytes as f64;
        if kept {
            s.tokens -= bytes as f64;
        }
        kept
    }

    /// Whether to log a note about dropped records now (at most once per [`Self::NOTE_EVERY`]).
    pub fn note(&self) -> bool {
        let now = std::time::Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.noted
            .is_some_and(|t| now.duration_since(t) < Self::NOTE_EVERY)
        {
            return false;
        }
        s.noted = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_drops_refilled_at_the_rate() {
        let r = LogRate::default();
        for _ in 0..10 {
            assert!(r.admit(100, 1000));
        }
        assert!(!r.admit(100, 1000));
        assert!(r.note());
        assert!(!r.note(), "one note per NOTE_EVERY");
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert!(r.admit(100, 1000), "refilled at the rate");
    }
}
