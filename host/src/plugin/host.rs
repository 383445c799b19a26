//! What the host gives a plugin instance: one module per imported WIT
//! interface, plus the store data that ties them together.

pub mod clock;
pub mod http;
pub mod log;
pub mod metrics;
pub mod state;

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::telemetry::metrics::PluginCounters;

/// Store data of one plugin instance.
pub struct HostState {
    table: ResourceTable,
    wasi: WasiCtx,
    pub(crate) limits: StoreLimits,
    /// The plugin's name in the manifest.
    pub(crate) plugin: Arc<str>,
    /// The route this instance serves.
    pub(crate) route: Arc<str>,
    /// State shared by every instance of every plugin (keys are namespaced per plugin).
    pub(crate) shared: Arc<state::SharedState>,
    /// This plugin's own counters, in its gateway's registry.
    pub(crate) counters: Arc<PluginCounters>,
}

impl HostState {
    pub(crate) fn new(
        plugin: Arc<str>,
        route: Arc<str>,
        shared: Arc<state::SharedState>,
        counters: Arc<PluginCounters>,
        max_memory: usize,
    ) -> Self {
        HostState {
            table: ResourceTable::new(),
            // Inert WASI: no preopened dirs, no env, no args, no sockets, stdio closed.
            // Rust's std imports some WASI interfaces even when unused; they link but reach nothing.
            wasi: WasiCtx::builder().build(),
            limits: StoreLimitsBuilder::new()
                .memory_size(max_memory)
                .instances(16)
                .tables(16)
                .memories(4)
                .trap_on_grow_failure(true)
                .build(),
            plugin,
            route,
            shared,
            counters,
        }
    }

    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
