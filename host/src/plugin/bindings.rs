//! Host bindings generated from `wit/` (the `weir:plugin/plugin` world).
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    // Host functions return `wasmtime::Result` so a bad handle traps instead of panicking.
    // State calls may wait for Redis: async, so the wait yields the worker.
    // Outbound calls and cache reads wait on the network: async too.
    imports: {
        "weir:plugin/state": async | trappable,
        "weir:plugin/outbound": async | trappable,
        "weir:plugin/cache": async | trappable,
        default: trappable,
    },
    // Exports run on a fiber so epoch deadlines can interrupt them.
    exports: { default: async },
    with: {
        "weir:plugin/http.request": super::host::http::RequestState,
        "weir:plugin/http.response": super::host::http::ResponseState,
    },
});

// `self::`: rustdoc also passes `--extern weir`, which would make `weir` ambiguous.
pub use self::exports::weir::plugin::filter::Hooks;
pub use self::weir::plugin::http::{Action, Reply};
