//! A loaded step, and calling it.
//!
//! Loading links the component against the host's imports (WASI p2 and
//! `troupe:step/host`), checks that it exports the `step` world, calls
//! `describe` once (within [`DESCRIBE_TIMEOUT`]) and compiles the
//! contract. Handling an event runs the guest under the step's limits in a
//! fresh instance (the default: nothing survives a message) or in a reused
//! one from a small pool, and classifies every way it can fail.
//!
//! **Every call ends by its deadline**, however the guest spends its time
//! (running, or waiting in a host call): see [`super::guard`]. Text the
//! guest hands back (retry, reject and trap messages) is escaped and cut
//! here, where it leaves the sandbox.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use wasmtime::{Store, Trap};

use super::config::{Instances, SandboxConfig};
use super::guard::{CHECK_EVERY, Cut, Guard, ticks_until};
use super::image::prepare_memory_images;
use super::outbound::calls::CallRecord;
use super::outbound::{self, Invocation, Outbound};
use super::sandbox::{LogBudget, StepCtx, epoch_check};
use super::state::StepState;
use super::{Runtime, RuntimeError};
use crate::contract::StepContract;
use crate::event::Event;
use crate::kv::{Reader, Writes};
use crate::protocol::{self, FailureClass};
use crate::text;
use crate::world::{self, Step, StepPre};

/// How long a step has to answer `describe` (instantiation included).
pub const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
pub use crate::event::{MAX_CONTENT_TYPE, MAX_SUBJECT};

/// How handling one event failed: classed ([`FailureClass`]) here, where it
/// happened, or cut short because the host is stopping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The step failed to handle the event.
    Failed(protocol::Failure),
    /// The host is stopping: the call was cut short, and the event is left
    /// to be delivered again (it is not the guest's failure).
    Stopped,
}

impl Failure {
    pub fn new(class: FailureClass, message: impl Into<String>) -> Failure {
        Failure::Failed(protocol::Failure::new(class, message))
    }

    /// Its class; `None` when the host is stopping.
    pub fn class(&self) -> Option<FailureClass> {
        match self {
            Failure::Failed(f) => Some(f.class),
            Failure::Stopped => None,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Failure::Failed(protocol::Failure { class, message: m }) = self else {
            return f.write_str("the host is stopping");
        };
        match class {
            FailureClass::Retry => write!(f, "step asked for a retry: {m}"),
            FailureClass::Rejected => write!(f, "step rejected the event: {m}"),
            FailureClass::Trap => write!(f, "step trapped: {m}"),
            FailureClass::Limit => write!(f, "step exceeded a limit: {m}"),
            FailureClass::Timeout => write!(f, "step ran out of time: {m}"),
            FailureClass::Contract => write!(f, "step broke its contract: {m}"),
        }
    }
}

/// What one invocation came to: its result, the record of its outbound
/// calls and what it did to its buckets (whatever its outcome: the caller
/// commits the writes only with a successful one).
#[derive(Debug)]
pub struct Handled {
    pub result: Result<Vec<world::Emit>, Failure>,
    pub calls: Vec<CallRecord>,
    pub kv: Writes,
}

/// An instance kept for reuse, with its store.
struct Warm {
    store: Store<StepCtx>,
    bindings: Step,
    /// Events it has handled.
    uses: u32,
}

/// A step ready to handle events: its contract and its sandbox.
pub struct LoadedStep {
    pub contract: StepContract,
    pub sandbox: Sandbox,
    /// Whether the step takes the event types it consumes from the
    /// choreography, or commands only (`choreography = false`): the host
    /// sets it, the sandbox does not use it.
    pub choreography: bool,
    /// SHA-256 (hex) of the component: the host sets it, and stamps it on
    /// what the step emits.
    pub digest: String,
}

impl crate::contract::StepView for Arc<LoadedStep> {
    fn name(&self) -> &str {
        &self.sandbox.name
    }
    fn contract(&self) -> &StepContract {
        &self.contract
    }
    fn choreography(&self) -> bool {
        self.choreography
    }
}

/// Everything needed to run a step's guest: the pre-linked component, its
/// configuration, and the pool of reusable instances.
pub struct Sandbox {
    pub name: Arc<str>,
    pub config: SandboxConfig,
    engine: wasmtime::Engine,
    guard: Arc<Guard>,
    pre: StepPre<StepCtx>,
    warm: Mutex<Vec<Warm>>,
    logs: Arc<LogBudget>,
    outbound: Arc<Outbound>,
    /// Buckets granted besides the step's own.
    kv_granted: Arc<[String]>,
    /// The committed state of its buckets, once the host has a broker.
    kv_reader: OnceLock<Arc<dyn Reader>>,
}

impl LoadedStep {
    /// Link `component` as step `name`, call its `describe`, and check the
    /// contract it returns.
    pub fn load(
        rt: &Runtime,
        name: &str,
        component: &Component,
        config: SandboxConfig,
    ) -> Result<LoadedStep, RuntimeError> {
        prepare_memory_images(component).map_err(|error| RuntimeError::Link {
            step: name.to_string(),
            error,
        })?;
        let pre = rt
            .linker
            .instantiate_pre(component)
            .map_err(|error| RuntimeError::Link {
                step: name.to_string(),
                error,
            })?;
        let pre = StepPre::new(pre).map_err(|error| RuntimeError::World {
            step: name.to_string(),
            error,
        })?;
        let outbound = Outbound::new(
            name,
            &config.grants.http,
            &config.limits.http,
            &config.secrets,
        )
        .map_err(|error| RuntimeError::Grants {
            step: name.to_string(),
            error,
        })?;
        let sandbox = Sandbox {
            name: name.into(),
            outbound: Arc::new(outbound),
            kv_granted: config.grants.kv.clone().into(),
            kv_reader: OnceLock::new(),
            logs: Arc::new(LogBudget::new(config.limits.log_lines_per_second)),
            config,
            engine: rt.engine.clone(),
            guard: rt.guard.clone(),
            pre,
            warm: Mutex::new(Vec::new()),
        };
        let contract = sandbox.describe().map_err(|f| RuntimeError::Describe {
            step: name.to_string(),
            error: f.to_string(),
        })?;
        let contract = StepContract::compile(contract).map_err(|error| RuntimeError::Contract {
            step: name.to_string(),
            error,
        })?;
        Ok(LoadedStep {
            contract,
            sandbox,
            choreography: true,
            digest: String::new(),
        })
    }

