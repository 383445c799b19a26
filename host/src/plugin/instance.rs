//! Instances of one plugin for one route, the hook calls, and how a failure
//! is classified, logged and counted.
//!
//! Every hook call runs under three bounds: a CPU deadline (epoch ticks seen
//! while wasm runs; the call yields its thread at each tick, so a busy plugin
//! shares its worker instead of holding it), an outer `call_timeout` on wall
//! time (covers waits inside host calls, e.g. a WASI sleep), and a count of
//! host calls. An instance that fails in any way is dropped, never reused.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, StatusCode};
use wasmtime::component::Resource;
use wasmtime::{Store, UpdateDeadline};

use super::bindings::{self, Action, Hooks};
use super::direct::DirectHooks;
use super::guard::{Guard, Pass, default_concurrency};
use super::host::HostState;
use super::host::body::Bodies;
use super::host::http::{RequestState, ResponseState, reply_parts};
use super::host::outbound::{Outbound, OutboundClient};
use super::host::state::{RedisBackend, StateHandle, StateUnavailable};
use super::limits::{
    HostCallLimit, Limits, MIN_INIT_DEADLINE, MIN_INIT_TIMEOUT, MemoryLimit, Policy, StateQuota,
};
use super::preinit::{self, NoSnapshot, Preinit};
use super::{LoadedPlugin, Runtime};
use crate::background::Background;
use crate::config::{Fail, Isolation};
use crate::telemetry::metrics::PluginMetrics;

/// Idle instances kept per (route, plugin); more are created under load and dropped after.
const MAX_IDLE: usize = 64;

struct Instance {
    store: Store<HostState>,
    calls: Calls,
    hooks: Hooks,
}

/// How an instance's hooks are called.
enum Calls {
    /// On a fiber, so host calls may wait.
    Async(bindings::Plugin),
    /// Directly: the plugin can never wait ([`super::direct`]).
    Direct(DirectHooks),
}

impl Instance {
    /// The bodies its `init` asked for.
    fn bodies(&self) -> Bodies {
        self.store.data().bodies
    }
}

/// The instance one request holds of one plugin, from its first hook to the
/// end of the request: `on-request` and `on-response` see the same `self`.
/// Give it back with [`ChainPlugin::release`] (a [`super::Chain`] does).
#[derive(Default)]
pub struct Lease(Option<Instance>);

/// What a failure of this plugin does to a request of this route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailPolicy {
    /// `fail`: answer (closed) or skip the plugin (open).
    pub mode: Fail,
    /// `fail_status`: the answer when closed.
    pub status: StatusCode,
}

