//! Compiling components, once.
//!
//! A component is compiled to native code by Cranelift the first time it is
//! seen and the result is kept in a cache directory as
//! `<sha256 of the component>-<engine fingerprint>.cwasm`. The fingerprint
//! covers wasmtime's version and every engine setting that affects code, so
//! a changed engine never loads an artifact made for another. Artifacts are
//! written to a temporary file of their own and renamed, so a crash never
//! leaves half of one and two compilations of one component never write
//! the same file; an artifact that fails to load is compiled again.
//!
//! **Only artifacts this module wrote are ever deserialized**: the cache
//! directory belongs to the app (`.troupe/cache`).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::RuntimeError;

/// Write `bytes` to `path` whole: to a temporary file of this call's own,
/// then renamed, so a reader never sees part of it and threads (or hosts)
/// writing the same file at once each write and rename their own.
pub(crate) fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Loaded from a precompiled artifact.
    Cached,
    /// Compiled now (and stored).
    Compiled,
}

/// A component ready to instantiate.
pub struct Loaded {
    pub component: Component,
    pub origin: Origin,
    pub elapsed: Duration,
    /// Hex sha256 of the component file.
    pub hash: String,
}

/// The on-disk artifact cache.
pub struct ArtifactCache {
    dir: PathBuf,
    fingerprint: String,
}

impl ArtifactCache {
    /// A cache in `dir` for components run on `engine`.
    pub fn new(engine: &Engine, dir: impl Into<PathBuf>) -> ArtifactCache {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        ArtifactCache {
            dir: dir.into(),
            fingerprint: format!("{:016x}", h.finish()),
        }
    }

    /// Load (from the cache) or compile (and cache) the component at `path`.
    pub fn load(&self, engine: &Engine, path: &Path) -> Result<Loaded, RuntimeError> {
        let start = Instant::now();
        let bytes = std::fs::read(path).map_err(|source| RuntimeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let hash = hex::encode(Sha256::digest(&bytes));
        let artifact = self.dir.join(format!("{hash}-{}.cwasm", self.fingerprint));
        // Read the artifact into memory rather than mapping the file: a
        // file truncated under a running host would otherwise crash it.
        if let Ok(precompiled) = std::fs::read(&artifact) {
            // SAFETY: the file is in the app's own cache directory, named by
            // the hash of its source and the engine fingerprint, and was
            // written whole by `store` below (write to a temporary, rename).
            match unsafe { Component::deserialize(engine, &precompiled) } {
                Ok(component) => {
                    return Ok(Loaded {
                        component,
                        origin: Origin::Cached,
                        elapsed: start.elapsed(),
                        hash,
                    });
                }
                Err(e) => tracing::warn!(
                    artifact = %artifact.display(),
                    "cached artifact does not load ({e:#}); compiling again"
                ),
            }
        }
        let component = Component::new(engine, &bytes).map_err(|error| {
            let path = path.to_path_buf();
            // The pooling allocator checks a component's counts once it is
            // compiled; its message names the count and the maximum.
            if format!("{error:#}").contains("exceeds the configured maximum") {
                RuntimeError::TooLarge { path, error }
            } else {
                RuntimeError::Compile { path, error }
            }
        })?;
        self.store(&artifact, &component)?;
        Ok(Loaded {
            component,
            origin: Origin::Compiled,
            elapsed: start.elapsed(),
            hash,
        })
    }

    fn store(&self, artifact: &Path, component: &Component) -> Result<(), RuntimeError> {
        let err = |source| RuntimeError::Cache {
            path: artifact.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let bytes = component
            .serialize()
            .map_err(|e| err(std::io::Error::other(e)))?;
        write_whole(artifact, &bytes).map_err(err)
    }

    /// Load several components at once, in parallel, showing a progress
    /// line per component on a terminal. Results are in input order.
    pub fn load_all(
        &self,
        engine: &Engine,
        items: &[(String, PathBuf)],
    ) -> Vec<Result<Loaded, RuntimeError>> {
        let progress = MultiProgress::new();
        let style =
            ProgressStyle::with_template("{spinner} {prefix:>24} {msg}").expect("a valid template");
        std::thread::scope(|s| {
            let handles: Vec<_> = items
                .iter()
                .map(|(name, path)| {
                    let bar = progress.add(ProgressBar::new_spinner());
                    bar.set_style(style.clone());
                    bar.set_prefix(name.clone());
                    bar.set_message(format!("loading {}", path.display()));
                    bar.enable_steady_tick(Duration::from_millis(100));
                    s.spawn(move || {
                        let r = self.load(engine, path);
                        match &r {
                            Ok(l) => {
                                let how = match l.origin {
                                    Origin::Cached => "cached",
                                    Origin::Compiled => "compiled",
                                };
                                match l.origin {
                                    Origin::Compiled => tracing::info!(step = %name, "compiled in {:.1?}", l.elapsed),
                                    Origin::Cached => tracing::debug!(step = %name, "loaded precompiled in {:.1?}", l.elapsed),
                                }
                                bar.finish_with_message(format!("{how} in {:.1?}", l.elapsed));
                            }
                            Err(e) => bar.abandon_with_message(format!("failed: {e}")),
                        }
                        r
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a compile thread does not panic"))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps of one app often share a component (one plugin, several
    /// configurations): loading it from several threads at once into an
    /// empty cache must work for each (they once shared one temporary
    /// file, and all but the first rename failed).
    #[test]
    fn one_component_loaded_by_many_threads_at_once() {
        let engine = Engine::default();
        let dir = std::env::temp_dir().join(format!("troupe-cache-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        // The smallest component: the preamble of the component layer.
        let wasm = dir.join("empty.wasm");
        std::fs::write(&wasm, [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]).unwrap();
        for round in 0..20 {
            let cache = ArtifactCache::new(&engine, dir.join(format!("cache{round}")));
            let items: Vec<(String, PathBuf)> =
                (0..8).map(|i| (format!("s{i}"), wasm.clone())).collect();
            for r in cache.load_all(&engine, &items) {
                r.unwrap();
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
