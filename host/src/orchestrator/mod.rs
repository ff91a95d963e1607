//! The orchestrator: a durable state machine per run.
//!
//! It never calls a step. It sends *commands* through the broker (events
//! addressed to one step's consumer group with the `troupeto` extension),
//! and the step's worker answers with a *reply* addressed back to the
//! orchestrator's group (`troupe.step.completed` or `troupe.step.failed`).
//! Hybrid steps publish an ordinary event into the choreography and wait
//! for a completion event with the run's correlation id.
//!
//! The protocol (what a command and a reply are, how failures are named)
//! is [`crate::protocol`]. The decisions are `machine/`: pure transitions
//! that take (state, input, now) and return actions, tested with a fake
//! clock and by property. One task carries them out for every active run
//! ([`Orchestrator::spawn`], `driver/`). Each
//! transition (a run started, a reply, a timer) becomes one broker commit:
//! the reply's ack, the commands it sends and the run's new record, so a
//! crash never records an effect without its cause. Where the broker's log
//! is indexed by run (embedded), a reply's transition leaves the record out
//! (the reply itself is the record of it) and the machine's `replay` applies the
//! replies again after a restart. Commits are pipelined (the task never
//! waits for one); the broker applies them in order. Live status comes from
//! the task's memory.
//!
//! **Commands have deterministic ids** (run, flow step, attempt): after a
//! crash the orchestrator re-sends the commands of every dispatched step,
//! and the broker drops those it already has, so a step sees a command
//! twice only as at-least-once delivery allows, with the same id.

pub mod control;
mod driver;
pub mod flows;
pub mod lease;
mod machine;
mod operate;
pub mod run;
mod timers;
mod traced;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::broker::{Broker, BrokerError};
pub(crate) use crate::clock::{now_ms, rfc3339};
use crate::flow::Flow;
use crate::protocol::GROUP;
pub use flows::FlowSets;
pub use operate::{ControlError, Controlled, state_name};
/// The least `[orchestrator] park_after_ms`.
pub const MIN_PARK_AFTER_MS: u64 = 1_000;
use run::{RunRecord, RunState, key};

/// The `[orchestrator]` table of `troupe.toml`: how many runs the host
/// drives at once. The orchestrator owns it; `app.rs` reads it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OrchestratorConfig {
    /// Runs active at once (started, not yet ended). A start beyond it is
    /// refused (`503` with `Retry-After`) rather than queued, so a
    /// producer faster than the steps meets back-pressure instead of
    /// growing the host's memory and every run's latency.
    pub max_active_runs: usize,
    /// A run whose every waiting step sleeps until at least this far
    /// ahead is parked: written to the store and let go of until it wakes
    /// (`machine/park.rs`). At least 1000.
    pub park_after_ms: u64,
}

/// The most `max_active_runs` may be.
pub const MAX_ACTIVE_RUNS: usize = 1_000_000;

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            max_active_runs: 10_000,
            park_after_ms: machine::PARK_AFTER_MS,
        }
    }
}

/// Why a run could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no flow named {0:?}")]
    UnknownFlow(String),
    #[error("the input is not a valid {kind}: {reason}")]
    BadInput { kind: String, reason: String },
    #[error("the orchestrator is not running")]
    Stopped,
    #[error("this host stands by: another host of the app drives its flows; start the run there")]
    Standby,
    #[error(
        "this host already drives its most runs at once ({limit}, [orchestrator] max_active_runs): try again shortly"
    )]
    Busy { limit: usize },
    #[error(
        "the input of {size} bytes is more than a run of this app may take ({max} bytes: its \
         record and its commands must each fit in one of the broker's messages)"
    )]
    TooLarge { size: usize, max: usize },
    #[error("the Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters (it was {0})")]
    BadKey(String),
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
}

/// How long an `Idempotency-Key` names the run it started: a start with
/// the same key for the same flow within this time returns that run.
pub const IDEMPOTENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// The longest `Idempotency-Key`, characters.
pub const MAX_KEY: usize = 255;