impl Default for FailPolicy {
    fn default() -> Self {
        FailPolicy {
            mode: Fail::Closed,
            status: StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// What a request hook decided, checked against the plugin's limits.
#[derive(Debug)]
pub enum Outcome {
    /// Go on with the chain.
    Continue,
    /// Answer the client with this.
    Respond {
        /// Status code.
        status: StatusCode,
        /// Headers.
        headers: HeaderMap,
        /// Body.
        body: Vec<u8>,
    },
}

/// A plugin as one route uses it: config, isolation mode, sandbox policy,
/// failure policy and instance pool.
pub struct ChainPlugin {
    /// The compiled plugin.
    pub plugin: Arc<LoadedPlugin>,
    /// The route's id.
    pub route: Arc<str>,
    /// Instance reuse policy.
    pub isolation: Isolation,
    /// Call counts, durations and failures, in the gateway's registry.
    pub metrics: PluginMetrics,
    /// Limits and grants (from `[plugins.NAME]`).
    pub policy: Arc<Policy>,
    /// What a failure does (from `[[routes.plugins]]`).
    pub fail: FailPolicy,
    /// The shared state backend (`[state]`), if the manifest has one.
    state: Option<Arc<RedisBackend>>,
    config_json: String,
    runtime: Arc<Runtime>,
    idle: Mutex<Vec<Instance>>,
    /// Most instances seen idle at once: what this pool needed under its load.
    peak: AtomicUsize,
    failures: [AtomicU64; PluginErrorKind::REASONS.len()],
    guard: Arc<Guard>,
    hooks: Hooks,
    bodies: Bodies,
    outbound: Option<Arc<Outbound>>,
    /// Hooks are called without a fiber or a timer ([`super::direct`]).
    direct: bool,
    /// With `isolation = "request"`: the plugin as `init` left it for this
    /// route, so fresh instances skip `init` ([`super::preinit`]).
    preinit: Option<Arc<Preinit>>,
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
    /// The code trapped (panic, unreachable, stack overflow, exit...).
    #[error("trapped: {0}")]
    Trap(String),
    /// The code ran past its CPU deadline.
    #[error("ran past its {0:?} CPU deadline")]
    CpuDeadline(Duration),
    /// The call took longer than `call_timeout` (waits included).
    #[error("took longer than its {0:?} call timeout")]
    CallTimeout(Duration),
    /// Linear memory would have grown past `max_memory`.
    #[error("went over its {0}-byte memory limit")]
    MemoryLimit(usize),
    /// Too many host calls in one hook call.
    #[error("made more than {0} host calls in one hook call")]
    HostCallLimit(u32),
    /// Handed the host more data in one call than allowed (see [`super::Limits::max_transfer`]).
    #[error("handed the host more than {0} bytes in one call")]
    TransferLimit(usize),
    /// The hook returned something the gateway refuses (bad status, huge reply...).
    #[error("invalid reply: {0}")]
    BadReply(String),
    /// Not called: its breaker is open after hook calls in a row ran out of time.
    #[error("not called: its breaker is open for another {0:?} after repeated CPU-deadline hits")]
    CircuitOpen(Duration),
    /// A new key would pass the plugin's host-state quota.
    #[error("{0}")]
    StateQuota(StateQuota),
    /// The shared state backend did not answer, and the plugin fails closed.
    #[error("{0}")]
    StateBackend(StateUnavailable),
    /// A body it asked for is larger than its `max_body_bytes`.
    #[error("a body it asked for is larger than its `max_body_bytes` ({0} bytes)")]
    BodyLimit(usize),
}

impl PluginErrorKind {
    /// Every [`PluginErrorKind::reason`], in declaration order.
    pub const REASONS: [&'static str; 13] = [
        "config",
        "instantiate",
        "trap",
        "cpu_deadline",
        "call_timeout",
        "memory_limit",
        "host_call_limit",
        "transfer_limit",
        "bad_reply",
        "circuit_open",
        "state_quota",
        "state_backend",
        "body_limit",
    ];

    fn index(&self) -> usize {
        match self {
            PluginErrorKind::Config(_) => 0,
            PluginErrorKind::Instantiate(_) => 1,
            PluginErrorKind::Trap(_) => 2,
            PluginErrorKind::CpuDeadline(_) => 3,
            PluginErrorKind::CallTimeout(_) => 4,
            PluginErrorKind::MemoryLimit(_) => 5,
            PluginErrorKind::HostCallLimit(_) => 6,
            PluginErrorKind::TransferLimit(_) => 7,
            PluginErrorKind::BadReply(_) => 8,
            PluginErrorKind::CircuitOpen(_) => 9,
            PluginErrorKind::StateQuota(_) => 10,
            PluginErrorKind::StateBackend(_) => 11,
            PluginErrorKind::BodyLimit(_) => 12,
        }
    }

    /// A short stable label, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        Self::REASONS[self.index()]
    }

    /// Sorts an error out of wasmtime; `None` when it is none of ours or a trap.
    fn classify(
        e: &wasmtime::Error,
        limits: &Limits,
        cpu_deadline: Duration,
    ) -> Option<PluginErrorKind> {
        if let Some(m) = e.downcast_ref::<MemoryLimit>() {
            return Some(PluginErrorKind::MemoryLimit(m.limit));
        }
        if let Some(h) = e.downcast_ref::<HostCallLimit>() {
            return Some(PluginErrorKind::HostCallLimit(h.0));
        }
        if let Some(q) = e.downcast_ref::<StateQuota>() {
            return Some(PluginErrorKind::StateQuota(*q));
        }
        if let Some(u) = e.downcast_ref::<StateUnavailable>() {
            return Some(PluginErrorKind::StateBackend(u.clone()));
        }
        // wasmtime's error type for this is private; its message is stable.
        if e.chain().any(|c| {
            c.to_string()
                .contains("fuel allocated for hostcalls has been exhausted")
        }) {
            return Some(PluginErrorKind::TransferLimit(limits.max_transfer()));
        }
        match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => Some(PluginErrorKind::CpuDeadline(cpu_deadline)),
            // The trap code and the plugin's own function it happened in; the
            // rest of the wasm backtrace is noise in a log line.
            Some(trap) => Some(PluginErrorKind::Trap(match trap_site(e) {
                Some(f) => format!("{trap}, in `{f}`"),
                None => trap.to_string(),
            })),
            None => None,
        }
    }

    fn from_call(e: wasmtime::Error, limits: &Limits, cpu_deadline: Duration) -> PluginErrorKind {
        match Self::classify(&e, limits, cpu_deadline) {
            // Some memory-limit hits surface as a trap whose root cause says so.
            Some(PluginErrorKind::Trap(_)) | None
                if format!("{e:#}").contains("growing memory") =>
            {
                PluginErrorKind::MemoryLimit(limits.max_memory)
            }
            Some(kind) => kind,
            None => PluginErrorKind::Trap(format!("{e}")),
        }
    }
}

/// The innermost function of the plugin's own code in a trap's backtrace:
/// named frames (components keep their name section unless stripped), past
/// the standard library's and the SDK's plumbing (panic, abort, bindings).
fn trap_site(e: &wasmtime::Error) -> Option<String> {
    const PLUMBING: [&str; 9] = [
        "core::",
        "std::",
        "alloc::",
        "__rust",
        "rust_panic",
        "panic_abort",
        "abort",
        "wit_bindgen",
        "weir_sdk::",
    ];
    let bt = e.downcast_ref::<wasmtime::WasmBacktrace>()?;
    bt.frames()
        .iter()
        .filter_map(|f| f.func_name())
        // `{:#}`: the path without the hash suffix.
        .map(|name| format!("{:#}", rustc_demangle::demangle(name)))
        .find(|name| {
            !PLUMBING.iter().any(|p| name.starts_with(p))
                && !name.starts_with("<core::")
                && !name.starts_with("<alloc::")
                && !name.starts_with("<std::")
                && !name.contains("__export")
                && !name.starts_with("weir:plugin/")
        })
}

/// The request or response a hook call was handed, back from the store.
fn taken<T>(v: Option<T>) -> Result<T, PluginErrorKind> {
    v.ok_or_else(|| PluginErrorKind::Trap("the hook's request or response is gone".into()))
}

/// Whether a hook call ran out of CPU or wall time: a strike for the breaker.
fn burned<T>(result: &Result<T, PluginErrorKind>) -> bool {
    matches!(
        result,
        Err(PluginErrorKind::CpuDeadline(_) | PluginErrorKind::CallTimeout(_))
    )
}

/// How one route uses one plugin: its config and the policies in force.
#[derive(Debug, Clone)]
pub struct PluginUse {
    /// The route's `config` table, as JSON.
    pub config_json: String,
    /// Instance reuse (`[plugins.NAME] isolation`).
    pub isolation: Isolation,
    /// Limits and grants (`[plugins.NAME]`).
    pub policy: Arc<Policy>,
    /// Failure policy (`[[routes.plugins]] fail`).
    pub fail: FailPolicy,
    /// The shared state backend (`[state]`); `None`: state in memory.
    pub state: Option<Arc<RedisBackend>>,
    /// The manifest's upstreams, for a plugin granted `grants.http`.
    pub outbound: Option<Arc<dyn OutboundClient>>,
}

impl ChainPlugin {
    /// Sets up `plugin` for `route` and validates its config by creating
    /// (and, when pooled, keeping) a first instance.
    pub async fn new(
        runtime: Arc<Runtime>,
        plugin: Arc<LoadedPlugin>,
        route: Arc<str>,
        usage: PluginUse,
        metrics: PluginMetrics,
    ) -> Result<ChainPlugin, PluginError> {
        let PluginUse {
            config_json,
            isolation,
            policy,
            fail,
            state,
            outbound,
        } = usage;
        let guard = Arc::new(Guard::new(
            policy
                .limits
                .max_concurrency
                .unwrap_or_else(default_concurrency),
            policy.limits.cpu_deadline,
            &plugin.name,
            &route,
        ));
        let outbound = outbound
            .filter(|_| policy.grants.http.as_ref().is_some_and(|h| !h.is_empty()))
            .map(|client| {
                Arc::new(Outbound {
                    client,
                    granted: policy.grants.http.clone().unwrap_or_default().into(),
                    max_calls: policy.limits.max_outbound_calls,
                    max_body: policy.limits.max_outbound_body,
                    guard: guard.clone(),
                })
            });
        let mut chain = ChainPlugin {
            plugin,
            route,
            isolation,
            metrics,
            policy,
            fail,
            state,
            config_json,
            runtime,
            idle: Mutex::new(Vec::new()),
            peak: AtomicUsize::new(0),
            failures: Default::default(),
            guard,
            hooks: Hooks::empty(),
            bodies: Bodies::empty(),
            outbound,
            direct: false,
            preinit: None,
        };
        // Output granted to the log goes through a writer task a direct call cannot wait for.
        chain.direct = chain.plugin.direct.is_some()
            && chain.policy.grants.stdio != crate::config::Stdio::Log
            // A round trip to the shared backend waits.
            && !(chain.state.is_some()
                && chain.policy.state == crate::config::StateBackend::Shared
                && chain.plugin.imports.iter().any(|i| i == super::direct::STATE));
        // wasmtime refuses to instantiate directly a component that uses an
        // import that may wait (state, outbound, cache, a WASI sleep): such a
        // plugin is called on a fiber. A refusal for any other reason shows
        // again, with its message, when the async path tries.
        let direct_first = match chain.direct {
            true => match chain.instantiate_direct() {
                Err(PluginErrorKind::Instantiate(e)) => {
                    tracing::debug!(target: "weir::plugin", plugin = &*chain.plugin.name, error = %e, "called on a fiber");
                    chain.direct = false;
                    None
                }
                first => Some(first),
            },
            false => None,
        };
        // `init` runs off the request path, but must not hang a load either.
        let limit = chain.policy.limits.call_timeout.max(MIN_INIT_TIMEOUT);
        let first = match direct_first {
            Some(first) => first,
            None => tokio::time::timeout(limit, chain.instantiate())
                .await
                .unwrap_or(Err(PluginErrorKind::CallTimeout(limit))),
        }
        .map_err(|kind| chain.error(kind))?;
        // What the first instance declared holds for the route: same code, same config.
        chain.hooks = first.hooks;
        chain.bodies = first.bodies();
        chain.checkin(first);
        if chain.isolation == Isolation::Request && chain.direct {
            chain.preinit = chain.preinit().await;
        }
        Ok(chain)
    }

