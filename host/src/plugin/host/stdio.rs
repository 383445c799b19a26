//! `wasi:cli/stdout` and `stderr` when a plugin is granted `stdio = "log"`:
//! each line becomes a `weir::plugin` log record tagged with plugin and
//! route, up to [`MAX_STDIO_BYTES`] per hook call so a plugin cannot flood
//! the log. Without the grant, WASI's default sink discards the output.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::plugin::limits::MAX_STDIO_BYTES;
use crate::telemetry::metrics::PluginCounters;

/// Longest line kept; longer ones are split.
const MAX_LINE: usize = 4096;

/// Bytes of output still allowed in the current hook call, shared by stdout and stderr.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    left: Arc<AtomicUsize>,
    noted: Arc<AtomicBool>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            left: Arc::new(AtomicUsize::new(MAX_STDIO_BYTES)),
            noted: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Budget {
    pub(crate) fn reset(&self) {
        self.left.store(MAX_STDIO_BYTES, Ordering::Relaxed);
        self.noted.store(false, Ordering::Relaxed);
    }

    /// How many of `n` bytes may be kept.
    fn take(&self, n: usize) -> usize {
        let mut left = self.left.load(Ordering::Relaxed);
        loop {
            let take = n.min(left);
            match self.left.compare_exchange(
                left,
                left - take,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return take,
                Err(now) => left = now,
            }
        }
    }
}

/// A guest output stream that logs lines.
pub(crate) struct LogOutput {
    plugin: Arc<str>,
    route: Arc<str>,
    stream: &'static str,
    budget: Budget,
    counters: Arc<PluginCounters>,
    rate: usize,
}

impl LogOutput {
    pub(crate) fn new(
        plugin: &Arc<str>,
        route: &Arc<str>,
        stream: &'static str,
        budget: &Budget,
        counters: &Arc<PluginCounters>,
        rate: usize,
    ) -> Self {
        LogOutput {
            plugin: plugin.clone(),
            route: route.clone(),
            stream,
            budget: budget.clone(),
            counters: counters.clone(),
            rate,
        }
    }
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            plugin: self.plugin.clone(),
            route: self.route.clone(),
            stream: self.stream,
            budget: self.budget.clone(),
            counters: self.counters.clone(),
            rate: self.rate,
            line: Vec::new(),
        })
    }
}

struct LineWriter {
    plugin: Arc<str>,
    route: Arc<str>,
    stream: &'static str,
    budget: Budget,
    counters: Arc<PluginCounters>,
    rate: usize,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let (plugin, route, stream) = (&*self.plugin, &*self.route, self.stream);
        if self.counters.log_rate.admit(self.line.len(), self.rate) {
            let text = String::from_utf8_lossy(&self.line);
            tracing::info!(target: "weir::plugin", plugin, route, stream, "{}", text.trim_end());
        } else {
            self.counters.log_dropped();
            if self.counters.log_rate.note() {
                let rate = self.rate;
                tracing::warn!(target: "weir::plugin", plugin, route, stream, "logging faster than its {rate} bytes/s `max_log_rate`: lines are dropped (weir_plugin_log_dropped_total)");
            }
        }
        self.line.clear();
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let kept = this.budget.take(buf.len());
        for &b in &buf[..kept] {
            if b == b'\n' || this.line.len() >= MAX_LINE {
                this.emit();
            }
            if b != b'\n' {
                this.line.push(b);
            }
        }
        if kept < buf.len() && !this.budget.noted.swap(true, Ordering::Relaxed) {
            this.emit();
            this.counters.log_dropped();
            if this.counters.log_rate.note() {
                let (plugin, route, stream) = (&*this.plugin, &*this.route, this.stream);
                tracing::warn!(target: "weir::plugin", plugin, route, stream, "output over {MAX_STDIO_BYTES} bytes in one hook call: the rest is dropped (weir_plugin_log_dropped_total)");
            }
        }
        // Everything counts as written: the guest must never block on its log.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().emit();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.emit();
    }
}
