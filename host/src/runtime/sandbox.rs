//! The state a step's store carries: the WASI context built from its grants,
//! the resource limiter, the current call's deadline, and the
//! `troupe:step/host` import (and, through [`super::state`], the step's
//! buckets).
//!
//! **Nothing is granted by default**: no preopened directory, no
//! environment variable, no stdio, no sockets, no HTTP request (a request
//! no `grants.http` entry allows is denied, see [`super::outbound`]). Clocks and random numbers
//! are always available (they reach nothing outside the sandbox).
//!
//! **A step's memory limit covers the whole instance**: every linear
//! memory and table of every core instance in the component counts against
//! `limits.memory_mb` together.
//!
//! Log lines are escaped and cut ([`crate::text`]) and rate-limited per
//! step ([`LogBudget`]): a guest cannot forge the host's log lines or flood
//! it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, UpdateDeadline};
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::config::{Grants, Limits};
use super::guard::{CHECK_EVERY, Cut, Guard, ticks_until};
use super::outbound::{Outbound, StepHttp};
use super::state::StepState;
use crate::text::{MAX_LOG_LINE, clean};
use crate::world::Level;
use crate::world::troupe::step::{host, types};

/// The most elements one table may have (function references).
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// What one table element costs against the memory limit, bytes.
const TABLE_ELEMENT_BYTES: usize = 8;

/// Per-store data of a step instance.
pub struct StepCtx {
    wasi: WasiCtx,
    pub(super) table: ResourceTable,
    http_ctx: WasiHttpCtx,
    /// The step's outbound HTTP, and the invocation its calls belong to.
    pub(crate) http: StepHttp,
    /// The step's buckets, and the invocation's reads and writes of them.
    pub(crate) kv: StepState,
    pub(crate) limiter: Limiter,
    step: Arc<str>,
    logs: Arc<LogBudget>,
    /// The event being handled, for log lines.
    pub(crate) event_id: String,
    /// When the current call must end.
    pub(crate) deadline: Instant,
    /// Set by the epoch check when it interrupted the guest, and why.
    pub(crate) cut: Option<Cut>,
}

/// Enforces `limits.memory_mb` over all of an instance's memories and
/// tables, and records that it did, so the failure is classed `limit`
/// rather than `trap`.
pub(crate) struct Limiter {
    limit_bytes: usize,
    /// What the instance's memories and tables take now.
    used_bytes: usize,
    pub(crate) exceeded: Option<String>,
}

impl Limiter {
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let total = self.used_bytes - current.min(self.used_bytes) + desired;
        if total > self.limit_bytes {
            self.exceeded = Some(format!(
                "memory limit of {} MiB exceeded (the instance's memories and tables \
                 would take {} MiB)",
                self.limit_bytes >> 20,
                total.div_ceil(1 << 20)
            ));
            return false;
        }
        self.used_bytes = total;
        true
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.exceeded = Some(format!(
                "table limit of {MAX_TABLE_ELEMENTS} elements exceeded"
            ));
            return Ok(false);
        }
        Ok(self.grow(current * TABLE_ELEMENT_BYTES, desired * TABLE_ELEMENT_BYTES))
    }
}

/// A step's allowance of log lines: `limits.log_lines_per_second`, with
/// a burst of one second's worth, shared by all its instances. Lines over
/// it are dropped and counted; one line a second at most says how many.
/// The first line dropped after a quiet spell schedules that line (a
/// thread that waits out the second and then reports), so a flood that
/// ends before the second does is reported all the same (it was not: the
/// report waited for a later line that never came).
pub struct LogBudget {
    per_second: f64,
    state: Mutex<Bucket>,
    dropped: AtomicU64,
}

struct Bucket {
    tokens: f64,
    last: Instant,
    unreported: u64,
    reported: Instant,
    /// A report is scheduled.
    scheduled: bool,
}

/// What [`LogBudget::take`] decided.
#[derive(Debug, PartialEq)]
pub struct Taken {
    /// Write the line.
    pub write: bool,
    /// Report what was dropped after this long (the first drop after a
    /// quiet spell).
    pub report_in: Option<Duration>,
}

/// The least time between two reports of dropped lines.
const REPORT_EVERY: Duration = Duration::from_secs(1);

impl LogBudget {
    pub fn new(per_second: u32) -> LogBudget {
        let now = Instant::now();
        LogBudget {
            per_second: f64::from(per_second),
            state: Mutex::new(Bucket {
                tokens: f64::from(per_second),
                last: now,
                unreported: 0,
                reported: now.checked_sub(REPORT_EVERY).unwrap_or(now),
                scheduled: false,
            }),
            dropped: AtomicU64::new(0),
        }
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether a line may be written now, and whether to schedule a
    /// report of dropped lines.
    fn take(&self) -> Taken {
        let mut b = self.state.lock().expect("log budget lock");
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * self.per_second;
        b.tokens = (b.tokens + refill).min(self.per_second);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Taken {
                write: true,
                report_in: None,
            };
        }
        b.unreported += 1;
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let report_in = (!b.scheduled).then(|| {
            b.scheduled = true;
            (b.reported + REPORT_EVERY).saturating_duration_since(now)
        });
        Taken {
            write: false,
            report_in,
        }
    }

    /// The lines dropped since the last report, now reported.
    fn report(&self) -> u64 {
        let mut b = self.state.lock().expect("log budget lock");
        b.scheduled = false;
        b.reported = Instant::now();
        std::mem::take(&mut b.unreported)
    }

