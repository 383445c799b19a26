//! The plugin runtime: one wasmtime [`Engine`] for the process, plugins
//! compiled and pre-linked once, and per-route instance pools.
//!
//! - [`Runtime`]: engine (pooling allocator, copy-on-write memory images,
//!   epoch interruption driven by one ticker thread) and the linker holding
//!   the `weir:plugin` imports plus an inert WASI.
//! - [`LoadedPlugin`]: a compiled, type-checked, pre-linked component.
//! - [`ChainPlugin`]: a plugin as used by one route: its config, isolation
//!   mode, failure policy and pool of initialised instances; runs the hooks.
//! - [`Chain`]: a route's plugins as one request runs them, on one leased
//!   instance per plugin ([`Lease`]) for the whole request.
//! - [`cache`]: compiled plugins by sha256, in memory and on disk;
//!   [`crate::background`]: the low-priority thread that compiles them.
//! - [`Policy`]: the sandbox of one plugin: [`Limits`] and [`Grants`]; which
//!   imports are allowed is decided per [`Capability`].

mod bindings;
pub mod cache;
pub mod capability;
mod chain;
mod direct;
pub mod guard;
pub mod host;
mod instance;
pub mod limits;
mod preinit;
pub mod rollout;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use bindings::{Action, Reply};
pub use cache::CacheSource;
pub use capability::Capability;
pub use chain::{Chain, Early, Failed, Picked};
pub use host::http::{RequestState, ResponseState};
pub use instance::{
    ChainPlugin, FailPolicy, Lease, Outcome, PluginError, PluginErrorKind, PluginUse,
};
pub use limits::{Grants, Limits, Policy};

use crate::background::Background;
use cache::CompileCache;
use host::HostState;
use host::state::SharedState;

/// The WIT package this gateway speaks; plugins must be built against it.
pub const WIT_PACKAGE: &str = "weir:plugin@0.2.0";
/// The import of outbound HTTP, which needs `grants.http`.
const OUTBOUND_IMPORT: &str = "weir:plugin/outbound@";
/// The export that makes a component a filter for [`WIT_PACKAGE`].
const FILTER_EXPORT: &str = "weir:plugin/filter@0.2.0";

/// How often the epoch ticks; CPU deadlines are counted in ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Epoch ticks since the runtime started: a clock of [`EPOCH_TICK`]
/// resolution that costs one atomic load to read.
static TICKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The tick count now (see [`TICKS`]).
pub(crate) fn ticks() -> u64 {
    TICKS.load(std::sync::atomic::Ordering::Relaxed)
}
/// Size of a WebAssembly page, the unit of declared memory sizes.
const WASM_PAGE: u64 = 64 << 10;
/// Bytes of (linear memory, table) a dropped instance leaves resident in
/// its pool slot, reset there for the next instance. With the PAGEMAP_SCAN
/// ioctl only the pages it wrote are reset, by copy, wherever they lie (a
/// Rust guest's stack sits just below 1 MiB; the bundled plugins write
/// under 64 KiB), and nothing is decommitted unless it wrote more: the next
/// instance takes no page faults. Without the ioctl the first bytes are
/// memset whether written or not, so the sizes stay small.
fn keep_resident(pagemap: bool) -> (usize, usize) {
    match pagemap {
        true => (1 << 20, 64 << 10),
        false => (128 << 10, 16 << 10),
    }
}

/// The process-wide plugin engine.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    /// The same imports, with stdio that never waits: plugins that import
    /// nothing else that may wait are called without a fiber ([`direct`]).
    direct_linker: Linker<HostState>,
    shared: Arc<SharedState>,
    cache: CompileCache,
    /// Snapshots after `init` by plugin sha256 and config ([`preinit`]).
    preinits: preinit::Cache,
}