fn check_key(k: &str) -> Result<(), StartError> {
    let bad = if k.is_empty() {
        Some("empty".to_string())
    } else if k.len() > MAX_KEY {
        Some(format!("{} characters long", k.len()))
    } else if !k.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        Some("not printable ASCII".to_string())
    } else {
        None
    };
    bad.map_or(Ok(()), |why| Err(StartError::BadKey(why)))
}

/// A start on its way to the driver.
struct Starting {
    flow: String,
    input: Value,
    key: Option<String>,
    trace: Option<String>,
    reply: driver::StartReply,
}

enum Msg {
    Start(Starting),
    /// A run's record as the driver holds it; `None` when it is not
    /// driving the run (ended, unknown, or this host stands by).
    Status {
        id: String,
        reply: oneshot::Sender<Option<RunRecord>>,
    },
}

/// What the driver takes messages from: starts, and status queries on a
/// channel of their own, so a status poll never waits behind queued
/// starts.
struct Inbox {
    starts: mpsc::Receiver<Msg>,
    queries: mpsc::Receiver<Msg>,
}

/// A handle on the running orchestrator.
#[derive(Clone)]
pub struct Orchestrator {
    tx: mpsc::Sender<Msg>,
    queries: mpsc::Sender<Msg>,
    finished: tokio::sync::broadcast::Sender<(String, RunState)>,
    broker: Arc<dyn Broker>,
    /// The flows of every deployment held; a deploy replaces them.
    flows: Arc<watch::Sender<FlowSets>>,
    /// The deployments active runs are pinned to (while this host drives
    /// the flows).
    pins: Arc<watch::Sender<BTreeSet<u64>>>,
    /// A run's input against its first steps' contracts, checked before
    /// the driver hears of it.
    check_input: InputCheck,
    load: Arc<Load>,
    standing: Arc<lease::Shared>,
    /// The app's name (the source of the control events it sends).
    app: String,
}

/// How busy the driver is: what `/metrics` shows of it, and the limit it
/// admits runs under.
#[derive(Debug, Default)]
pub struct Load {
    /// The most runs active at once (`[orchestrator] max_active_runs`).
    pub limit: usize,
    /// `[orchestrator] park_after_ms`.
    pub park_after_ms: u64,
    /// Runs active now, as of the driver's last wake-up.
    pub active: AtomicUsize,
    /// Runs asleep and let go of (in the store until they wake): not
    /// counted in `active`, nor against the limit.
    pub parked: AtomicUsize,
    /// Starts refused because `limit` runs were active.
    pub refused: AtomicU64,
}

impl Load {
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// How the orchestrator checks a run's input against the first step.
pub type InputCheck = Arc<dyn Fn(&Flow, &Value) -> Result<(), String> + Send + Sync>;

impl Orchestrator {
    /// Start driving the app's flows: at once if this host gets the
    /// orchestrator lease (always, on the embedded broker), resuming the
    /// runs left active by an earlier process; else stand by to take over
    /// (`lease.rs`). The tasks are `tasks`'s: they stop on its signal.
    pub async fn spawn(
        broker: Arc<dyn Broker>,
        flows: FlowSets,
        check_input: InputCheck,
        app: &str,
        config: &OrchestratorConfig,
        tasks: &mut crate::shutdown::Tasks,
        telemetry: crate::telemetry::Telemetry,
    ) -> Result<Orchestrator, BrokerError> {
        let flows = Arc::new(watch::Sender::new(flows));
        let pins = Arc::new(watch::Sender::new(BTreeSet::new()));
        let (tx, starts) = mpsc::channel(1024);
        let (queries, queried) = mpsc::channel(1024);
        let (finished, _) = tokio::sync::broadcast::channel(4096);
        let load = Arc::new(Load {
            limit: config.max_active_runs,
            park_after_ms: config.park_after_ms,
            ..Load::default()
        });
        let standing = Arc::new(lease::Shared::default());
        lease::Lead {
            broker: broker.clone(),
            flows: flows.subscribe(),
            pins: pins.clone(),
            source: crate::event::source(app, "orchestrator"),
            finished: finished.clone(),
            holder: lease::holder(),
            load: load.clone(),
            standing: standing.clone(),
            telemetry,
        }
        .start(
            Inbox {
                starts,
                queries: queried,
            },
            tasks,
        )
        .await?;
        Ok(Orchestrator {
            tx,
            queries,
            finished,
            broker,
            flows,
            pins,
            check_input,
            load,
            standing,
            app: app.to_string(),
        })
    }

