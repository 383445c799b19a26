//! One request through a route's plugins: request hooks in order, response
//! hooks in reverse, on one leased instance per plugin for the whole request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;

use super::host::http::{RequestState, ResponseState};
use super::instance::{ChainPlugin, Lease, Outcome, PluginError, PluginErrorKind};
use super::rollout::Rollout;
use crate::config::Fail;
use crate::telemetry::metrics::Hook;
use crate::telemetry::spans::{HookOutcome, HookRecord};

/// An early answer from a request hook.
#[derive(Debug)]
pub struct Early {
    /// Status code (200..=599).
    pub status: StatusCode,
    /// Headers (framing and hop-by-hop ones already dropped).
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Vec<u8>,
}

/// A fail-closed plugin failed: the request ends with `status`.
#[derive(Debug)]
pub struct Failed {
    /// What failed (already logged and counted).
    pub error: PluginError,
    /// The route's `fail_status` for the plugin.
    pub status: StatusCode,
}

/// The version of a rolled-out plugin one request runs at one place of its chain.
#[derive(Clone, Copy)]
pub struct Picked<'a> {
    /// That version, set up for the route.
    pub plugin: &'a ChainPlugin,
    /// The plugin's rollout, which counts the version's calls.
    pub rollout: &'a Rollout,
    /// The version's index in the rollout.
    pub version: usize,
}

/// A route's chain as one request runs it.
///
/// - each plugin's instance is leased for a hook call; a plugin that asked for
///   `same-instance` keeps it for the request (`self` in `on-response` is the
///   `self` of `on-request`); a lease is returned to the pool, or dropped with
///   `isolation = "request"`, or at once after a failure;
/// - a fail-open plugin that fails is skipped with its edits undone;
/// - a `respond` skips the rest of the request hooks (and the upstream);
/// - response hooks run for the plugins the request reached, in reverse;
/// - a hook a plugin did not ask for in `init` is never called.
pub struct Chain<'a> {
    plugins: &'a [ChainPlugin],
    /// By place: the version this request runs of a rolled-out plugin
    /// (instead of `plugins[i]`, its stable version); empty when none is.
    picked: Vec<Option<Picked<'a>>>,
    leases: Vec<Lease>,
    ran: Vec<usize>,
    /// Time spent in hooks, instance checkout included.
    pub plugin_time: Duration,
    /// The plugin that answered early, if one did.
    pub answered_by: Option<Arc<str>>,
    /// Hook calls, for a sampled request's spans (`None`: not recorded).
    pub spans: Option<Vec<HookRecord>>,
}

impl<'a> Chain<'a> {
    /// A request's run of `plugins`; nothing is leased until a hook runs.
    pub fn new(plugins: &'a [ChainPlugin]) -> Self {
        Chain {
            plugins,
            picked: Vec::new(),
            leases: Vec::new(),
            ran: Vec::new(),
            plugin_time: Duration::ZERO,
            answered_by: None,
            spans: None,
        }
    }

    /// Like [`Chain::new`], running `picked[i]` instead of `plugins[i]`
    /// where it is `Some`, and counting those calls in their rollout.
    pub fn with_versions(plugins: &'a [ChainPlugin], picked: Vec<Option<Picked<'a>>>) -> Self {
        let mut chain = Chain::new(plugins);
        chain.picked = picked;
        chain
    }

