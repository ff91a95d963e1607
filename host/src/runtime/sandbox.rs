//! The state a step's store carries: the WASI context built from its grants,
//! the resource limiter, and the `troupe:step/host` import.
//!
//! **Nothing is granted by default**: no preopened directory, no
//! environment variable, no stdio, no sockets. Clocks and random numbers
//! are always available (they reach nothing outside the sandbox).

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::app::{Grants, Limits};
use crate::world::Level;
use crate::world::troupe::step::{host, types};

/// The longest log line a step can write; the rest is cut.
pub const MAX_LOG_LINE: usize = 4096;
/// The most table elements a step may have (function references).
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Per-store data of a step instance.
pub struct StepCtx {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    step: Arc<str>,
    /// The event being handled, for log lines.
    pub(crate) event_id: String,
}

/// Enforces `limits.memory_mb` and records that it did, so the failure is
/// classed `limit` rather than `trap`.
pub(crate) struct Limiter {
    memory_bytes: usize,
    pub(crate) exceeded: Option<String>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.exceeded = Some(format!(
                "memory limit of {} MiB exceeded (asked for {} MiB)",
                self.memory_bytes >> 20,
                desired.div_ceil(1 << 20)
            ));
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.exceeded = Some(format!(
                "table limit of {MAX_TABLE_ELEMENTS} elements exceeded"
            ));
            return Ok(false);
        }
        Ok(true)
    }
}

impl StepCtx {
    /// A store state for `step` with exactly the given grants.
    pub fn new(step: &Arc<str>, grants: &Grants, limits: &Limits) -> anyhow::Result<StepCtx> {
        let mut b = WasiCtxBuilder::new();
        b.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for d in &grants.dirs {
            let perms = if d.write {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            b.preopened_dir(&d.host, &d.guest, perms).map_err(|e| {
                anyhow::anyhow!(
                    "cannot grant directory {} as {}: {e:#}",
                    d.host.display(),
                    d.guest
                )
            })?;
        }
        for (k, v) in &grants.env {
            b.env(k, v);
        }
        if grants.stderr {
            // Both of the guest's output streams go to the host's stderr:
            // the host's stdout is for its own command output.
            b.inherit_stderr().stdout(wasmtime_wasi::cli::stderr());
        }
        Ok(StepCtx {
            wasi: b.build(),
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_bytes: (limits.memory_mb as usize) << 20,
                exceeded: None,
            },
            step: step.clone(),
            event_id: String::new(),
        })
    }
}

impl WasiView for StepCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for StepCtx {}

impl host::Host for StepCtx {
    fn log(&mut self, level: Level, mut text: String) {
        if text.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        let (step, event) = (&*self.step, self.event_id.as_str());
        match level {
            Level::Trace => tracing::trace!(target: "troupe::guest", step, event, "{text}"),
            Level::Debug => tracing::debug!(target: "troupe::guest", step, event, "{text}"),
            Level::Info => tracing::info!(target: "troupe::guest", step, event, "{text}"),
            Level::Warn => tracing::warn!(target: "troupe::guest", step, event, "{text}"),
            Level::Error => tracing::error!(target: "troupe::guest", step, event, "{text}"),
        }
    }
}