    /// The step's name in the app.
    pub fn name(&self) -> &Arc<str> {
        &self.sandbox.name
    }

    /// Handle one event; see [`Sandbox::handle`].
    pub fn handle(&self, event: &Event, attempt: u32) -> Result<Vec<world::Emit>, Failure> {
        self.sandbox.handle(event, attempt)
    }

    /// Handle one event, with the record of its outbound calls and its
    /// state's reads and writes; see [`Sandbox::handle_traced`].
    pub fn handle_traced(&self, event: &Event, attempt: u32) -> Handled {
        self.sandbox.handle_traced(event, attempt, None)
    }

    /// The same, cut at `limit` if that is sooner than the step's own time
    /// limit (an orchestration command's start-to-close timeout).
    pub fn handle_within(&self, event: &Event, attempt: u32, limit: Option<Duration>) -> Handled {
        self.sandbox.handle_traced(event, attempt, limit)
    }
}

impl Sandbox {
    /// Call `describe` in a fresh instance, within [`DESCRIBE_TIMEOUT`].
    pub fn describe(&self) -> Result<world::Contract, Failure> {
        let deadline = Instant::now() + DESCRIBE_TIMEOUT;
        let mut store = self.store(deadline, None)?;
        let pre = &self.pre;
        let r = self.guard.block_on(deadline, async {
            let bindings = pre.instantiate_async(&mut store).await?;
            bindings.call_describe(&mut store).await
        });
        self.outcome(&store, r, &|_| {
            format!(
                "`describe` did not return within {} ms",
                DESCRIBE_TIMEOUT.as_millis()
            )
        })
    }

    /// The step's outbound HTTP counters.
    pub fn http_stats(&self) -> &outbound::stats::HttpStats {
        &self.outbound.stats
    }

    /// Read the step's buckets through `reader` from now on (set once,
    /// by the host that runs the step; without it every bucket call fails
    /// inside the guest).
    pub fn set_state_reader(&self, reader: Arc<dyn Reader>) {
        let _ = self.kv_reader.set(reader);
    }

    /// Lines of guest log dropped by the step's rate limit so far.
    pub fn log_lines_dropped(&self) -> u64 {
        self.logs.dropped()
    }

