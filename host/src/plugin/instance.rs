//! Instances of one plugin for one route, and the hook calls.

use std::sync::{Arc, Mutex};

use wasmtime::Store;
use wasmtime::component::Resource;

use super::bindings::{self, Action};
use super::host::HostState;
use super::host::http::{RequestState, ResponseState};
use super::{EPOCH_TICK, HOOK_DEADLINE, LoadedPlugin, MAX_MEMORY, Runtime};
use crate::config::Isolation;
use crate::telemetry::metrics::PluginMetrics;

/// Idle instances kept per (route, plugin); more are created under load and dropped after.
const MAX_IDLE: usize = 64;

struct Instance {
    store: Store<HostState>,
    filter: bindings::Plugin,
}

/// A plugin as one route uses it: config, isolation mode and instance pool.
pub struct ChainPlugin {
    /// The compiled plugin.
    pub plugin: Arc<LoadedPlugin>,
    /// The route's id.
    pub route: Arc<str>,
    /// Instance reuse policy.
    pub isolation: Isolation,
    /// Call counts, durations and failures, in the gateway's registry.
    pub metrics: PluginMetrics,
    config_json: String,
    runtime: Arc<Runtime>,
    idle: Mutex<Vec<Instance>>,
}

/// A plugin failed: the request cannot go on as configured.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}` on route `{route}`: {kind}")]
pub struct PluginError {
    /// Plugin name.
    pub plugin: Arc<str>,
    /// Route id.
    pub route: Arc<str>,
    /// What went wrong.
    pub kind: PluginErrorKind,
}

/// What went wrong in a plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginErrorKind {
    /// `init` returned an error: the route's config is invalid.
    #[error("config rejected: {0}")]
    Config(String),
    /// The instance could not be created.
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
    /// The hook trapped (panic, out-of-bounds, memory limit...).
    #[error("trapped: {0}")]
    Trap(String),
    /// The hook ran past its CPU deadline.
    #[error("ran past its {0:?} deadline")]
    Timeout(std::time::Duration),
    /// The hook returned something the gateway refuses (bad status, huge body...).
    #[error("invalid reply: {0}")]
    BadReply(String),
}

impl ChainPlugin {
    /// Sets up `plugin` for `route` and validates `config_json` by creating
    /// (and, when pooled, keeping) a first instance.
    pub async fn new(
        runtime: Arc<Runtime>,
        plugin: Arc<LoadedPlugin>,
        route: Arc<str>,
        config_json: String,
        isolation: Isolation,
        metrics: PluginMetrics,
    ) -> Result<ChainPlugin, PluginError> {
        let chain = ChainPlugin {
            plugin,
            route,
            isolation,
            metrics,
            config_json,
            runtime,
            idle: Mutex::new(Vec::new()),
        };
        let first = chain.instantiate().await?;
        chain.checkin(first);
        Ok(chain)
    }

    /// The plugin's name.
    pub fn name(&self) -> &Arc<str> {
        &self.plugin.name
    }

    fn error(&self, kind: PluginErrorKind) -> PluginError {
        PluginError {
            plugin: self.plugin.name.clone(),
            route: self.route.clone(),
            kind,
        }
    }

    fn trap(&self, e: wasmtime::Error) -> PluginError {
        match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => self.error(PluginErrorKind::Timeout(HOOK_DEADLINE)),
            // The trap code is what an operator needs; the wasm backtrace is noise in a log line.
            Some(trap) => self.error(PluginErrorKind::Trap(trap.to_string())),
            // The outer context is a wasm backtrace; the root cause says what happened
            // (e.g. "forcing trap when growing memory": the memory limit).
            None => self.error(PluginErrorKind::Trap(e.root_cause().to_string())),
        }
    }

    async fn instantiate(&self) -> Result<Instance, PluginError> {
        let state = HostState::new(
            self.plugin.name.clone(),
            self.route.clone(),
            self.runtime.shared.clone(),
            self.metrics.counters.clone(),
            MAX_MEMORY,
        );
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks());
        let filter = self
            .plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| self.error(PluginErrorKind::Instantiate(format!("{e:#}"))))?;
        store.set_epoch_deadline(deadline_ticks());
        filter
            .weir_plugin_filter()
            .call_init(&mut store, &self.config_json)
            .await
            .map_err(|e| self.trap(e))?
            .map_err(|msg| self.error(PluginErrorKind::Config(msg)))?;
        Ok(Instance { store, filter })
    }

    async fn checkout(&self) -> Result<Instance, PluginError> {
        if self.isolation == Isolation::Pooled {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            if let Some(inst) = idle {
                return Ok(inst);
            }
        }
        self.instantiate().await
    }

    fn checkin(&self, inst: Instance) {
        if self.isolation == Isolation::Pooled {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(inst);
            }
        }
    }

    /// Runs the request hook. The request comes back (possibly changed)
    /// unless the instance failed in a way that lost it.
    pub async fn on_request(
        &self,
        req: RequestState,
    ) -> (Option<RequestState>, Result<Action, PluginError>) {
        let mut inst = match self.checkout().await {
            Ok(i) => i,
            Err(e) => return (Some(req), Err(e)),
        };
        let res = match inst.store.data_mut().table().push(req) {
            Ok(r) => r,
            Err(e) => return (None, Err(self.error(PluginErrorKind::Trap(e.to_string())))),
        };
        inst.store.set_epoch_deadline(deadline_ticks());
        let handle = Resource::<RequestState>::new_borrow(res.rep());
        let result = inst
            .filter
            .weir_plugin_filter()
            .call_on_request(&mut inst.store, handle)
            .await;
        let req = inst.store.data_mut().table().delete(res).ok();
        match result {
            Ok(action) => {
                self.checkin(inst);
                (req, Ok(action))
            }
            // A failed instance may be in any state: it is dropped, never reused.
            Err(e) => (req, Err(self.trap(e))),
        }
    }

    /// Runs the response hook with a read-only view of the request.
    pub async fn on_response(
        &self,
        req: RequestState,
        resp: ResponseState,
    ) -> (
        Option<(RequestState, ResponseState)>,
        Result<(), PluginError>,
    ) {
        let mut inst = match self.checkout().await {
            Ok(i) => i,
            Err(e) => return (Some((req, resp)), Err(e)),
        };
        let table = inst.store.data_mut().table();
        let (rq, rs) = match (table.push(req), table.push(resp)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => {
                return (
                    None,
                    Err(self.error(PluginErrorKind::Trap("resource table full".into()))),
                );
            }
        };
        inst.store.set_epoch_deadline(deadline_ticks());
        let (hq, hs) = (
            Resource::new_borrow(rq.rep()),
            Resource::new_borrow(rs.rep()),
        );
        let result = inst
            .filter
            .weir_plugin_filter()
            .call_on_response(&mut inst.store, hq, hs)
            .await;
        let table = inst.store.data_mut().table();
        let back = table.delete(rq).ok().zip(table.delete(rs).ok());
        match result {
            Ok(()) => {
                self.checkin(inst);
                (back, Ok(()))
            }
            Err(e) => (back, Err(self.trap(e))),
        }
    }

    /// Number of idle pooled instances (for tests and metrics).
    pub fn idle_instances(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

fn deadline_ticks() -> u64 {
    (HOOK_DEADLINE.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
}
