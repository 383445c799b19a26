//! `weir:plugin/log`: plugin log records go to `tracing`, tagged with plugin and route.

use std::fmt::Write;

use super::HostState;
use crate::plugin::bindings::weir::plugin::log::{Host, Level};
use crate::plugin::limits::MAX_LOG_RECORDS;

/// Longest message kept; the rest is cut so a plugin cannot flood the log with one call.
const MAX_MESSAGE: usize = 4096;

impl Host for HostState {
    fn log(
        &mut self,
        level: Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        self.charge()?;
        self.budget.log_records += 1;
        let (plugin, route) = (&*self.plugin, &*self.route);
        if self.budget.log_records > MAX_LOG_RECORDS {
            self.counters.log_dropped();
            if self.counters.log_rate.note() {
                tracing::warn!(target: "weir::plugin", plugin, route, "more than {MAX_LOG_RECORDS} log records in one hook call: the rest is dropped (weir_plugin_log_dropped_total)");
            }
            return Ok(());
        }
        let mut message = message;
        truncate(&mut message, MAX_MESSAGE);
        let mut extra = String::new();
        for (k, v) in fields.iter().take(32) {
            let _ = write!(extra, "{k}={v:?} ");
        }
        truncate(&mut extra, MAX_MESSAGE);
        let extra = extra.trim_end();
        if !self
            .counters
            .log_rate
            .admit(message.len() + extra.len(), self.log_rate)
        {
            self.counters.log_dropped();
            if self.counters.log_rate.note() {
                let rate = self.log_rate;
                tracing::warn!(target: "weir::plugin", plugin, route, "logging faster than its {rate} bytes/s `max_log_rate`: records are dropped (weir_plugin_log_dropped_total)");
            }
            return Ok(());
        }
        match level {
            Level::Trace => {
                tracing::trace!(target: "weir::plugin", plugin, route, fields = extra, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "weir::plugin", plugin, route, fields = extra, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "weir::plugin", plugin, route, fields = extra, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "weir::plugin", plugin, route, fields = extra, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "weir::plugin", plugin, route, fields = extra, "{message}")
            }
        }
        Ok(())
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}