    /// Handle one event (delivery number `attempt`) under the step's limits.
    pub fn handle(&self, event: &Event, attempt: u32) -> Result<Vec<world::Emit>, Failure> {
        self.handle_traced(event, attempt, None).result
    }

    /// [`Sandbox::handle`], with the record of the outbound calls the
    /// invocation made, for its trace, and what it read and wrote of its
    /// buckets, for its commit (whatever its outcome). `limit` cuts it
    /// sooner than the step's time limit.
    pub fn handle_traced(&self, event: &Event, attempt: u32, limit: Option<Duration>) -> Handled {
        let own = Duration::from_millis(self.config.limits.timeout_ms);
        let timeout = limit.map_or(own, |l| l.min(own));
        let deadline = Instant::now() + timeout;
        let input = to_guest(event, attempt);
        let reuse = self.config.instances == Instances::Reuse;
        let warm = if reuse {
            self.warm.lock().expect("pool lock").pop()
        } else {
            None
        };
        let (mut store, bindings, result, uses) = match warm {
            Some(Warm {
                mut store,
                bindings,
                uses,
            }) => {
                self.arm(&mut store, deadline, Some(event));
                let r = self
                    .guard
                    .block_on(deadline, bindings.call_handle(&mut store, &input));
                (store, Some(bindings), r, uses + 1)
            }
            None => {
                let mut store = match self.store(deadline, Some(event)) {
                    Ok(s) => s,
                    Err(f) => {
                        return Handled {
                            result: Err(f),
                            calls: Vec::new(),
                            kv: Writes::default(),
                        };
                    }
                };
                let pre = &self.pre;
                let mut made = None;
                let r = self.guard.block_on(deadline, async {
                    let b = pre.instantiate_async(&mut store).await?;
                    let r = b.call_handle(&mut store, &input).await;
                    made = Some(b);
                    r
                });
                (store, made, r, 1)
            }
        };
        let calls = store.data_mut().http.take_calls();
        let kv = store.data_mut().kv.finish();
        let returned = self.outcome(&store, result, &|waiting| {
            format!(
                "time limit of {} ms per message exceeded{}",
                timeout.as_millis(),
                if waiting {
                    " (waiting in a host call)"
                } else {
                    ""
                }
            )
        });
        let returned = match returned {
            Ok(r) => r,
            Err(f) => {
                return Handled {
                    result: Err(f),
                    calls,
                    kv,
                };
            }
        };
        let result = match returned {
            Ok(emits) => self.check_output(emits),
            Err(world::StepError::Retry(m)) => {
                Err(Failure::new(FailureClass::Retry, text::message(&m)))
            }
            Err(world::StepError::Reject(m)) => {
                Err(Failure::new(FailureClass::Rejected, text::message(&m)))
            }
        };
        if reuse
            && uses < self.config.recycle_after
            && let Some(bindings) = bindings
        {
            // The instance finished the call normally: it can take another.
            store.data_mut().event_id.clear();
            self.warm.lock().expect("pool lock").push(Warm {
                store,
                bindings,
                uses,
            });
        }
        Handled { result, calls, kv }
    }

    /// A new store for this step, armed for a call that ends at `deadline`.
    fn store(&self, deadline: Instant, event: Option<&Event>) -> Result<Store<StepCtx>, Failure> {
        let ctx = StepCtx::new(
            &self.name,
            &self.config.grants,
            &self.config.limits,
            &self.logs,
            &self.outbound,
            StepState::new(
                &self.name,
                &self.kv_granted,
                &self.config.limits.kv,
                self.kv_reader.get().cloned(),
            ),
        )
        .map_err(|e| {
            Failure::new(
                FailureClass::Trap,
                format!("cannot build the sandbox: {e:#}"),
            )
        })?;
        let mut store = Store::new(&self.engine, ctx);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(epoch_check(&self.guard));
        self.arm(&mut store, deadline, event);
        Ok(store)
    }

