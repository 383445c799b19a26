//! Direct hook calls: plugins that can never wait are called without an
//! async fiber, and without a wall-clock timer.
//!
//! An async call (`call_async`) runs the guest on a fiber so a host call can
//! wait (a Redis round trip, an outbound request, a WASI sleep) without
//! holding the worker, and arms a timer for `call_timeout`. A plugin that
//! imports nothing that waits needs neither: its only cost is CPU, and the
//! epoch deadline bounds that. wasmtime decides per component whether it may
//! be called synchronously, from the imports it actually uses.
//!
//! Rust's std makes every component import the blocking stdio functions of
//! `wasi:io/streams` (and their streams' async destructors), which wasmtime-wasi
//! links as async. Weir's stdio never blocks (stdin is closed; stdout and stderr
//! are discarded unless `grants.stdio = "log"`), so the direct linker shadows
//! those functions with synchronous ones that write or read what the stream
//! takes at once. Plugins granted `stdio = "log"` keep async calls: their
//! output goes through a writer task that a direct call cannot wait for.
//!
//! The cost of a direct call: a CPU-bound plugin holds its worker thread for
//! up to its `cpu_deadline` (50 ms by default) before it is interrupted,
//! instead of yielding at every epoch tick; `max_concurrency` (all workers but
//! one by default) still keeps it from holding every worker.

use wasmtime::Store;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{
    Component, ComponentExportIndex, Instance, Linker, Resource, ResourceType, TypedFunc,
};
use wasmtime_wasi::p2::bindings::io::streams::StreamError as WitStreamError;
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError};

use super::bindings::weir::plugin::state::Bucket;
use super::bindings::{Action, Hooks};
use super::host::HostState;
use super::host::http::{RequestState, ResponseState};

/// The `wasi:io/streams` version wasmtime-wasi links (components built for
/// an earlier 0.2.x resolve to it by semver). Naming another version here
/// would define a second, partial instance that shadows it.
const STREAMS: &str = "wasi:io/streams@0.2.12";
const POLL: &str = "wasi:io/poll@0.2.12";
/// The host state interface, async in the main linker for Redis.
pub(crate) const STATE: &str = "weir:plugin/state@0.2.0";

/// Largest write a blocking write may make, as in wasmtime-wasi.
const MAX_BLOCKING_WRITE: usize = 4096;

type Outcome<T> = wasmtime::Result<(Result<T, WitStreamError>,)>;