    /// Report what was dropped once `after` has passed, from a thread of
    /// its own (the guest's call may end, and no line come, before then).
    fn report_later(self: &Arc<Self>, after: Duration, step: Arc<str>) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("troupe-log-report".into())
            .spawn(move || {
                std::thread::sleep(after);
                let n = me.report();
                if n > 0 {
                    tracing::warn!(target: "troupe::guest", step = &*step, "{n} log lines dropped (limits.log_lines_per_second)");
                }
            });
        if spawned.is_err() {
            // No thread to spare: the next drop schedules again.
            self.state.lock().expect("log budget lock").scheduled = false;
        }
    }
}

impl StepCtx {
    /// A store state for `step` with exactly the given grants.
    pub(crate) fn new(
        step: &Arc<str>,
        grants: &Grants,
        limits: &Limits,
        logs: &Arc<LogBudget>,
        outbound: &Arc<Outbound>,
        kv: StepState,
    ) -> anyhow::Result<StepCtx> {
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
            http_ctx: WasiHttpCtx::new(),
            http: StepHttp::new(outbound.clone()),
            kv,
            limiter: Limiter {
                limit_bytes: (limits.memory_mb as usize) << 20,
                used_bytes: 0,
                exceeded: None,
            },
            step: step.clone(),
            logs: logs.clone(),
            event_id: String::new(),
            deadline: Instant::now(),
            cut: None,
        })
    }
}

/// The epoch callback of a store (its calls end at `StepCtx::deadline`): while
/// the guest runs, look at the clock every few ticks; interrupt it once
/// the deadline has passed or the host is stopping.
pub(crate) fn epoch_check(
    guard: &Guard,
) -> impl FnMut(wasmtime::StoreContextMut<'_, StepCtx>) -> wasmtime::Result<UpdateDeadline>
+ Send
+ Sync
+ 'static {
    let stopping = guard.stopping_flag();
    let check = CHECK_EVERY.as_millis() as u64;
    move |mut cx| {
        let data = cx.data_mut();
        if stopping.load(Ordering::Relaxed) {
            data.cut = Some(Cut::Stopping);
            return Ok(UpdateDeadline::Interrupt);
        }
        let now = Instant::now();
        if now >= data.deadline {
            data.cut = Some(Cut::Deadline);
            return Ok(UpdateDeadline::Interrupt);
        }
        Ok(UpdateDeadline::Continue(ticks_until(
            data.deadline,
            now,
            check,
        )))
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

impl WasiHttpView for StepCtx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

impl types::Host for StepCtx {}

impl host::Host for StepCtx {
    fn log(&mut self, level: Level, text: String) {
        use tracing::Level as L;
        let level = match level {
            Level::Trace => L::TRACE,
            Level::Debug => L::DEBUG,
            Level::Info => L::INFO,
            Level::Warn => L::WARN,
            Level::Error => L::ERROR,
        };
        // A line nobody would see costs no budget (and is not counted).
        let enabled = match level {
            L::TRACE => tracing::enabled!(target: "troupe::guest", L::TRACE),
            L::DEBUG => tracing::enabled!(target: "troupe::guest", L::DEBUG),
            L::INFO => tracing::enabled!(target: "troupe::guest", L::INFO),
            L::WARN => tracing::enabled!(target: "troupe::guest", L::WARN),
            _ => tracing::enabled!(target: "troupe::guest", L::ERROR),
        };
        if !enabled {
            return;
        }
        let (step, event) = (&*self.step, self.event_id.as_str());
        let taken = self.logs.take();
        if let Some(after) = taken.report_in {
            self.logs.report_later(after, self.step.clone());
        }
        if !taken.write {
            return;
        }
        let text = clean(&text, MAX_LOG_LINE);
        match level {
            L::TRACE => tracing::trace!(target: "troupe::guest", step, event, "{text}"),
            L::DEBUG => tracing::debug!(target: "troupe::guest", step, event, "{text}"),
            L::INFO => tracing::info!(target: "troupe::guest", step, event, "{text}"),
            L::WARN => tracing::warn!(target: "troupe::guest", step, event, "{text}"),
            _ => tracing::error!(target: "troupe::guest", step, event, "{text}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memories_and_tables_count_together() {
        let mut l = Limiter {
            limit_bytes: 64 << 20,
            used_bytes: 0,
            exceeded: None,
        };
        // Seven memories of 62.5 MiB: the second does not fit.
        assert!(l.memory_growing(0, 1000 << 16, None).unwrap());
        assert!(!l.memory_growing(0, 1000 << 16, None).unwrap());
        assert!(
            l.exceeded
                .as_deref()
                .unwrap()
                .contains("would take 125 MiB")
        );
        // Growing the first memory counts only what it adds.
        assert!(l.memory_growing(1000 << 16, 1023 << 16, None).unwrap());
        // Tables count too.
        assert!(!l.table_growing(0, 90_000, None).unwrap());
        assert!(l.table_growing(0, 1_000, None).unwrap());
    }

    #[test]
    fn the_log_budget_drops_beyond_its_rate_and_counts() {
        let b = LogBudget::new(10);
        let taken: Vec<Taken> = (0..100).map(|_| b.take()).collect();
        assert_eq!(
            taken.iter().filter(|t| t.write).count(),
            10,
            "one second's burst"
        );
        assert_eq!(b.dropped(), 90);
        // The first drop of a quiet spell schedules a report, at once (no
        // report yet); the others wait for it.
        let scheduled: Vec<_> = taken.iter().filter_map(|t| t.report_in).collect();
        assert_eq!(scheduled, [Duration::ZERO]);
        assert_eq!(b.report(), 90, "a flood that ended is reported whole");
        // The next flood's report waits out the second since this one.
        let next = (0..20).find_map(|_| b.take().report_in).expect("scheduled");
        assert!(next > Duration::from_millis(900), "{next:?}");
    }
}