    /// The plugin this request runs at place `i`.
    fn at(&self, i: usize) -> &'a ChainPlugin {
        match self.picked.get(i) {
            Some(Some(p)) => p.plugin,
            _ => &self.plugins[i],
        }
    }

    /// Counts a hook call in its version's budget window, when rolled out.
    fn observe<T>(&self, i: usize, took: Duration, result: &Result<T, PluginError>) {
        if let Some(Some(p)) = self.picked.get(i) {
            // The shared backend being down is no fault of this version.
            let failed = result
                .as_ref()
                .is_err_and(|e| !matches!(e.kind, PluginErrorKind::StateBackend(_)));
            p.rollout.observe(p.version, took, failed);
        }
    }

    /// Whether the route has no plugins (nothing to run, nothing to lease).
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// Runs the request hooks in order. Returns the request as the upstream
    /// should get it, and the early answer if a plugin gave one.
    pub async fn request(
        &mut self,
        state: RequestState,
    ) -> Result<(RequestState, Option<Early>), Failed> {
        if self.plugins.is_empty() {
            return Ok((state, None));
        }
        // Boxed once: it moves in and out of every hook call.
        let mut state = Box::new(state);
        self.leases.resize_with(self.plugins.len(), Lease::default);
        for i in 0..self.plugins.len() {
            let plugin = self.at(i);
            // Not asked for: the request reached it all the same (its `on-response` runs).
            if !plugin.wants_request() {
                self.ran.push(i);
                continue;
            }
            // Fail open means "as if it were not there": keep the request as it was before it.
            let before = (plugin.fail.mode == Fail::Open).then(|| state.clone());
            let t = Instant::now();
            let result = plugin.on_request(&mut self.leases[i], state).await;
            let took = t.elapsed();
            self.observe(i, took, &result);
            self.plugin_time += took;
            plugin.metrics.called(Hook::Request, took);
            if let Some(spans) = &mut self.spans {
                spans.push(HookRecord {
                    plugin: i,
                    hook: Hook::Request,
                    start: t,
                    took,
                    outcome: match &result {
                        Ok((_, Outcome::Respond { status, .. })) => {
                            HookOutcome::Respond(status.as_u16())
                        }
                        Ok(_) => HookOutcome::Continue,
                        Err(e) => HookOutcome::Failed(e.kind.reason()),
                    },
                });
            }
            match result {
                Ok((back, outcome)) => {
                    state = back;
                    self.ran.push(i);
                    // Not needed again on this instance: back to the pool now, not at
                    // the end of the request, so fewer instances are live under load.
                    if !plugin.keeps_instance() {
                        plugin.release(std::mem::take(&mut self.leases[i]));
                    }
                    if let Outcome::Respond {
                        status,
                        headers,
                        body,
                    } = outcome
                    {
                        plugin.metrics.short_circuited(status.as_u16());
                        self.answered_by = Some(plugin.name().clone());
                        return Ok((
                            *state,
                            Some(Early {
                                status,
                                headers,
                                body,
                            }),
                        ));
                    }
                }
                Err(e) => {
                    state = before.ok_or_else(|| closed(plugin, e))?;
                }
            }
        }
        Ok((*state, None))
    }

    /// Runs the response hooks of the plugins the request reached (and that
    /// asked for them), in reverse order, with a read-only view of the request.
    pub async fn response(
        &mut self,
        req: RequestState,
        resp: ResponseState,
    ) -> Result<(RequestState, ResponseState), Failed> {
        if !self.ran.iter().any(|&i| self.at(i).wants_response()) {
            return Ok((req, resp));
        }
        let (mut req, mut resp) = (Box::new(req), Box::new(resp));
        req.read_only = true;
        for &i in self.ran.iter().rev() {
            let plugin = self.at(i);
            if !plugin.wants_response() {
                continue;
            }
            let before = (plugin.fail.mode == Fail::Open).then(|| (req.clone(), resp.clone()));
            let t = Instant::now();
            let result = plugin.on_response(&mut self.leases[i], req, resp).await;
            let took = t.elapsed();
            self.observe(i, took, &result);
            self.plugin_time += took;
            plugin.metrics.called(Hook::Response, took);
            if let Some(spans) = &mut self.spans {
                spans.push(HookRecord {
                    plugin: i,
                    hook: Hook::Response,
                    start: t,
                    took,
                    outcome: match &result {
                        Ok(_) => HookOutcome::Continue,
                        Err(e) => HookOutcome::Failed(e.kind.reason()),
                    },
                });
            }
            match result {
                Ok(back) => (req, resp) = back,
                Err(e) => {
                    (req, resp) = before.ok_or_else(|| closed(plugin, e))?;
                }
            }
        }
        Ok((*req, *resp))
    }
}

impl Drop for Chain<'_> {
    fn drop(&mut self) {
        let leases = std::mem::take(&mut self.leases);
        for (i, lease) in leases.into_iter().enumerate() {
            self.at(i).release(lease);
        }
    }
}

fn closed(plugin: &ChainPlugin, error: PluginError) -> Failed {
    Failed {
        error,
        status: plugin.fail.status,
    }
}