    /// A snapshot of this plugin after `init` with this route's config, taken
    /// on the compile thread; `None` (logged) when `init` calls the host or
    /// the snapshot fails: instances then run `init` themselves.
    async fn preinit(&self) -> Option<Arc<Preinit>> {
        let (sha256, config_json) = (&self.plugin.sha256, &self.config_json);
        if let Some(cached) = self.runtime.preinits.get(sha256, config_json) {
            return Some(cached);
        }
        let runtime = self.runtime.clone();
        let wasm = self.plugin.wasm.clone();
        let config = self.config_json.clone();
        let store = self.store();
        let taken = Background::compile()
            .run(move || preinit::take(&runtime, &wasm, &config, store))
            .await
            .map_err(|e| NoSnapshot::Failed(e.to_string()))
            .flatten();
        let plugin = &*self.plugin.name;
        let route = &*self.route;
        match taken {
            Ok(preinit) => {
                tracing::info!(target: "weir::plugin", plugin, route, "snapshot taken after init: fresh instances skip it");
                let preinit = Arc::new(preinit);
                self.runtime.preinits.put(sha256, config_json, &preinit);
                Some(preinit)
            }
            Err(e) => {
                match e {
                    NoSnapshot::Impure => {
                        tracing::debug!(target: "weir::plugin", plugin, route, "no snapshot after init: {e}; each request runs init")
                    }
                    NoSnapshot::Failed(_) => {
                        tracing::warn!(target: "weir::plugin", plugin, route, "no snapshot after init: {e}; each request runs init")
                    }
                }
                None
            }
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &Arc<str> {
        &self.plugin.name
    }

    /// Whether its hooks are called directly, without a fiber or a timer
    /// (it imports nothing that may wait; see [`super::direct`]).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Whether `init` asked for `on-request` on this route.
    pub fn wants_request(&self) -> bool {
        self.hooks.contains(Hooks::ON_REQUEST)
    }

    /// Whether `init` asked for `on-response` on this route.
    pub fn wants_response(&self) -> bool {
        self.hooks.contains(Hooks::ON_RESPONSE)
    }

    /// Logs and counts a body over this plugin's `max_body_bytes` (the
    /// request is refused whatever `fail` says).
    pub fn body_too_large(&self, hook: &'static str) {
        self.failed(
            hook,
            PluginErrorKind::BodyLimit(self.policy.limits.max_body_bytes),
        );
    }

    /// Whether `init` asked for the request body (`body.buffer`).
    pub fn wants_request_body(&self) -> bool {
        self.bodies.contains(Bodies::REQUEST)
    }

    /// Whether `init` asked for the response body (`body.buffer`).
    pub fn wants_response_body(&self) -> bool {
        self.bodies.contains(Bodies::RESPONSE)
    }

    /// Whether a request keeps its instance from `on-request` to `on-response`.
    pub fn keeps_instance(&self) -> bool {
        self.wants_response() && self.hooks.contains(Hooks::SAME_INSTANCE)
    }

    /// Failures of this plugin on this route since it was loaded.
    pub fn failures(&self) -> u64 {
        self.failures
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Failures by [`PluginErrorKind::reason`], every reason listed.
    pub fn failures_by_reason(&self) -> Vec<(&'static str, u64)> {
        PluginErrorKind::REASONS
            .iter()
            .zip(&self.failures)
            .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
            .collect()
    }

    fn error(&self, kind: PluginErrorKind) -> PluginError {
        PluginError {
            plugin: self.plugin.name.clone(),
            route: self.route.clone(),
            kind,
        }
    }

    /// Logs and counts a failure during a request.
    fn failed(&self, hook: &'static str, kind: PluginErrorKind) -> PluginError {
        self.failures[kind.index()].fetch_add(1, Ordering::Relaxed);
        self.metrics.failed(kind.index());
        let fail = match self.fail.mode {
            Fail::Closed => "closed",
            Fail::Open => "open",
        };
        // An open breaker was logged once when it opened; a line per refused request would flood.
        if matches!(kind, PluginErrorKind::CircuitOpen(_)) {
            tracing::debug!(target: "weir::plugin", plugin = &*self.plugin.name, route = &*self.route, hook, reason = kind.reason(), fail, "plugin failed: {kind}");
        } else {
            tracing::warn!(
                target: "weir::plugin",
                plugin = &*self.plugin.name,
                route = &*self.route,
                hook,
                reason = kind.reason(),
                fail,
                "plugin failed: {kind}"
            );
        }
        self.error(kind)
    }

    fn store(&self) -> Store<HostState> {
        let limits = &self.policy.limits;
        let mut state = HostState::new(
            self.plugin.name.clone(),
            self.route.clone(),
            StateHandle::new(
                &self.runtime.shared,
                self.state.as_ref(),
                &self.plugin.name,
                &self.policy,
                &self.guard,
            ),
            self.metrics.counters.clone(),
            &self.policy,
        );
        state.outbound = self.outbound.clone();
        state.direct = self.direct;
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(limits.max_transfer());
        // Each tick while wasm runs: yield the thread (a direct call cannot),
        // and interrupt once the budget is spent.
        store.epoch_deadline_callback(|mut cx| {
            let direct = cx.data().direct;
            let budget = &mut cx.data_mut().budget;
            budget.ticks += 1;
            Ok(if budget.ticks >= budget.max_ticks {
                UpdateDeadline::Interrupt
            } else if direct {
                UpdateDeadline::Continue(1)
            } else {
                // tokio's yield lets the I/O driver run too, not just other ready tasks.
                UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
            })
        });
        let init_timeout = limits.call_timeout.max(MIN_INIT_TIMEOUT);
        store
            .data_mut()
            .begin_call(limits.init_ticks(), Instant::now() + init_timeout);
        store.data_mut().in_init = true;
        store.set_epoch_deadline(1);
        store
    }

    async fn instantiate(&self) -> Result<Instance, PluginErrorKind> {
        if self.direct {
            return self.instantiate_direct();
        }
        let limits = &self.policy.limits;
        let init_deadline = limits.cpu_deadline.max(MIN_INIT_DEADLINE);
        let mut store = self.store();
        let filter = self
            .plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| {
                PluginErrorKind::classify(&e, limits, init_deadline)
                    .unwrap_or_else(|| PluginErrorKind::Instantiate(format!("{e:#}")))
            })?;
        let hooks = filter
            .weir_plugin_filter()
            .call_init(&mut store, &self.config_json)
            .await
            .map_err(|e| PluginErrorKind::from_call(e, limits, init_deadline))?
            .map_err(PluginErrorKind::Config)?;
        store.data_mut().in_init = false;
        Ok(Instance {
            store,
            calls: Calls::Async(filter),
            hooks,
        })
    }

    /// Instantiates and runs `init` without a fiber.
    fn instantiate_direct(&self) -> Result<Instance, PluginErrorKind> {
        let limits = &self.policy.limits;
        let init_deadline = limits.cpu_deadline.max(MIN_INIT_DEADLINE);
        let Some((pre, exports)) = &self.plugin.direct else {
            return Err(PluginErrorKind::Instantiate(
                "not linked for direct calls".into(),
            ));
        };
        let instantiate = |e: wasmtime::Error| {
            PluginErrorKind::classify(&e, limits, init_deadline)
                .unwrap_or_else(|| PluginErrorKind::Instantiate(format!("{e:#}")))
        };
        let mut store = self.store();
        store.data_mut().in_init = false;
        if let Some(preinit) = &self.preinit {
            let calls = preinit.instantiate(&mut store).map_err(instantiate)?;
            return Ok(Instance {
                store,
                calls: Calls::Direct(calls),
                hooks: self.hooks,
            });
        }
        store.data_mut().in_init = true;
        let instance = pre.instantiate(&mut store).map_err(instantiate)?;
        let typed = |e: wasmtime::Error| PluginErrorKind::Instantiate(format!("{e:#}"));
        let calls = exports.hooks(&mut store, &instance).map_err(typed)?;
        let (hooks,) = exports
            .init(&mut store, &instance)
            .map_err(typed)?
            .call(&mut store, (self.config_json.clone(),))
            .map_err(|e| PluginErrorKind::from_call(e, limits, init_deadline))?;
        let hooks = hooks.map_err(PluginErrorKind::Config)?;
        store.data_mut().in_init = false;
        Ok(Instance {
            store,
            calls: Calls::Direct(calls),
            hooks,
        })
    }

    async fn checkout(&self) -> Result<Instance, PluginErrorKind> {
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
                if idle.len() > self.peak.load(Ordering::Relaxed) {
                    self.peak.store(idle.len(), Ordering::Relaxed);
                }
            }
        }
    }

