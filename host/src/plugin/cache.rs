//! Compiled plugins by the sha256 of their `.wasm`, so going back to a
//! version seen before, or restarting with the same plugins, compiles
//! nothing.
//!
//! - **Memory**: the last [`DEFAULT_ENTRIES`] (`[compile_cache] entries`)
//!   components used, most recent first. A [`Component`] is an `Arc`, so a hit
//!   costs a clone.
//! - **Disk** (`[compile_cache] dir`): `SHA256.ENGINE.cwasm`, wasmtime's own
//!   serialisation, beside `SHA256.ENGINE.sum`, the sha256 of the `.cwasm`.
//!   `ENGINE` is a digest of wasmtime's precompile compatibility hash (its
//!   version and every compilation setting of this engine), so another
//!   build or configuration never reads an entry it did not write. An entry
//!   is used only when the directory and the file belong to this user and
//!   no one else may write them, the `.cwasm` matches its sum (written last,
//!   so a torn write is no entry), and wasmtime accepts its header; anything
//!   else is logged, removed and compiled afresh.
//!
//! Deserialising runs native code compiled earlier: that is why the cache
//! refuses a directory others can write, and why an entry is keyed by the
//! source's digest (a file is only ever the compilation of that source).

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Compiled plugins kept in memory unless the manifest says otherwise.
pub const DEFAULT_ENTRIES: usize = 16;

/// Where a loaded plugin's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheSource {
    /// The in-memory cache: no compile, no disk read.
    Memory,
    /// The disk cache: deserialised, not compiled.
    Disk,
    /// Compiled now.
    Compiled,
}

