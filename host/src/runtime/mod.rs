//! The sandbox runtime: one wasmtime engine for the process, and the steps
//! loaded into it.
//!
//! - [`cache`]: components compiled once, kept on disk as precompiled
//!   artifacts keyed by the component's hash and the engine's settings;
//!   several components compile in parallel, with progress.
//! - [`sandbox`]: the per-store state of a step (WASI context with nothing
//!   granted unless `troupe.toml` says so, limits, the `host` import).
//! - [`state`]: `wasi:keyvalue` for steps: an invocation's reads and
//!   writes of its buckets, kept for the commit that settles it.
//! - [`guard`]: deadlines that hold whether a guest runs or waits in a
//!   host call, and the stop signal that cuts every call at shutdown.
//! - [`outbound`]: `wasi:http` for steps: grants checked on every request,
//!   secrets added by the host, idempotency keys, limits.
//! - [`step`]: a loaded step: its contract, and `handle` with a fresh or a
//!   reused instance, every failure classified.
//! - `image`: components' copy-on-write memory images, made at load.
//!
//! **A guest never runs on the async runtime's threads**: callers run
//! [`step::LoadedStep::handle`] on threads of their own (see `choreo`), so a
//! guest that loops until its deadline delays nothing else.

pub mod cache;
pub mod config;
pub mod contracts;
pub mod guard;
mod image;
pub mod outbound;
pub mod sandbox;
mod state;
pub mod step;

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
};

use crate::world::Step;
use guard::Guard;
use sandbox::StepCtx;

/// The largest linear memory a step may be given, MiB.
pub const MAX_MEMORY_MB: u64 = 1024;
/// Core instances one component may create (each step's component).
pub const MAX_CORE_INSTANCES: u32 = 64;
/// Linear memories one component may define, all its core instances
/// together.
pub const MAX_MEMORIES: u32 = 8;
/// Tables one component may define, all its core instances together.
pub const MAX_TABLES: u32 = 64;

/// Why the runtime or a step could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot set up the wasm engine: {0:#}")]
    Engine(wasmtime::Error),
    #[error("cannot read component {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid WebAssembly component: {error:#}")]
    Compile {
        path: std::path::PathBuf,
        error: wasmtime::Error,
    },
    #[error("{path} needs more than the sandbox allows: {error:#}")]
    TooLarge {
        path: std::path::PathBuf,
        error: wasmtime::Error,
    },
    #[error("the component does not fit the sandbox: {error:#}")]
    Link {
        step: String,
        error: wasmtime::Error,
    },
    #[error("the component does not implement the `troupe:step` world: {error:#}")]
    World {
        step: String,
        error: wasmtime::Error,
    },
    #[error("`describe` failed: {error}")]
    Describe { step: String, error: String },
    #[error("{error}")]
    Grants { step: String, error: String },
    #[error("bad contract: {error}")]
    Contract {
        step: String,
        error: crate::contract::ContractError,
    },
    #[error("artifact cache {path}: {source}")]
    Cache {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The process's wasm engine, the linker every step shares, and the guard
/// that keeps every call to its deadline.
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<StepCtx>,
    pub(crate) guard: Arc<Guard>,
}

impl Runtime {
    /// One engine: Cranelift, the component model, async calls with epoch
    /// interruption, and the pooling allocator sized for a few hundred live
    /// instances of any of the supported guest languages.
    pub fn new() -> Result<Runtime, RuntimeError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(1000)
            .total_core_instances(4000)
            .total_memories(1000)
            .total_tables(4000)
            .total_stacks(1000)
            .max_core_instances_per_component(MAX_CORE_INSTANCES)
            .max_memories_per_component(MAX_MEMORIES)
            .max_tables_per_component(MAX_TABLES)
            .table_elements(100_000)
            .max_core_instance_size(1 << 20)
            .max_component_instance_size(1 << 20)
            .max_memory_size((MAX_MEMORY_MB as usize) << 20)
            // A fresh instance per message makes slot reuse the hot path:
            // reset memory with memset rather than madvise (no page faults,
            // no TLB shootdowns), only the pages the guest dirtied where
            // the kernel can say which (PAGEMAP_SCAN, Linux 6.7+). What is
            // past that is given back to the kernel when the instance is
            // freed, not batched: a batch of freed memory bombs would stay
            // resident (32 x memory_mb, before).
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(Enabled::Auto)
            .decommit_batch_size(1);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .parallel_compilation(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(RuntimeError::Engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(RuntimeError::Engine)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(RuntimeError::Engine)?;
        Step::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(RuntimeError::Engine)?;
        {
            use crate::world::keyvalue::wasi::keyvalue::{atomics, batch, store};
            store::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
                .map_err(RuntimeError::Engine)?;
            atomics::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
                .map_err(RuntimeError::Engine)?;
            batch::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
                .map_err(RuntimeError::Engine)?;
        }
        let guard = Guard::new(&engine)
            .map_err(|e| RuntimeError::Engine(wasmtime::Error::msg(e.to_string())))?;
        Ok(Runtime {
            engine,
            linker,
            guard: Arc::new(guard),
        })
    }

    /// The engine, for callers that compile or inspect components.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Cut every guest call short, now and from now on (the host is
    /// stopping): calls end with [`step::Failure::Stopped`].
    pub fn stop(&self) {
        self.guard.stop();
    }
}
