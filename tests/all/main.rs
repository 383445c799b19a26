//! Weir's integration tests: one binary (to keep link time down), one module
//! per area. Every test runs real gateways and real origins on 127.0.0.1:0
//! with the real compiled plugins.

#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario from start to assertions; its steps stay together"
)]

mod aggregate;
mod attacks;
mod audit;
mod bodies;
mod chain;
mod config_errors;
mod containment;
mod dashboard;
mod hardening;
mod hot_swap;
mod introspect;
mod jwt_jwks;
mod observability;
mod plugin_io;
mod plugins;
mod proxying;
mod quotas;
mod rollout;
mod routing;
mod sandbox;
mod shared_state;
mod state;
mod support;
mod tls;
mod traces;
mod upstreams;