    /// Reset the per-call state: deadline, limit flags, the event id for
    /// logs, the invocation outbound calls belong to (none in `describe`).
    fn arm(&self, store: &mut Store<StepCtx>, deadline: Instant, event: Option<&Event>) {
        let check = CHECK_EVERY.as_millis() as u64;
        store.set_epoch_deadline(ticks_until(deadline, Instant::now(), check));
        let data = store.data_mut();
        data.deadline = deadline;
        data.cut = None;
        data.limiter.exceeded = None;
        data.event_id.clear();
        data.event_id
            .push_str(event.map_or("describe", |e| e.id.as_str()));
        // The key's basis and the trace are for a step that may call out:
        // a step with no grants is spared their allocations per message.
        let invocation = match event {
            Some(e) if self.outbound.has_grants() => Invocation {
                handling: true,
                key_basis: outbound::key::basis(e),
                trace_id: e.trace_id().map(str::to_string),
                event_id: e.id.clone(),
            },
            Some(e) => Invocation {
                handling: true,
                event_id: e.id.clone(),
                ..Invocation::default()
            },
            None => Invocation::default(),
        };
        data.http.begin(invocation);
        data.kv.begin(event.is_some());
    }

    /// What a guarded call came to: its value, or the failure, classified.
    /// `late` words a missed deadline (given whether the guest was waiting
    /// in a host call rather than running).
    fn outcome<T>(
        &self,
        store: &Store<StepCtx>,
        r: Result<wasmtime::Result<T>, Cut>,
        late: &dyn Fn(bool) -> String,
    ) -> Result<T, Failure> {
        let (cut, waiting) = match r {
            Ok(Ok(v)) => return Ok(v),
            Err(cut) => (cut, true),
            Ok(Err(e)) => {
                if let Some(limit) = &store.data().limiter.exceeded {
                    return Err(Failure::new(FailureClass::Limit, limit.clone()));
                }
                match (store.data().cut, e.downcast_ref::<Trap>()) {
                    (Some(cut), _) => (cut, false),
                    (None, Some(Trap::Interrupt)) => (Cut::Deadline, false),
                    _ => {
                        // The root cause ("wasm `unreachable` instruction
                        // executed") is what a DLQ entry needs; the full
                        // wasm backtrace goes to the debug log.
                        tracing::debug!(step = %self.name, "trap: {e:?}");
                        return Err(Failure::new(
                            FailureClass::Trap,
                            text::message(&e.root_cause().to_string()),
                        ));
                    }
                }
            }
        };
        Err(match cut {
            Cut::Stopping => Failure::Stopped,
            Cut::Deadline => Failure::new(FailureClass::Timeout, late(waiting)),
        })
    }

    fn check_output(&self, emits: Vec<world::Emit>) -> Result<Vec<world::Emit>, Failure> {
        let l = &self.config.limits;
        if emits.len() > l.max_emits {
            return Err(Failure::new(
                FailureClass::Limit,
                format!(
                    "emitted {} events, the limit is {}",
                    emits.len(),
                    l.max_emits
                ),
            ));
        }
        for e in &emits {
            let kind = text::clean(&e.kind, 200);
            if e.data.len() > l.max_event_bytes {
                return Err(Failure::new(
                    FailureClass::Limit,
                    format!(
                        "emitted a {kind} event of {} bytes, the limit is {}",
                        e.data.len(),
                        l.max_event_bytes
                    ),
                ));
            }
            let chars = |s: &Option<String>| s.as_ref().map_or(0, |s| s.chars().count());
            if chars(&e.subject) > MAX_SUBJECT {
                return Err(Failure::new(
                    FailureClass::Limit,
                    format!(
                        "emitted a {kind} event whose subject has {} characters, the limit is \
                     {MAX_SUBJECT}",
                        chars(&e.subject)
                    ),
                ));
            }
            if chars(&e.content_type) > MAX_CONTENT_TYPE {
                return Err(Failure::new(
                    FailureClass::Limit,
                    format!(
                        "emitted a {kind} event whose content type has {} characters, the limit is \
                     {MAX_CONTENT_TYPE}",
                        chars(&e.content_type)
                    ),
                ));
            }
        }
        Ok(emits)
    }
}

fn to_guest(e: &Event, attempt: u32) -> world::GuestEvent {
    world::GuestEvent {
        id: e.id.clone(),
        source: e.source.clone(),
        kind: e.kind.clone(),
        subject: e.subject.clone(),
        time: e.time.clone(),
        content_type: e.content_type.clone(),
        schema: e.schema.clone(),
        data: e.data.clone(),
        extensions: e
            .extensions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        attempt,
    }
}
