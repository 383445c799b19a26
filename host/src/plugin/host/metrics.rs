//! `weir:plugin/metrics`: a plugin's own counters, exported with its name
//! and route as labels, validated and capped per plugin (see
//! [`crate::telemetry::metrics::PluginCounters`]).

use super::HostState;
use crate::plugin::bindings::weir::plugin::metrics::Host;

impl Host for HostState {
    fn counter_add(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        delta: u64,
    ) -> wasmtime::Result<()> {
        self.charge()?;
        // A refused call is counted by the host and otherwise ignored: metrics must not fail a request.
        if let Err(e) = self.counters.add(&self.route, &name, labels, delta) {
            tracing::debug!(target: "weir::plugin", plugin = &*self.plugin, route = &*self.route, error = %e, "counter-add refused");
        }
        Ok(())
    }
}
