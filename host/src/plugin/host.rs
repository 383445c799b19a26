//! What the host gives a plugin instance: one module per imported WIT
//! interface, plus the store data that ties them together and the
//! per-hook-call budgets (CPU ticks, host calls, log records).

pub mod body;
pub mod cache;
pub mod clock;
pub mod http;
pub mod log;
pub mod metrics;
pub mod outbound;
pub mod state;
pub mod stdio;

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::limits::{HostCallLimit, Policy, StoreLimiter};
use crate::config::Stdio;
use crate::telemetry::metrics::PluginCounters;

/// Store data of one plugin instance.
pub struct HostState {
    table: ResourceTable,
    /// Built at the first WASI call ([`inert_wasi`]): most instances make none.
    wasi: Option<WasiCtx>,
    /// The grants its WASI is built from.
    policy: Arc<Policy>,
    pub(crate) limiter: StoreLimiter,
    /// The plugin's name in the manifest.
    pub(crate) plugin: Arc<str>,
    /// The route this instance serves.
    pub(crate) route: Arc<str>,
    /// This plugin's host state, shared by all its instances.
    pub(crate) state: state::StateHandle,
    /// This plugin's own counters, in its gateway's registry.
    pub(crate) counters: Arc<PluginCounters>,
    /// Header limits for edits and replies.
    pub(crate) headers: http::HeaderLimits,
    /// `max_log_rate`, bytes per second.
    pub(crate) log_rate: usize,
    /// Budgets of the current hook call.
    pub(crate) budget: Budget,
    /// The request of the current hook call. Kept here rather than in the
    /// resource table: a hook sees one request, and its handle needs no lookup.
    pub(crate) request: Option<Box<http::RequestState>>,
    /// The response of the current `on-response` call.
    pub(crate) response: Option<Box<http::ResponseState>>,
    stdio_budget: Option<stdio::Budget>,
    /// True while `init` runs: the only time `body.buffer` counts.
    pub(crate) in_init: bool,
    /// The bodies this instance asked for in `init`.
    pub(crate) bodies: body::Bodies,
    /// `max_body_bytes`: largest body a plugin may be handed or set.
    pub(crate) max_body: usize,
    /// Outbound HTTP, when the manifest grants any upstream.
    pub(crate) outbound: Option<Arc<outbound::Outbound>>,
    /// Called without a fiber ([`crate::plugin::direct`]): an epoch tick
    /// cannot yield, only interrupt once the budget is spent.
    pub(crate) direct: bool,
}

/// What the current hook call has used so far; reset before each call.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    /// Epoch ticks seen while running wasm.
    pub ticks: u32,
    /// Ticks allowed before the call is interrupted.
    pub max_ticks: u32,
    /// Calls into `weir:plugin` imports.
    pub host_calls: u32,
    /// Calls allowed.
    pub max_host_calls: u32,
    /// Log records emitted.
    pub log_records: u32,
    /// Outbound HTTP calls made.
    pub outbound_calls: u32,
    /// When the call's `call_timeout` runs out.
    pub deadline: Option<Instant>,
}

impl HostState {
    pub(crate) fn new(
        plugin: Arc<str>,
        route: Arc<str>,
        state: state::StateHandle,
        counters: Arc<PluginCounters>,
        policy: &Arc<Policy>,
    ) -> Self {
        let limits = &policy.limits;
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.max_handles as usize);
        let stdio_budget = (policy.grants.stdio == Stdio::Log).then(stdio::Budget::default);
        HostState {
            table,
            wasi: None,
            policy: policy.clone(),
            limiter: StoreLimiter {
                max_memory: limits.max_memory,
            },
            state,
            plugin,
            route,
            counters,
            headers: http::HeaderLimits {
                max_headers: limits.max_headers,
                max_header_bytes: limits.max_header_bytes,
            },
            log_rate: limits.max_log_rate,
            budget: Budget {
                max_host_calls: limits.max_host_calls,
                ..Budget::default()
            },
            stdio_budget,
            request: None,
            response: None,
            in_init: false,
            bodies: body::Bodies::empty(),
            max_body: limits.max_body_bytes,
            outbound: None,
            direct: false,
        }
    }

    /// Starts a hook call with fresh budgets; it may take until `deadline`.
    pub(crate) fn begin_call(&mut self, max_ticks: u32, deadline: Instant) {
        self.budget.outbound_calls = 0;
        self.budget.deadline = Some(deadline);
        self.budget.ticks = 0;
        self.budget.max_ticks = max_ticks;
        self.budget.host_calls = 0;
        self.budget.log_records = 0;
        if let Some(b) = &self.stdio_budget {
            b.reset();
        }
    }

    /// Whether the current call reached the host at all: a `weir:plugin`
    /// import, or anything of WASI (whose context is built at first use).
    pub(crate) fn reached_host(&self) -> bool {
        self.budget.host_calls > 0 || self.wasi.is_some()
    }

    /// Counts one call into a `weir:plugin` import; traps past `max_host_calls`.
    pub(crate) fn charge(&mut self) -> wasmtime::Result<()> {
        self.budget.host_calls += 1;
        if self.budget.host_calls > self.budget.max_host_calls {
            return Err(HostCallLimit(self.budget.max_host_calls).into());
        }
        Ok(())
    }
}

impl HostState {
    /// The instance's resource table (WASI's streams live there).
    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let ctx = self.wasi.get_or_insert_with(|| {
            inert_wasi(
                &self.policy,
                &self.plugin,
                &self.route,
                self.stdio_budget.as_ref(),
                &self.counters,
            )
        });
        WasiCtxView {
            ctx,
            table: &mut self.table,
        }
    }
}

/// Inert WASI: no preopened dirs, no args, no sockets, stdin closed and
/// output discarded. Rust's std imports some WASI interfaces even when
/// unused; they link but reach nothing unless the manifest grants it:
/// `env` by name, and stdout and stderr to the log (`stdio = "log"`, with
/// `budget`). Building one costs a few thousand instructions (two seeded
/// RNGs), so an instance builds it at its first WASI call, not before.
fn inert_wasi(
    policy: &Policy,
    plugin: &Arc<str>,
    route: &Arc<str>,
    budget: Option<&stdio::Budget>,
    counters: &Arc<PluginCounters>,
) -> WasiCtx {
    let mut wasi = WasiCtx::builder();
    wasi.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .envs(policy.grants.env.as_slice());
    if let Some(budget) = budget {
        let rate = policy.limits.max_log_rate;
        let out = |stream| stdio::LogOutput::new(plugin, route, stream, budget, counters, rate);
        wasi.stdout(out("stdout")).stderr(out("stderr"));
    }
    wasi.build()
}
