//! A loaded step, and calling it.
//!
//! Loading links the component against the host's imports (WASI p2 and
//! `troupe:step/host`), checks that it exports the `step` world, calls
//! `describe` once and compiles the contract. Handling an event runs the
//! guest under the step's limits in a fresh instance (the default: nothing
//! survives a message) or in a reused one from a small pool, and classifies
//! every way it can fail.

use std::sync::{Arc, Mutex};

use wasmtime::component::Component;
use wasmtime::{Store, Trap};

use super::sandbox::StepCtx;
use super::{EPOCH_TICK, Runtime, RuntimeError};
use crate::app::{Instances, StepConfig};
use crate::contract::StepContract;
use crate::event::Event;
use crate::world::{self, Step, StepPre};

/// How handling one event failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The step asked for a retry.
    Retry(String),
    /// The step rejected the event.
    Reject(String),
    /// The guest trapped (a panic, an unreachable, a bad memory access).
    Trap(String),
    /// The guest ran past a limit: time, memory, or output.
    Limit(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Retry(m) => write!(f, "step asked for a retry: {m}"),
            Failure::Reject(m) => write!(f, "step rejected the event: {m}"),
            Failure::Trap(m) => write!(f, "step trapped: {m}"),
            Failure::Limit(m) => write!(f, "step exceeded a limit: {m}"),
        }
    }
}

/// An instance kept for reuse, with its store.
struct Warm {
    store: Store<StepCtx>,
    bindings: Step,
}

/// A step ready to handle events: its contract and its sandbox.
pub struct LoadedStep {
    pub contract: StepContract,
    pub sandbox: Sandbox,
}

/// Everything needed to run a step's guest: the pre-linked component, its
/// configuration, and the pool of reusable instances.
pub struct Sandbox {
    pub name: Arc<str>,
    pub config: StepConfig,
    engine: wasmtime::Engine,
    pre: StepPre<StepCtx>,
    warm: Mutex<Vec<Warm>>,
}

impl LoadedStep {
    /// Link `component` as step `name`, call its `describe`, and check the
    /// contract it returns.
    pub fn load(
        rt: &Runtime,
        name: &str,
        component: &Component,
        config: StepConfig,
    ) -> Result<LoadedStep, RuntimeError> {
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
        let sandbox = Sandbox {
            name: name.into(),
            config,
            engine: rt.engine.clone(),
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
        Ok(LoadedStep { contract, sandbox })
    }

    /// The step's name in the app.
    pub fn name(&self) -> &Arc<str> {
        &self.sandbox.name
    }

    /// Handle one event; see [`Sandbox::handle`].
    pub fn handle(&self, event: &Event, attempt: u32) -> Result<Vec<world::Emit>, Failure> {
        self.sandbox.handle(event, attempt)
    }
}

impl Sandbox {
    /// Call `describe` in a fresh instance.
    pub fn describe(&self) -> Result<world::Contract, Failure> {
        let (mut store, bindings) = self.instantiate()?;
        self.arm(&mut store, "describe");
        let r = bindings.call_describe(&mut store);
        r.map_err(|e| self.classify(&store, e))
    }

    /// Handle one event (delivery number `attempt`) under the step's limits.
    pub fn handle(&self, event: &Event, attempt: u32) -> Result<Vec<world::Emit>, Failure> {
        let input = to_guest(event, attempt);
        let reuse = self.config.instances == Instances::Reuse;
        let warm = if reuse {
            self.warm.lock().expect("pool lock").pop()
        } else {
            None
        };
        let Warm {
            mut store,
            bindings,
        } = match warm {
            Some(w) => w,
            None => {
                let (store, bindings) = self.instantiate()?;
                Warm { store, bindings }
            }
        };
        self.arm(&mut store, &event.id);
        let result = match bindings.call_handle(&mut store, &input) {
            Ok(Ok(emits)) => self.check_output(emits),
            Ok(Err(world::StepError::Retry(m))) => Err(Failure::Retry(m)),
            Ok(Err(world::StepError::Reject(m))) => Err(Failure::Reject(m)),
            Err(e) => return Err(self.classify(&store, e)),
        };
        if reuse {
            // The instance finished the call normally: it can take another.
            self.warm
                .lock()
                .expect("pool lock")
                .push(Warm { store, bindings });
        }
        result
    }

    fn instantiate(&self) -> Result<(Store<StepCtx>, Step), Failure> {
        let ctx = StepCtx::new(&self.name, &self.config.grants, &self.config.limits)
            .map_err(|e| Failure::Trap(format!("cannot build the sandbox: {e:#}")))?;
        let mut store = Store::new(&self.engine, ctx);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        self.arm(&mut store, "instantiate");
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.classify(&store, e))?;
        Ok((store, bindings))
    }

    /// Reset the per-call state: deadline, limit flag, the event id for logs.
    fn arm(&self, store: &mut Store<StepCtx>, event_id: &str) {
        let ticks = self
            .config
            .limits
            .timeout_ms
            .div_ceil(EPOCH_TICK.as_millis() as u64);
        store.set_epoch_deadline(ticks.max(1));
        let data = store.data_mut();
        data.limiter.exceeded = None;
        data.event_id.clear();
        data.event_id.push_str(event_id);
    }

    fn classify(&self, store: &Store<StepCtx>, e: wasmtime::Error) -> Failure {
        if let Some(limit) = &store.data().limiter.exceeded {
            return Failure::Limit(limit.clone());
        }
        if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            return Failure::Limit(format!(
                "time limit of {} ms per message exceeded",
                self.config.limits.timeout_ms
            ));
        }
        // The root cause ("wasm `unreachable` instruction executed") is what
        // a DLQ entry needs; the full wasm backtrace goes to the debug log.
        tracing::debug!(step = %self.name, "trap: {e:?}");
        Failure::Trap(e.root_cause().to_string())
    }

    fn check_output(&self, emits: Vec<world::Emit>) -> Result<Vec<world::Emit>, Failure> {
        let l = &self.config.limits;
        if emits.len() > l.max_emits {
            return Err(Failure::Limit(format!(
                "emitted {} events, the limit is {}",
                emits.len(),
                l.max_emits
            )));
        }
        if let Some(big) = emits.iter().find(|e| e.data.len() > l.max_event_bytes) {
            return Err(Failure::Limit(format!(
                "emitted a {} event of {} bytes, the limit is {}",
                big.kind,
                big.data.len(),
                l.max_event_bytes
            )));
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
