//! The orchestrator: a durable state machine per run.
//!
//! It never calls a step. It sends *commands* through the broker (events
//! addressed to one step's consumer group with the `troupeto` extension),
//! and the step's worker answers with a *reply* addressed back to the
//! orchestrator's group (`troupe.step.completed` or `troupe.step.failed`).
//! Hybrid steps publish an ordinary event into the choreography and wait
//! for a completion event with the run's correlation id.
//!
//! One task owns every active run ([`Orchestrator::spawn`], `driver.rs`). Each
//! transition (a run started, a reply, a timer) becomes one broker commit:
//! the reply's ack, the commands it sends and the run's new record, so a
//! crash never records an effect without its cause. Where the broker's log
//! is indexed by run (embedded), a reply's transition leaves the record out
//! (the reply itself is the record of it) and `replay.rs` applies the
//! replies again after a restart. Commits are pipelined (the task never
//! waits for one); the broker applies them in order. Live status comes from
//! the task's memory.
//!
//! **Commands have deterministic ids** (run, flow step, attempt): after a
//! crash the orchestrator re-sends the commands of every dispatched step,
//! and the broker drops those it already has, so a step sees a command
//! twice only as at-least-once delivery allows, with the same id.

mod driver;
mod failure;
pub mod lease;
mod messages;
mod replay;
pub mod run;
mod timers;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::broker::{Broker, BrokerError};
use crate::event::{
    CAUSATION_ID, CORRELATION_ID, Emitted, Event, JSON, TARGET, TRACEPARENT, new_traceparent,
    now_rfc3339,
};
use crate::flow::{Action, Flow};
use run::{RunRecord, RunState, key};

/// The orchestrator's consumer group.
pub const GROUP: &str = "troupe:orchestrator";
/// Extension: the run a command or reply belongs to.
pub const RUN: &str = "trouperun";
/// Extension: the flow step a command or reply belongs to.
pub const FLOW_STEP: &str = "troupestep";
/// Extension: which attempt of the flow step a command is (what the
/// guest sees as `event.attempt`).
pub const ATTEMPT: &str = "troupeattempt";
/// Reply type: the step handled the command; data `{ "outputs": [...] }`,
/// each output's `type`, `dataschema` and `data`.
pub const COMPLETED: &str = "troupe.step.completed";
/// Reply type: it did not; data `{ "class", "message", "retryable" }`.
pub const FAILED: &str = "troupe.step.failed";

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
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
}

enum Msg {
    Start {
        flow: String,
        input: Value,
        reply: oneshot::Sender<Result<String, StartError>>,
    },
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
    flows: Arc<HashMap<String, Arc<Flow>>>,
    load: Arc<Load>,
}

/// How busy the driver is: what `/metrics` shows of it, and the limit it
/// admits runs under.
#[derive(Debug, Default)]
pub struct Load {
    /// The most runs active at once (`[orchestrator] max_active_runs`).
    pub limit: usize,
    /// Runs active now, as of the driver's last wake-up.
    pub active: AtomicUsize,
    /// Starts refused because `limit` runs were active.
    pub refused: AtomicU64,
}

impl Load {
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// How the orchestrator checks a run's input against the first step.
pub type InputCheck = Arc<dyn Fn(&Flow, &Value) -> Result<(), String> + Send + Sync>;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Epoch ms as RFC 3339 (UTC, milliseconds): the times of run records.
pub(crate) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

impl Orchestrator {
    /// Start driving the app's flows: at once if this host gets the
    /// orchestrator lease (always, on the embedded broker), resuming the
    /// runs left active by an earlier process; else stand by to take over
    /// (`lease.rs`).
    pub async fn spawn(
        broker: Arc<dyn Broker>,
        flows: Vec<Flow>,
        check_input: InputCheck,
        app: &str,
        config: &crate::app::OrchestratorConfig,
    ) -> Result<Orchestrator, BrokerError> {
        let mut awaited: Vec<String> = Vec::new();
        for f in &flows {
            for s in &f.steps {
                if let Action::Hybrid { done, failed, .. } = &s.action {
                    awaited.push(done.clone());
                    awaited.extend(failed.clone());
                }
            }
        }
        awaited.sort();
        awaited.dedup();
        let flows: Arc<HashMap<String, Arc<Flow>>> = Arc::new(
            flows
                .into_iter()
                .map(|f| (f.name.clone(), Arc::new(f)))
                .collect(),
        );
        let (tx, starts) = mpsc::channel(1024);
        let (queries, queried) = mpsc::channel(1024);
        let (finished, _) = tokio::sync::broadcast::channel(4096);
        let load = Arc::new(Load {
            limit: config.max_active_runs,
            ..Load::default()
        });
        lease::Lead {
            broker: broker.clone(),
            flows: flows.clone(),
            awaited,
            check_input,
            source: crate::event::source(app, "orchestrator"),
            finished: finished.clone(),
            holder: lease::holder(),
            load: load.clone(),
        }
        .start(Inbox {
            starts,
            queries: queried,
        })
        .await?;
        Ok(Orchestrator {
            tx,
            queries,
            finished,
            broker,
            flows,
            load,
        })
    }