/// Shadows the async stdio functions of `linker` (which has WASI linked)
/// with synchronous ones.
///
/// A direct plugin's only pollables are subscriptions to its stdio streams
/// (a plugin that imports the clock's `subscribe-*` is never direct, see
/// [`may_wait`]), and those are always ready: the sink takes everything, and
/// stdin is closed. So waiting on them returns at once. Were one not ready,
/// the plugin would spin until its CPU deadline interrupts it.
pub(crate) fn shadow_blocking_stdio(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    // State in memory never waits; a plugin on a shared backend is not direct.
    let mut state = linker.instance(STATE)?;
    state.func_wrap(
        "incr-window",
        |mut cx, (key, delta, window): (String, u64, u64)| {
            Ok((cx.data_mut().incr_window_now(key, delta, window)?,))
        },
    )?;
    state.func_wrap(
        "take",
        |mut cx, (key, bucket, cost): (String, Bucket, u32)| {
            Ok((cx.data_mut().take_now(key, bucket, cost)?,))
        },
    )?;
    let mut poll = linker.instance(POLL)?;
    poll.func_wrap(
        "[method]pollable.block",
        |_cx, (_p,): (Resource<DynPollable>,)| Ok(()),
    )?;
    poll.func_wrap(
        "[method]pollable.ready",
        |_cx, (_p,): (Resource<DynPollable>,)| Ok((true,)),
    )?;
    poll.func_wrap("poll", |_cx, (ps,): (Vec<Resource<DynPollable>>,)| {
        Ok(((0..u32::try_from(ps.len()).unwrap_or(u32::MAX)).collect::<Vec<u32>>(),))
    })?;
    let mut streams = linker.instance(STREAMS)?;
    streams.resource(
        "output-stream",
        ResourceType::host::<DynOutputStream>(),
        delete::<DynOutputStream>,
    )?;
    streams.resource(
        "input-stream",
        ResourceType::host::<DynInputStream>(),
        delete::<DynInputStream>,
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-write-and-flush",
        |mut cx, (s, bytes): (Resource<DynOutputStream>, Vec<u8>)| -> Outcome<()> {
            if bytes.len() > MAX_BLOCKING_WRITE {
                wasmtime::bail!("buffer too large for blocking-write-and-flush (at most 4096)");
            }
            let table = cx.data_mut().table();
            let r = write_now(table.get_mut(&s)?.as_mut(), bytes.into());
            lower(table, r)
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-write-zeroes-and-flush",
        |mut cx, (s, len): (Resource<DynOutputStream>, u64)| -> Outcome<()> {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > MAX_BLOCKING_WRITE {
                wasmtime::bail!(
                    "buffer too large for blocking-write-zeroes-and-flush (at most 4096)"
                );
            }
            let table = cx.data_mut().table();
            let r = write_now(table.get_mut(&s)?.as_mut(), vec![0; len].into());
            lower(table, r)
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-flush",
        |mut cx, (s,): (Resource<DynOutputStream>,)| -> Outcome<()> {
            let table = cx.data_mut().table();
            let r = table.get_mut(&s)?.flush();
            lower(table, r)
        },
    )?;
    streams.func_wrap(
        "[method]input-stream.blocking-read",
        |mut cx, (s, len): (Resource<DynInputStream>, u64)| -> Outcome<Vec<u8>> {
            let table = cx.data_mut().table();
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            let r = table.get_mut(&s)?.read(len).map(|b| b.to_vec());
            lower(table, r)
        },
    )?;
    streams.func_wrap(
        "[method]input-stream.blocking-skip",
        |mut cx, (s, len): (Resource<DynInputStream>, u64)| -> Outcome<u64> {
            let table = cx.data_mut().table();
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            let r = table.get_mut(&s)?.skip(len).map(|n| n as u64);
            lower(table, r)
        },
    )?;
    Ok(())
}

/// A stream's destructor without the async `cancel` (nothing to cancel here).
fn delete<T: 'static>(
    mut cx: wasmtime::StoreContextMut<'_, HostState>,
    rep: u32,
) -> wasmtime::Result<()> {
    cx.data_mut().table().delete(Resource::<T>::new_own(rep))?;
    Ok(())
}

/// Writes what the stream takes now and flushes; the rest is dropped, as a
/// full pipe would (the streams a direct call can reach never fill).
fn write_now(
    s: &mut dyn wasmtime_wasi::p2::OutputStream,
    bytes: bytes::Bytes,
) -> Result<(), StreamError> {
    let room = s.check_write()?;
    if room > 0 {
        s.write(bytes.slice(..bytes.len().min(room)))?;
    }
    s.flush()
}

fn lower<T>(
    table: &mut wasmtime::component::ResourceTable,
    r: Result<T, StreamError>,
) -> Outcome<T> {
    Ok((match r {
        Ok(v) => Ok(v),
        Err(StreamError::Closed) => Err(WitStreamError::Closed),
        Err(StreamError::LastOperationFailed(e)) => {
            Err(WitStreamError::LastOperationFailed(table.push(e)?))
        }
        Err(StreamError::Trap(e)) => return Err(e),
    },))
}

/// Where a component's hooks are, found once per compiled plugin.
pub(crate) struct Exports {
    init: ComponentExportIndex,
    on_request: ComponentExportIndex,
    on_response: ComponentExportIndex,
}

impl Exports {
    /// The hooks of `component`'s filter export, if it has one.
    pub(crate) fn of(component: &Component) -> Option<Exports> {
        let filter = component.get_export_index(None, super::FILTER_EXPORT)?;
        Some(Exports {
            init: component.get_export_index(Some(&filter), "init")?,
            on_request: component.get_export_index(Some(&filter), "on-request")?,
            on_response: component.get_export_index(Some(&filter), "on-response")?,
        })
    }

    /// One instance's `init`, typed (called once, before the hooks).
    pub(crate) fn init(
        &self,
        store: &mut Store<HostState>,
        instance: &Instance,
    ) -> wasmtime::Result<Init> {
        instance.get_typed_func(&mut *store, self.init)
    }

    /// One instance's hooks, typed.
    pub(crate) fn hooks(
        &self,
        store: &mut Store<HostState>,
        instance: &Instance,
    ) -> wasmtime::Result<DirectHooks> {
        Ok(DirectHooks {
            on_request: instance.get_typed_func(&mut *store, self.on_request)?,
            on_response: instance.get_typed_func(&mut *store, self.on_response)?,
        })
    }
}

/// `init(config) -> result<hooks, string>`, typed.
pub(crate) type Init = TypedFunc<(String,), (Result<Hooks, String>,)>;

/// An instance's hooks, called with [`TypedFunc::call`] (no fiber).
pub(crate) struct DirectHooks {
    pub on_request: TypedFunc<(Resource<RequestState>,), (Action,)>,
    pub on_response: TypedFunc<(Resource<RequestState>, Resource<ResponseState>), ()>,
}

/// Whether a component imports a way to wait that the direct linker does not
/// make instant: the monotonic clock's subscriptions (a sleep). Such a plugin
/// is called on a fiber, where its wait yields the worker and `call_timeout`
/// bounds it.
pub(crate) fn may_wait(component: &Component, engine: &wasmtime::Engine) -> bool {
    component
        .component_type()
        .imports(engine)
        .any(|(name, item)| {
            name.starts_with("wasi:clocks/monotonic-clock")
                && match item.ty {
                    ComponentItem::ComponentInstance(i) => {
                        i.exports(engine).any(|(f, _)| f.starts_with("subscribe"))
                    }
                    _ => true,
                }
        })
}