    fn begin(&self, inst: &mut Instance) {
        inst.store.data_mut().begin_call(
            self.policy.limits.hook_ticks(),
            Instant::now() + self.policy.limits.call_timeout,
        );
        inst.store.set_epoch_deadline(1);
    }

    /// Runs the request hook under the plugin's limits. On failure the
    /// request is gone with the instance; the failure is logged and counted.
    pub async fn on_request(
        &self,
        lease: &mut Lease,
        req: Box<RequestState>,
    ) -> Result<(Box<RequestState>, Outcome), PluginError> {
        let timeout = self.policy.limits.call_timeout;
        let pass = self
            .enter(timeout)
            .await
            .map_err(|kind| self.failed("on-request", kind))?;
        let result = self.bounded(timeout, self.request_hook(lease, req)).await;
        pass.done(burned(&result));
        result.map_err(|kind| self.failed("on-request", kind))
    }

    async fn request_hook(
        &self,
        lease: &mut Lease,
        req: Box<RequestState>,
    ) -> Result<(Box<RequestState>, Outcome), PluginErrorKind> {
        let limits = &self.policy.limits;
        let mut inst = self.take(lease).await?;
        self.begin(&mut inst);
        inst.store.data_mut().request = Some(req);
        let action = match &inst.calls {
            Calls::Direct(h) => h
                .on_request
                .call(&mut inst.store, (Resource::new_borrow(0),))
                .map(|(a,)| a),
            Calls::Async(f) => {
                f.weir_plugin_filter()
                    .call_on_request(&mut inst.store, Resource::new_borrow(0))
                    .await
            }
        }
        .map_err(|e| PluginErrorKind::from_call(e, limits, limits.cpu_deadline))?;
        let req = taken(inst.store.data_mut().request.take())?;
        let outcome = match action {
            Action::Continue => Outcome::Continue,
            Action::Respond(reply) => {
                let lim = inst.store.data().headers;
                let (status, headers, body) = reply_parts(reply, lim, limits.max_reply_body)
                    .map_err(PluginErrorKind::BadReply)?;
                Outcome::Respond {
                    status,
                    headers,
                    body,
                }
            }
        };
        // Only an instance that did everything right is kept (and pooled at the end).
        lease.0 = Some(inst);
        Ok((req, outcome))
    }