impl Runtime {
    /// The runtime shared by every gateway in this process (one engine, one ticker).
    pub fn global() -> &'static Arc<Runtime> {
        static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();
        RUNTIME.get_or_init(|| Arc::new(Runtime::new().expect("cannot create the wasmtime engine")))
    }

    /// Forgets every plugin's host state (counters, buckets): `weir test`
    /// runs each case from empty state.
    pub fn clear_state(&self) {
        self.shared.clear();
    }

    fn new() -> wasmtime::Result<Runtime> {
        // Live instances at once, all plugins together; each slot reserves a
        // linear memory's address space. `WEIR_POOL_SLOTS` sizes it for
        // tight address-space limits (valgrind runs with 4).
        let slots: u32 = std::env::var("WEIR_POOL_SLOTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(2000);
        let (keep_memory, keep_table) =
            keep_resident(PoolingAllocationConfig::is_pagemap_scan_available());
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .total_core_instances(4 * slots)
            .total_memories(slots)
            .total_tables(4 * slots)
            .total_stacks(slots)
            // Each plugin's own `max_memory` is enforced by its store's limiter.
            .max_memory_size(limits::MAX_MEMORY_CEILING)
            // A dropped instance's memory is reset for the next one. With the
            // PAGEMAP_SCAN ioctl (Linux >= 6.7, not under valgrind) only the
            // pages it wrote are reset, and they stay mapped: no madvise, and
            // no page faults for the next instance in the slot.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(keep_memory)
            .table_keep_resident(keep_table);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .memory_init_cow(true)
            .max_wasm_stack(512 << 10)
            .async_stack_size(1 << 20)
            // One core per compile, on the low-priority compile thread
            // ([`crate::background`]): compiling must not take the cores traffic runs on.
            .parallel_compilation(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // The pool reserves terabytes of address space up front; where that is
        // refused (`ulimit -v`, valgrind) plugins still run, allocated on demand.
        let engine = match Engine::new(&config) {
            Ok(engine) => engine,
            Err(e) => {
                tracing::warn!(error = %e, slots, "cannot reserve the instance pool; allocating plugin instances on demand (slower; set WEIR_POOL_SLOTS lower to keep the pool)");
                config
                    .allocation_strategy(InstanceAllocationStrategy::OnDemand)
                    // No 4 GiB reservation per memory: explicit bounds checks instead.
                    .memory_reservation(0)
                    .memory_guard_size(64 << 10)
                    .memory_reservation_for_growth(1 << 20);
                Engine::new(&config)?
            }
        };

        let mut linker = Linker::new(&engine);
        bindings::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        let mut direct_linker = linker.clone();
        direct::shadow_blocking_stdio(&mut direct_linker)?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    TICKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| wasmtime::format_err!("cannot start the epoch ticker: {e}"))?;

        Ok(Runtime {
            cache: CompileCache::new(&engine),
            preinits: preinit::Cache::default(),
            engine,
            linker,
            direct_linker,
            shared: Arc::new(SharedState::default()),
        })
    }

    /// Reads, hashes, checks against `policy`, compiles and pre-links a
    /// plugin. Blocking: call it off the request path.
    ///
    /// Size and `sha256` pin are checked before compiling, so an unexpected
    /// file never reaches the compiler; imports and declared memory after.
    pub fn load(
        &self,
        name: &str,
        path: &Path,
        policy: &Policy,
    ) -> Result<LoadedPlugin, LoadError> {
        let read = |e: std::io::Error| LoadError::Read(e.to_string());
        // A huge file is refused before it is read, not after.
        let size = std::fs::metadata(path).map_err(read)?.len();
        let limit = policy.limits.max_module_bytes;
        if size > limit as u64 {
            return Err(LoadError::TooLarge {
                size: usize::try_from(size).unwrap_or(usize::MAX),
                limit,
            });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        self.load_bytes(name, path, bytes, policy)
    }

    /// Like [`Runtime::load`], for a file already read (reloads read each
    /// file once). Compiled code comes from the in-memory cache when this
    /// file was compiled before.
    pub fn load_bytes(
        &self,
        name: &str,
        path: &Path,
        bytes: Vec<u8>,
        policy: &Policy,
    ) -> Result<LoadedPlugin, LoadError> {
        let started = Instant::now();
        let sha256 = sha256_hex(&bytes);
        check_file(bytes.len(), &sha256, policy)?;
        check_header(&bytes)?;
        let (component, source) = self
            .cache
            .get_or_compile(&sha256, &bytes, None)
            .map_err(|e| LoadError::Compile(first_line(&format!("{e:#}"))))?;
        let file = FileFacts {
            name,
            path,
            wasm: bytes.into(),
            sha256,
            started,
        };
        self.link(file, component, source, policy)
    }

    /// Like [`Runtime::load_bytes`], without blocking: a plugin compiled
    /// before (this file's sha256) is taken from memory at once; any other is
    /// read from the disk cache in `cache_dir` or compiled on the compile
    /// thread ([`crate::background`]), one at a time, at low priority.
    pub async fn load_off_path(
        self: &Arc<Self>,
        name: &str,
        path: &Path,
        bytes: Vec<u8>,
        policy: &Policy,
        cache_dir: Option<PathBuf>,
    ) -> Result<LoadedPlugin, LoadError> {
        let started = Instant::now();
        let sha256 = sha256_hex(&bytes);
        check_file(bytes.len(), &sha256, policy)?;
        check_header(&bytes)?;
        let wasm: preinit::Wasm = bytes.into();
        let (component, source) = match self.cache.get(&sha256) {
            Some(c) => (c, CacheSource::Memory),
            None => {
                let rt = self.clone();
                let sha = sha256.clone();
                let bytes = wasm.clone();
                Background::compile()
                    .run(move || rt.cache.get_or_compile(&sha, &bytes, cache_dir.as_deref()))
                    .await
                    .map_err(|e| LoadError::Compile(e.to_string()))?
                    .map_err(|e| LoadError::Compile(first_line(&format!("{e:#}"))))?
            }
        };
        let file = FileFacts {
            name,
            path,
            wasm,
            sha256,
            started,
        };
        self.link(file, component, source, policy)
    }

    /// Sets how many compiled plugins the in-memory cache keeps.
    pub fn set_cache_entries(&self, entries: usize) {
        self.cache.set_capacity(entries);
    }

    /// Forgets the compiled plugin of this sha256 from memory (a disk cache
    /// keeps it), as a restart would.
    pub fn forget_compiled(&self, sha256: &str) {
        self.cache.evict(sha256);
    }

    /// Type-checks a compiled component against `policy` and pre-links it.
    fn link(
        &self,
        file: FileFacts<'_>,
        component: Component,
        source: CacheSource,
        policy: &Policy,
    ) -> Result<LoadedPlugin, LoadError> {
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let min_memory = component
            .resources_required()
            .and_then(|r| r.max_initial_memory_size)
            .map(|pages| pages.saturating_mul(WASM_PAGE));
        // Named refusals first: the linker's own error would be vaguer.
        check_version(&exports)?;
        admit(&imports, min_memory, policy)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let pre = bindings::PluginPre::new(pre).map_err(|e| LoadError::World(format!("{e:#}")))?;
        // Whether it may be called directly is known when its first instance is made.
        let direct = (!direct::may_wait(&component, &self.engine))
            .then(|| self.direct_linker.instantiate_pre(&component).ok())
            .flatten()
            .and_then(|pre| direct::Exports::of(&component).map(|exports| (pre, exports)));
        let load_time = file.started.elapsed();
        tracing::info!(
            plugin = file.name,
            sha256 = %file.sha256,
            source = source.label(),
            micros = load_time.as_micros() as u64,
            "plugin loaded"
        );
        Ok(LoadedPlugin {
            name: file.name.into(),
            path: file.path.to_path_buf(),
            sha256: file.sha256,
            size: file.wasm.len(),
            wasm: file.wasm,
            loaded_at: SystemTime::now(),
            load_time,
            source,
            imports,
            exports,
            min_memory,
            pre,
            direct,
        })
    }
}

/// What is known of a plugin file before it is compiled.
struct FileFacts<'a> {
    name: &'a str,
    path: &'a Path,
    wasm: preinit::Wasm,
    sha256: String,
    started: Instant,
}