    /// Start a run of `flow` with `input`; returns its id once the run is
    /// durably recorded and its first commands are out.
    pub async fn start(&self, flow: &str, input: Value) -> Result<String, StartError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Start {
                flow: flow.to_string(),
                input,
                reply,
            })
            .await
            .map_err(|_| StartError::Stopped)?;
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

    /// The flows, by name.
    pub fn flows(&self) -> &HashMap<String, Arc<Flow>> {
        &self.flows
    }

    /// How busy the driver is.
    pub fn load(&self) -> &Load {
        &self.load
    }
}

/// The reply a worker sends the orchestrator for a command it handled:
/// `outputs` are the events the step emitted, already checked against its
/// contract. The reply carries what the orchestrator keeps of each (type,
/// schema, data): they never enter the choreography, so they get no id,
/// time or trace of their own.
pub fn completed_reply(command: &Event, source: &str, outputs: &[Emitted]) -> Event {
    #[derive(serde::Serialize)]
    struct Completed<'a> {
        outputs: Vec<Output<'a>>,
    }
    struct Output<'a>(&'a Emitted);
    impl serde::Serialize for Output<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let e = self.0;
            let mut m = s.serialize_map(None)?;
            m.serialize_entry("type", &e.kind)?;
            if let Some(schema) = &e.schema {
                m.serialize_entry("dataschema", schema)?;
            }
            let ct = e.content_type.as_deref().unwrap_or(JSON);
            if ct != JSON {
                m.serialize_entry("datacontenttype", ct)?;
            }
            match serde_json::from_slice::<&RawValue>(&e.data) {
                Ok(raw) if crate::event::is_json_type(ct) => m.serialize_entry("data", raw)?,
                _ => {
                    use base64::Engine as _;
                    let b = base64::engine::general_purpose::STANDARD.encode(&e.data);
                    m.serialize_entry("data_base64", &b)?;
                }
            }
            m.end()
        }
    }
    let outputs = outputs.iter().map(Output).collect();
    let data = serde_json::to_vec(&Completed { outputs }).expect("outputs serialise");
    reply(command, source, COMPLETED, data)
}

/// The reply a worker sends for a command it could not handle.
pub fn failed_reply(
    command: &Event,
    source: &str,
    class: &str,
    message: &str,
    retryable: bool,
) -> Event {
    let data = json!({ "class": class, "message": message, "retryable": retryable });
    reply(command, source, FAILED, data.to_string().into_bytes())
}

/// A reply to `command`: addressed to the orchestrator's group, in the
/// run's correlation and trace, with an id derived from the command's (a
/// redelivered command's reply is the same event).
fn reply(command: &Event, source: &str, kind: &str, data: Vec<u8>) -> Event {
    let mut extensions = std::collections::BTreeMap::new();
    for k in [RUN, FLOW_STEP] {
        if let Some(v) = command.extensions.get(k) {
            extensions.insert(k.to_string(), v.clone());
        }
    }
    extensions.insert(CORRELATION_ID.into(), command.correlation_id().to_string());
    extensions.insert(CAUSATION_ID.into(), command.id.clone());
    extensions.insert(TARGET.into(), GROUP.into());
    extensions.insert(
        TRACEPARENT.into(),
        new_traceparent(command.extensions.get(TRACEPARENT).map(String::as_str)),
    );
    Event {
        id: crate::event::derived_id(&command.id, "reply"),
        source: source.to_string(),
        kind: kind.to_string(),
        subject: command.subject.clone(),
        time: now_rfc3339(),
        content_type: JSON.to_string(),
        schema: None,
        data,
        extensions,
        typed: Default::default(),
    }
}

/// Which attempt the guest is told a delivery is: the orchestrator's
/// attempt for a command, the broker's delivery count otherwise.
pub fn attempt_of(e: &Event, delivery_attempt: u32) -> u32 {
    e.extensions
        .get(ATTEMPT)
        .and_then(|a| a.parse().ok())
        .unwrap_or(delivery_attempt)
}

/// Extensions only the host sets: they address a consumer group and tie
/// an event to a run's step. An event from outside (`POST /v1/events`,
/// `troupe publish`) that carries one is refused, so no producer can send
/// a step a command, or answer one in a step's place.
pub const HOST_OWNED: [&str; 4] = [TARGET, RUN, FLOW_STEP, ATTEMPT];

/// The first host-owned extension `e` carries, if any.
pub fn host_owned_extension(e: &Event) -> Option<&'static str> {
    HOST_OWNED
        .into_iter()
        .find(|k| e.extensions.contains_key(*k))
}

/// Whether `e` is an orchestration command (its worker answers with a
/// reply instead of routing its output).
pub fn is_command(e: &Event) -> bool {
    e.extensions.contains_key(RUN) && e.extensions.contains_key(TARGET)
}