    /// Runs the response hook, with a read-only view of the request, under
    /// the plugin's limits. On failure both are gone with the instance.
    pub async fn on_response(
        &self,
        lease: &mut Lease,
        req: Box<RequestState>,
        resp: Box<ResponseState>,
    ) -> Result<(Box<RequestState>, Box<ResponseState>), PluginError> {
        let timeout = self.policy.limits.call_timeout;
        let pass = self
            .enter(timeout)
            .await
            .map_err(|kind| self.failed("on-response", kind))?;
        let result = self
            .bounded(timeout, self.response_hook(lease, req, resp))
            .await;
        pass.done(burned(&result));
        result.map_err(|kind| self.failed("on-response", kind))
    }

    async fn response_hook(
        &self,
        lease: &mut Lease,
        req: Box<RequestState>,
        resp: Box<ResponseState>,
    ) -> Result<(Box<RequestState>, Box<ResponseState>), PluginErrorKind> {
        let mut inst = self.take(lease).await?;
        self.begin(&mut inst);
        let data = inst.store.data_mut();
        data.request = Some(req);
        data.response = Some(resp);
        let (req_handle, resp_handle) = (Resource::new_borrow(0), Resource::new_borrow(0));
        match &inst.calls {
            Calls::Direct(h) => h
                .on_response
                .call(&mut inst.store, (req_handle, resp_handle)),
            Calls::Async(f) => {
                f.weir_plugin_filter()
                    .call_on_response(&mut inst.store, req_handle, resp_handle)
                    .await
            }
        }
        .map_err(|e| {
            let limits = &self.policy.limits;
            PluginErrorKind::from_call(e, limits, limits.cpu_deadline)
        })?;
        let data = inst.store.data_mut();
        let back = (taken(data.request.take())?, taken(data.response.take())?);
        lease.0 = Some(inst);
        Ok(back)
    }