/// Lower-case hex sha256 of `bytes`, as `sha256sum` prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The file must be within `max_module_bytes` and match its `sha256` pin.
fn check_file(size: usize, sha256: &str, policy: &Policy) -> Result<(), LoadError> {
    let limit = policy.limits.max_module_bytes;
    if size > limit {
        return Err(LoadError::TooLarge { size, limit });
    }
    if let Some(pin) = &policy.sha256
        && !pin.eq_ignore_ascii_case(sha256)
    {
        return Err(LoadError::HashMismatch {
            pinned: pin.clone(),
            actual: sha256.to_string(),
        });
    }
    Ok(())
}

/// A filter built for another version of the WIT package is named as such,
/// not left to a link error about one of its imports.
fn check_version(exports: &[String]) -> Result<(), LoadError> {
    if exports.iter().any(|e| e == FILTER_EXPORT) {
        return Ok(());
    }
    match exports
        .iter()
        .find_map(|e| e.strip_prefix("weir:plugin/filter@"))
    {
        Some(found) => Err(LoadError::WitVersion {
            found: format!("weir:plugin@{found}"),
        }),
        // Not a filter at all: the world check says so.
        None => Ok(()),
    }
}

/// Every import must be allowed, and the declared initial memory must fit `max_memory`.
fn admit(imports: &[String], min_memory: Option<u64>, policy: &Policy) -> Result<(), LoadError> {
    for import in imports {
        if import.starts_with(OUTBOUND_IMPORT) && policy.grants.http.is_none() {
            return Err(LoadError::NeedsGrant {
                import: import.clone(),
            });
        }
        let cap = Capability::of(import);
        if !cap.allowed() {
            return Err(LoadError::NotGranted {
                import: import.clone(),
                capability: cap.name(),
            });
        }
    }
    let limit = policy.limits.max_memory as u64;
    if let Some(min) = min_memory.filter(|m| *m > limit) {
        return Err(LoadError::MemoryTooSmall { min, limit });
    }
    Ok(())
}