impl CacheSource {
    /// Every value's label, in declaration order (the metric's label set).
    pub const LABELS: [&'static str; 3] = ["memory", "disk", "compiled"];

    /// The label for logs and metrics.
    pub fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// The compile cache of one engine.
pub(crate) struct CompileCache {
    engine: Engine,
    /// Hex digest of the engine's precompile compatibility hash.
    engine_tag: String,
    memory: Mutex<Memory>,
}

struct Memory {
    capacity: usize,
    /// Most recently used first.
    entries: VecDeque<(String, Component)>,
}

/// Feeds a `Hash` into sha256 (wasmtime exposes compatibility as `impl Hash`).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl CompileCache {
    pub(crate) fn new(engine: &Engine) -> CompileCache {
        let mut h = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_tag = hex::encode(h.0.finalize())[..16].to_string();
        CompileCache {
            engine: engine.clone(),
            engine_tag,
            memory: Mutex::new(Memory {
                capacity: DEFAULT_ENTRIES,
                entries: VecDeque::new(),
            }),
        }
    }

    /// Sets how many compiled plugins memory keeps (at least 1).
    pub(crate) fn set_capacity(&self, entries: usize) {
        let mut m = self.lock();
        m.capacity = entries.max(1);
        let cap = m.capacity;
        m.entries.truncate(cap);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The compiled plugin for `sha256` from memory, moved to the front.
    pub(crate) fn get(&self, sha256: &str) -> Option<Component> {
        let mut m = self.lock();
        let at = m.entries.iter().position(|(k, _)| k == sha256)?;
        let entry = m.entries.remove(at)?;
        let component = entry.1.clone();
        m.entries.push_front(entry);
        Some(component)
    }

    /// Forgets the compiled plugin for `sha256` in memory (the disk keeps it).
    pub(crate) fn evict(&self, sha256: &str) {
        self.lock().entries.retain(|(k, _)| k != sha256);
    }

    fn remember(&self, sha256: &str, component: &Component) {
        let mut m = self.lock();
        m.entries.retain(|(k, _)| k != sha256);
        m.entries
            .push_front((sha256.to_string(), component.clone()));
        let cap = m.capacity;
        m.entries.truncate(cap);
    }

    /// The compiled plugin for `bytes` (whose digest is `sha256`): from
    /// memory, else from `dir`, else compiled (and then stored in both).
    /// Blocking: compiling takes milliseconds to seconds.
    pub(crate) fn get_or_compile(
        &self,
        sha256: &str,
        bytes: &[u8],
        dir: Option<&Path>,
    ) -> wasmtime::Result<(Component, CacheSource)> {
        if let Some(c) = self.get(sha256) {
            return Ok((c, CacheSource::Memory));
        }
        let disk = dir.and_then(|d| DiskEntry::new(d, sha256, &self.engine_tag));
        if let Some(entry) = &disk
            && let Some(c) = entry.read(&self.engine)
        {
            self.remember(sha256, &c);
            return Ok((c, CacheSource::Disk));
        }
        let component = Component::from_binary(&self.engine, bytes)?;
        self.remember(sha256, &component);
        if let Some(entry) = &disk {
            entry.write(&component);
        }
        Ok((component, CacheSource::Compiled))
    }
}

/// One plugin's files in the cache directory.
struct DiskEntry {
    cwasm: PathBuf,
    sum: PathBuf,
}

impl DiskEntry {
    /// `None` (logged) when the directory cannot be made or is not safe to trust.
    fn new(dir: &Path, sha256: &str, engine_tag: &str) -> Option<DiskEntry> {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the compile cache directory; compiling without it");
            return None;
        }
        if let Err(why) = private(dir) {
            tracing::warn!(dir = %dir.display(), "compile cache directory not used: {why}");
            return None;
        }
        let stem = format!("{sha256}.{engine_tag}");
        Some(DiskEntry {
            cwasm: dir.join(format!("{stem}.cwasm")),
            sum: dir.join(format!("{stem}.sum")),
        })
    }

    /// The entry, if present and valid; a bad entry is removed.
    fn read(&self, engine: &Engine) -> Option<Component> {
        let sum = std::fs::read_to_string(&self.sum).ok()?;
        let refuse = |why: String| {
            tracing::warn!(file = %self.cwasm.display(), "compile cache entry refused, compiling afresh: {why}");
            let _ = std::fs::remove_file(&self.sum);
            let _ = std::fs::remove_file(&self.cwasm);
            None
        };
        if let Err(why) = private(&self.cwasm) {
            return refuse(why);
        }
        let bytes = match std::fs::read(&self.cwasm) {
            Ok(b) => b,
            Err(e) => return refuse(e.to_string()),
        };
        if hex::encode(Sha256::digest(&bytes)) != sum.trim() {
            return refuse("its content does not match its sum (torn write or tampering)".into());
        }
        if Engine::detect_precompiled(&bytes).is_none() {
            return refuse("not a wasmtime precompiled artifact".into());
        }
        // SAFETY: `deserialize` trusts the bytes to be wasmtime's own output
        // for a compatible engine. They are: the file was written by
        // `DiskEntry::write` below (its sum matches, and only this user can
        // write the directory and the file, see `private`), its name carries
        // this engine's compatibility digest, and wasmtime checks the
        // header's version and settings again before using it.
        #[expect(unsafe_code, reason = "loading our own serialised compilation")]
        let component = unsafe { Component::deserialize(engine, &bytes) };
        match component {
            Ok(c) => Some(c),
            Err(e) => refuse(format!("{e:#}")),
        }
    }

    /// Stores `component`: the `.cwasm`, then its sum, each written to a
    /// temporary file and renamed, so readers see whole files or none.
    fn write(&self, component: &Component) {
        let result = component
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))
            .and_then(|bytes| {
                let sum = hex::encode(Sha256::digest(&bytes));
                write_atomically(&self.cwasm, &bytes)?;
                write_atomically(&self.sum, sum.as_bytes())
            });
        if let Err(e) = result {
            tracing::warn!(file = %self.cwasm.display(), error = %e, "cannot write the compile cache entry");
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The path must belong to this user and be writable by no one else.
fn private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, not to this process's uid {me}",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by group or others (mode {:o}): `chmod go-w` it",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}
