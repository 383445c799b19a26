//! The plugin runtime: one wasmtime [`Engine`] for the process, plugins
//! compiled and pre-linked once, and per-route instance pools.
//!
//! - [`Runtime`]: engine (pooling allocator, copy-on-write memory images,
//!   epoch interruption driven by one ticker thread) and the linker holding
//!   the `weir:plugin` imports plus an inert WASI.
//! - [`LoadedPlugin`]: a compiled, type-checked, pre-linked component.
//! - [`ChainPlugin`]: a plugin as used by one route: its config, isolation
//!   mode and pool of initialised instances; runs the hooks.

mod bindings;
pub mod host;
mod instance;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use bindings::{Action, Reply};
pub use host::http::{RequestState, ResponseState};
pub use instance::{ChainPlugin, PluginError, PluginErrorKind};

use host::HostState;
use host::state::SharedState;

/// How often the epoch ticks; deadlines are counted in ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// CPU deadline for one hook call (in wall time, checked every tick).
pub const HOOK_DEADLINE: Duration = Duration::from_secs(1);
/// Largest linear memory one instance may grow to.
pub const MAX_MEMORY: usize = 64 << 20;
/// Largest `.wasm` accepted, so compile time stays bounded.
pub const MAX_MODULE_BYTES: usize = 32 << 20;

/// The process-wide plugin engine.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    shared: Arc<SharedState>,
}

impl Runtime {
    /// The runtime shared by every gateway in this process (one engine, one ticker).
    pub fn global() -> &'static Arc<Runtime> {
        static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();
        RUNTIME.get_or_init(|| Arc::new(Runtime::new().expect("cannot create the wasmtime engine")))
    }

    fn new() -> wasmtime::Result<Runtime> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(2000)
            .total_core_instances(8000)
            .total_memories(2000)
            .total_tables(8000)
            .total_stacks(2000)
            .max_memory_size(MAX_MEMORY)
            // Keeping the first pages resident makes fresh instances cheaper.
            .linear_memory_keep_resident(128 << 10)
            .table_keep_resident(16 << 10);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .memory_init_cow(true)
            .max_wasm_stack(512 << 10)
            .async_stack_size(1 << 20)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        bindings::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| wasmtime::format_err!("cannot start the epoch ticker: {e}"))?;

        Ok(Runtime {
            engine,
            linker,
            shared: Arc::new(SharedState::default()),
        })
    }

    /// Reads, hashes, compiles and pre-links a plugin. Blocking: call it off the request path.
    pub fn load(&self, name: &str, path: &Path) -> Result<LoadedPlugin, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| LoadError::Read(e.to_string()))?;
        self.load_bytes(name, path, bytes)
    }

    /// Hashes, compiles and pre-links a plugin read from `path`. Blocking.
    pub fn load_bytes(
        &self,
        name: &str,
        path: &Path,
        bytes: Vec<u8>,
    ) -> Result<LoadedPlugin, LoadError> {
        let started = Instant::now();
        if bytes.len() > MAX_MODULE_BYTES {
            return Err(LoadError::TooLarge(bytes.len()));
        }
        let sha256 = sha256_hex(&bytes);
        check_header(&bytes)?;
        let component = Component::from_binary(&self.engine, &bytes)
            .map_err(|e| LoadError::Compile(first_line(&format!("{e:#}"))))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let pre = bindings::PluginPre::new(pre).map_err(|e| LoadError::World(format!("{e:#}")))?;
        Ok(LoadedPlugin {
            name: name.into(),
            path: path.to_path_buf(),
            sha256,
            size: bytes.len(),
            loaded_at: SystemTime::now(),
            load_time: started.elapsed(),
            pre,
        })
    }
}

/// Lower-case hex sha256 of `bytes`, as `sha256sum` prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
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
    /// When this version was loaded.
    pub loaded_at: SystemTime,
    /// How long reading, compiling and pre-linking took.
    pub load_time: Duration,
    pre: bindings::PluginPre<HostState>,
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
    /// The file is bigger than [`MAX_MODULE_BYTES`].
    #[error("the plugin is {0} bytes, more than the {MAX_MODULE_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not a valid WebAssembly component.
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    /// It imports something the gateway does not provide.
    #[error("imports something the gateway does not provide: {0}")]
    Link(String),
    /// It does not export the `weir:plugin/filter` interface.
    #[error("does not implement the weir:plugin@0.1.0 `plugin` world: {0}")]
    World(String),
}