/// Names the common mistakes before the parser does, in words an operator can act on.
fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 0x0d, 0, 1, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(LoadError::Compile(
            "this is a core WebAssembly module, not a component; build for the wasm32-wasip2 target".into(),
        )),
        _ => Err(LoadError::Compile("not a WebAssembly file (it does not start with `\\0asm`)".into())),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// A compiled, pre-linked plugin version.
pub struct LoadedPlugin {
    /// The name in the manifest.
    pub name: Arc<str>,
    /// Where it was read from.
    pub path: PathBuf,
    /// sha256 of the file, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: usize,
    /// The file, for snapshots taken after `init` ([`preinit`]).
    wasm: preinit::Wasm,
    /// When this version was loaded.
    pub loaded_at: SystemTime,
    /// How long reading, compiling and pre-linking took.
    pub load_time: Duration,
    /// Where its compiled code came from (compiled, or a cache).
    pub source: CacheSource,
    /// Every import of the component (`wasi:cli/stdout@0.2.6`, ...), in order.
    pub imports: Vec<String>,
    /// Every export of the component.
    pub exports: Vec<String>,
    /// The largest initial linear memory any of its modules declares, in bytes.
    pub min_memory: Option<u64>,
    pre: bindings::PluginPre<HostState>,
    /// Pre-linked against the direct linker, with the hooks' export indices.
    direct: Option<(wasmtime::component::InstancePre<HostState>, direct::Exports)>,
}

impl LoadedPlugin {
    /// Checks the compiled plugin against a policy: size, `sha256` pin,
    /// imports and declared initial memory. Loading already does this; call
    /// it again when reusing a compiled plugin under a changed manifest.
    pub fn admit(&self, policy: &Policy) -> Result<(), LoadError> {
        check_file(self.size, &self.sha256, policy)?;
        admit(&self.imports, self.min_memory, policy)
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// Why a plugin file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read the plugin file: {0}")]
    Read(String),
    /// The file is bigger than `max_module_bytes`.
    #[error("the plugin is {size} bytes, more than its `max_module_bytes` ({limit})")]
    TooLarge {
        /// The file's size.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The file's sha256 is not the one pinned in the manifest.
    #[error("sha256 mismatch: the manifest pins {pinned} but the file is {actual}")]
    HashMismatch {
        /// The digest in the manifest.
        pinned: String,
        /// The file's digest.
        actual: String,
    },
    /// Not a valid WebAssembly component.
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    /// It imports an interface the gateway never grants to plugins.
    #[error("imports `{import}` ({capability}), which is not granted to plugins")]
    NotGranted {
        /// The import's full name.
        import: String,
        /// The capability it belongs to.
        capability: &'static str,
    },
    /// It imports outbound HTTP but the manifest has no `grants.http` for it.
    #[error(
        "imports `{import}` (outbound HTTP), but the manifest says nothing of what it may call (`grants.http`)"
    )]
    NeedsGrant {
        /// The import's full name.
        import: String,
    },
    /// A module declares more initial memory than `max_memory` allows.
    #[error("declares {min} bytes of initial linear memory, more than its `max_memory` ({limit})")]
    MemoryTooSmall {
        /// Bytes declared.
        min: u64,
        /// The limit in force.
        limit: u64,
    },
    /// It imports something the gateway does not provide.
    #[error("imports something the gateway does not provide: {0}")]
    Link(String),
    /// It does not export the `weir:plugin/filter` interface.
    #[error("does not implement the weir:plugin@0.2.0 `plugin` world: {0}")]
    World(String),
    /// It was built against another version of the WIT package.
    #[error(
        "built for {found}, but this gateway speaks weir:plugin@0.2.0: rebuild it against weir-sdk 0.2 \
         (`cargo update -p weir-sdk`, then `cargo build --target wasm32-wasip2 --release`)"
    )]
    WitVersion {
        /// The package version it targets, e.g. `weir:plugin@0.1.0`.
        found: String,
    },
}