    /// Start a run of `flow` with `input`; returns its id once the run is
    /// durably recorded and its first commands are out, and whether it is
    /// new: with an idempotency `key` the producer used for this flow
    /// within [`IDEMPOTENCY_WINDOW`], the run that key started, and
    /// nothing is started.
    pub async fn start(
        &self,
        flow: &str,
        input: Value,
        key: Option<&str>,
    ) -> Result<(String, bool), StartError> {
        self.start_in(flow, input, key, None).await
    }

    /// The same, as part of the trace `parent` (the span of the request
    /// that asks): the run's spans and commands join that trace.
    pub async fn start_in(
        &self,
        flow: &str,
        input: Value,
        key: Option<&str>,
        parent: Option<crate::telemetry::TraceContext>,
    ) -> Result<(String, bool), StartError> {
        let Some(f) = self.flows.borrow().flow(None, flow).cloned() else {
            return Err(StartError::UnknownFlow(flow.to_string()));
        };
        let kind = f.input.clone();
        if let Some(k) = key {
            check_key(k)?;
            // An ended run's key is in the store; an active run's, in the
            // driver (it may not be durable yet).
            let row = self.broker.state_get(&machine::key_row(flow, k)).await?;
            if let Some(row) = row.and_then(|v| serde_json::from_slice::<machine::KeyRow>(&v).ok())
                && now_ms().saturating_sub(row.at_ms) < IDEMPOTENCY_WINDOW.as_millis() as u64
            {
                return Ok((row.run, false));
            }
        }
        // Apart: a contract check may take up to its budget, and neither
        // the API's threads nor the driver wait on it.
        let check = self.check_input.clone();
        let (checked, input) = crate::contract::check_apart(move || (check(&f, &input), input))
            .await
            .ok_or(StartError::Stopped)?;
        if let Err(reason) = checked {
            return Err(StartError::BadInput { kind, reason });
        }
        let (reply, rx) = oneshot::channel();
        let msg = Msg::Start(Starting {
            flow: flow.to_string(),
            input,
            key: key.map(str::to_string),
            trace: parent.map(|p| p.header()),
            reply,
        });
        self.tx.send(msg).await.map_err(|_| StartError::Stopped)?;
        rx.await.map_err(|_| StartError::Stopped)?
    }

    /// The aggregated status of a run: from the driver while it drives
    /// the run, else as last stored.
    pub async fn status(&self, id: &str) -> Result<Option<RunRecord>, BrokerError> {
        let (reply, rx) = oneshot::channel();
        let msg = Msg::Status {
            id: id.to_string(),
            reply,
        };
        if self.queries.send(msg).await.is_ok()
            && let Ok(Some(run)) = rx.await
        {
            return Ok(Some(run));
        }
        Ok(self
            .broker
            .state_get(&key(id))
            .await?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Runs as they finish: (id, final state), sent once the final record
    /// is durable.
    pub fn finished(&self) -> tokio::sync::broadcast::Receiver<(String, RunState)> {
        self.finished.subscribe()
    }

    /// The flows of the current deployment, by name.
    pub fn flows(&self) -> flows::Flows {
        let sets = self.flows.borrow();
        sets.of(None).cloned().unwrap_or_default()
    }

    /// A deploy: new runs start on `sets.current` from now on; runs in
    /// flight keep their own deployments' flows (which `sets` holds).
    pub fn set_flows(&self, sets: FlowSets) {
        self.flows.send_replace(sets);
    }

    /// The deployments active runs are pinned to, as the driver finds
    /// them (empty while this host stands by).
    pub fn pins(&self) -> watch::Receiver<BTreeSet<u64>> {
        self.pins.subscribe()
    }

    /// How busy the driver is.
    pub fn load(&self) -> &Load {
        &self.load
    }

    /// Where this host stands with the app's orchestrator lease.
    pub fn standing(&self) -> lease::Standing {
        self.standing.get()
    }
}