    /// A hook call under `call_timeout`; a direct call cannot wait, so its
    /// epoch deadline bounds it and it needs no timer.
    async fn bounded<T>(
        &self,
        timeout: Duration,
        call: impl Future<Output = Result<T, PluginErrorKind>>,
    ) -> Result<T, PluginErrorKind> {
        if self.direct {
            return call.await;
        }
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or(Err(PluginErrorKind::CallTimeout(timeout)))
    }

    /// A place for one hook call under the plugin's concurrency cap and
    /// breaker; waiting for it counts against `call_timeout`.
    async fn enter(&self, timeout: Duration) -> Result<Pass<'_>, PluginErrorKind> {
        let entered = match self.guard.try_enter() {
            Some(entered) => entered,
            None => tokio::time::timeout(timeout, self.guard.enter())
                .await
                .map_err(|_| PluginErrorKind::CallTimeout(timeout))?,
        };
        entered.map_err(|open| PluginErrorKind::CircuitOpen(open.retry_in))
    }

    /// Whether this plugin's breaker is open on this route.
    pub fn circuit_open(&self) -> bool {
        self.guard.is_open()
    }

    /// The request's instance: the one it already holds, else a pooled or new one.
    async fn take(&self, lease: &mut Lease) -> Result<Instance, PluginErrorKind> {
        match lease.0.take() {
            Some(inst) => Ok(inst),
            None => self.checkout().await,
        }
    }

    /// Ends a request's lease: a pooled instance goes back to the pool; with
    /// `isolation = "request"` it is dropped, having lived one request.
    pub fn release(&self, lease: Lease) {
        if let Some(inst) = lease.0 {
            self.checkin(inst);
        }
    }

    /// Number of idle pooled instances (for tests and metrics).
    pub fn idle_instances(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Most instances this pool has held idle at once: as many as its
    /// traffic used concurrently.
    pub fn peak_instances(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Fills the pool up to `n` initialised instances (at most
    /// [`MAX_IDLE`]), off the request path: a reload sizes the new pool as
    /// the old one was, so the first requests after a swap do not each pay
    /// for instantiation and `init` while traffic waits behind them.
    pub async fn warm(&self, n: usize) {
        if self.isolation != Isolation::Pooled {
            return;
        }
        while self.idle_instances() < n.min(MAX_IDLE) {
            match self.instantiate().await {
                Ok(inst) => self.checkin(inst),
                Err(kind) => {
                    tracing::debug!(target: "weir::plugin", plugin = &*self.plugin.name, route = &*self.route, error = %kind, "pool not warmed");
                    return;
                }
            }
        }
    }
}
