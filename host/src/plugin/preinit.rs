//! Request-isolated instances from a snapshot taken after `init`.
//!
//! With `isolation = "request"` each request gets a fresh instance, and each
//! fresh instance used to run `init`, parsing the route's config again. When
//! such a route's plugin is set up, [`take`] instead runs `init` once, with
//! the route's config, in an instrumented copy of the component, and
//! `wasmtime-wizer` writes that instance's memories and globals back into a
//! new component. An instance of the new component starts with the state
//! `init` left (a copy-on-write memory image, like any other), and only its
//! hooks are called.
//!
//! A snapshot is taken only when it is the same as running `init`: the
//! `init` made no host call at all (no `weir:plugin` import, so no state,
//! clock, log or body request; and no WASI, so no randomness or time), so it
//! is a function of the config alone. Otherwise, and for plugins called on a
//! fiber, each instance runs `init` as before. Taking one costs two compiles
//! on the compile thread (~0.4 s each in release here) when a route first uses a
//! plugin version with a config; [`Cache`] keeps it for reloads that change
//! neither. A failure only logs.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use wasmtime::Store;
use wasmtime::component::{Component, Instance, InstancePre, Lift, TypedFunc, WasmList};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use super::Runtime;
use super::direct::{self, DirectHooks};
use super::host::HostState;

/// A plugin file's bytes, shared so the compile thread can take them.
pub(crate) type Wasm = Arc<[u8]>;

/// Most snapshots kept; past it the cache starts again from empty.
const MAX_CACHED: usize = 256;

/// Snapshots by (plugin sha256, config JSON): a reload that changes neither
/// takes none again.
#[derive(Default)]
pub(crate) struct Cache(Mutex<HashMap<(String, String), Arc<Preinit>>>);

impl Cache {
    pub(crate) fn get(&self, sha256: &str, config_json: &str) -> Option<Arc<Preinit>> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(sha256.to_string(), config_json.to_string()))
            .cloned()
    }

    pub(crate) fn put(&self, sha256: &str, config_json: &str, preinit: &Arc<Preinit>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(
            (sha256.to_string(), config_json.to_string()),
            preinit.clone(),
        );
    }
}

/// A plugin pre-initialised with one route's config.
pub(crate) struct Preinit {
    pre: InstancePre<HostState>,
    exports: direct::Exports,
}

impl Preinit {
    /// An instance in the state `init` left, and its hooks.
    pub(crate) fn instantiate(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<DirectHooks> {
        let instance = self.pre.instantiate(&mut *store)?;
        self.exports.hooks(store, &instance)
    }
}

/// Why no snapshot was taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NoSnapshot {
    /// `init` called the host, so running it once is not the same as running it per request.
    #[error("its init calls the host")]
    Impure,
    /// Instrumenting, compiling, running or snapshotting failed.
    #[error("{0}")]
    Failed(String),
}

/// Instruments `wasm`, runs its `init` with `config_json` in `store` (made
/// for this plugin and route, as for any instance), and compiles the
/// snapshot. Blocking: run it on the compile thread.
pub(crate) fn take(
    runtime: &Runtime,
    wasm: &[u8],
    config_json: &str,
    mut store: Store<HostState>,
) -> Result<Preinit, NoSnapshot> {
    let failed = |what: &str, e: wasmtime::Error| NoSnapshot::Failed(format!("{what}: {e:#}"));
    let wizer = Wizer::new();
    let (cx, instrumented) = wizer
        .instrument_component(wasm)
        .map_err(|e| failed("instrument", e))?;
    let component =
        Component::new(&runtime.engine, &instrumented).map_err(|e| failed("compile", e))?;
    let exports = direct::Exports::of(&component)
        .ok_or_else(|| NoSnapshot::Failed("no filter export".into()))?;
    let instance = runtime
        .direct_linker
        .instantiate(&mut store, &component)
        .map_err(|e| failed("instantiate", e))?;
    let (hooks,) = exports
        .init(&mut store, &instance)
        .and_then(|init| init.call(&mut store, (config_json.to_string(),)))
        .map_err(|e| failed("init", e))?;
    hooks.map_err(NoSnapshot::Failed)?;
    if store.data().reached_host() {
        return Err(NoSnapshot::Impure);
    }
    let mut access = Access {
        store: &mut store,
        instance,
    };
    // The accessors are plain typed calls: the future is ready at its first poll.
    let snapshot = match pin!(wizer.snapshot_component(&cx, &mut access))
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(r) => r.map_err(|e| failed("snapshot", e))?,
        Poll::Pending => return Err(NoSnapshot::Failed("the snapshot waited".into())),
    };
    let component =
        Component::new(&runtime.engine, &snapshot).map_err(|e| failed("compile snapshot", e))?;
    let exports = direct::Exports::of(&component)
        .ok_or_else(|| NoSnapshot::Failed("no filter export in the snapshot".into()))?;
    let pre = runtime
        .direct_linker
        .instantiate_pre(&component)
        .map_err(|e| failed("link snapshot", e))?;
    Ok(Preinit { pre, exports })
}

/// What wizer reads an instance's state through: its accessor exports, called directly.
struct Access<'a> {
    store: &'a mut Store<HostState>,
    instance: Instance,
}

impl Access<'_> {
    /// Calls `func` of the exported `instance`, which returns an `R`.
    ///
    /// Wizer's trait has no way to fail: a missing accessor or a trap is a
    /// bug in wizer's own instrumentation, and panics on the compile thread,
    /// which [`super::compiler`] turns into an error.
    fn call<R: Lift + 'static, T>(
        &mut self,
        instance: &str,
        func: &str,
        read: impl FnOnce(&Store<HostState>, R) -> T,
    ) -> T {
        let store = &mut *self.store;
        let accessor = self
            .instance
            .get_export_index(&mut *store, None, instance)
            .and_then(|i| self.instance.get_export_index(&mut *store, Some(&i), func))
            .expect("wizer's accessor export");
        let typed: TypedFunc<(), (R,)> = self
            .instance
            .get_typed_func(&mut *store, accessor)
            .expect("wizer's accessor type");
        let (r,) = typed.call(&mut *store, ()).expect("wizer's accessor call");
        read(store, r)
    }
}

impl ComponentInstanceState for Access<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        self.call(instance, func, |store, list: WasmList<u8>| {
            contents(list.as_le_slice(store));
        });
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func, |_, r| r)
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func, |_, r| r)
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call(instance, func, |_, r: f32| r.to_bits())
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call(instance, func, |_, r: f64| r.to_bits())
    }
}
