//! The protocol between the orchestrator and the steps' workers: what a
//! command and a reply are, and how a failure is named.
//!
//! The orchestrator never calls a step. It sends a *command* through the
//! broker: an event addressed to one step's consumer group (extension
//! [`TARGET`]) and tied to a run's flow step and attempt ([`RUN`],
//! [`FLOW_STEP`], [`ATTEMPT`]). The step's worker answers with a *reply*
//! addressed to the orchestrator's group: [`COMPLETED`] with the outputs,
//! or [`FAILED`] with a [`Failure`].
//!
//! **A failure has one name from the sandbox to the API.** The sandbox
//! classes what went wrong ([`FailureClass`]); the same class travels in
//! the reply, decides the orchestrator's next move (retry or not, failed or
//! timed out), is what the dead-letter queue records and what the run's
//! status shows, serialised by this module alone. Nothing downstream reads
//! a failure's message to learn what happened.
//!
//! This module depends on [`crate::event`] only: the runtime, the workers,
//! the brokers and the orchestrator all speak it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use crate::event::TARGET;
use crate::event::{
    CAUSATION_ID, CORRELATION_ID, Emitted, Event, JSON, TRACEPARENT, new_traceparent, now_rfc3339,
};

/// The orchestrator's consumer group.
pub const GROUP: &str = "troupe:orchestrator";
/// Extension: the run a command or reply belongs to.
pub const RUN: &str = "trouperun";
/// Extension: the flow step a command or reply belongs to.
pub const FLOW_STEP: &str = "troupestep";
/// Extension: which attempt of the flow step a command is (what the
/// guest sees as `event.attempt`).
pub const ATTEMPT: &str = "troupeattempt";
/// Extension of a command: the time (Unix ms) by which a worker must start
/// it, else it is not run (the flow step's `queue_timeout_ms` from when it
/// was sent).
pub const START_BY: &str = "troupestartby";
/// Extension of a command: how long (ms) it may run once started (the
/// flow step's `timeout_ms`, start-to-close).
pub const RUN_FOR: &str = "troupetimeout";
/// Extension: the deployment an event comes from. On a command, the
/// deployment its run is pinned to, whose version of the step must handle
/// it; on what a step emits (and its replies), the deployment of the step
/// that emitted it.
pub const DEPLOYMENT: &str = "troupedeployment";
/// Extension of what a step emits (and its replies): the SHA-256 of the
/// component that emitted it.
pub const COMPONENT: &str = "troupecomponent";
/// Reply type: the step handled the command; data `{ "outputs": [...] }`,
/// each output's `type`, `dataschema` and `data`.
pub const COMPLETED: &str = "troupe.step.completed";
/// Reply type: it did not; data `{ "class", "message", "retryable" }`.
pub const FAILED: &str = "troupe.step.failed";

/// How handling a message failed. One name per class, everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The step rejected the message (`reject`): another attempt would
    /// not help.
    Rejected,
    /// The message broke a contract, on the way in or out: never retried.
    Contract,
    /// The step asked for another attempt (`retry`). In the dead-letter
    /// queue: it kept asking past its budget. (Dead letters written before
    /// this name read `exhausted`, which is read as this.)
    #[serde(alias = "exhausted")]
    Retry,
    /// The guest trapped (a panic, an unreachable, a bad memory access).
    Trap,
    /// The guest ran past a limit other than time: memory, the number or
    /// size of its outputs, or what the broker can store.
    Limit,
    /// The step ran out of time: the sandbox cut the guest at its time
    /// limit per message, or the flow step's reply did not come within its
    /// `timeout_ms`.
    Timeout,
}

impl FailureClass {
    pub const ALL: [FailureClass; 6] = [
        FailureClass::Rejected,
        FailureClass::Contract,
        FailureClass::Retry,
        FailureClass::Trap,
        FailureClass::Limit,
        FailureClass::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Rejected => "rejected",
            FailureClass::Contract => "contract",
            FailureClass::Retry => "retry",
            FailureClass::Trap => "trap",
            FailureClass::Limit => "limit",
            FailureClass::Timeout => "timeout",
        }
    }

    /// The class named `s` (`exhausted`, the older name of `retry`, too).
    pub fn parse(s: &str) -> Option<FailureClass> {
        if s == "exhausted" {
            return Some(FailureClass::Retry);
        }
        FailureClass::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether another attempt could help.
    pub fn retryable(self) -> bool {
        !matches!(self, FailureClass::Rejected | FailureClass::Contract)
    }
}

impl std::fmt::Display for FailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure: its class, and what the step (or the host) said of it,
/// escaped and cut where it left the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub class: FailureClass,
    pub message: String,
}

impl Failure {
    pub fn new(class: FailureClass, message: impl Into<String>) -> Failure {
        Failure {
            class,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

/// The reply a worker sends the orchestrator for a command it handled:
/// `outputs` are the events the step emitted, already checked against its
/// contract. The reply carries what the orchestrator keeps of each (type,
/// schema, data): they never enter the choreography, so they get no id,
/// time or trace of their own.
pub fn completed_reply(command: &Event, source: &str, outputs: &[Emitted]) -> Event {
    #[derive(Serialize)]
    struct Completed<'a> {
        outputs: Vec<Output<'a>>,
    }
    struct Output<'a>(&'a Emitted);
    impl Serialize for Output<'_> {
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

/// What a failed reply carries.
#[derive(Serialize, Deserialize)]
struct Failed {
    class: FailureClass,
    message: String,
    /// Redundant with the class; kept for readers of the log.
    retryable: bool,
}

/// The reply a worker sends for a command it could not handle.
pub fn failed_reply(command: &Event, source: &str, failure: &Failure) -> Event {
    let data = Failed {
        class: failure.class,
        message: failure.message.clone(),
        retryable: failure.class.retryable(),
    };
    let data = serde_json::to_vec(&data).expect("a failure serialises");
    reply(command, source, FAILED, data)
}

/// A reply to `command`: addressed to the orchestrator's group, in the
/// run's correlation and trace, with an id derived from the command's (a
/// redelivered command's reply is the same event).
fn reply(command: &Event, source: &str, kind: &str, data: Vec<u8>) -> Event {
    let mut extensions = BTreeMap::new();
    for k in [RUN, FLOW_STEP, ATTEMPT] {
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

/// What a reply says: the type and data of the first output of a
/// completed one, or the failure of a failed one. `None` for any other
/// event.
#[derive(Debug)]
pub enum Reply {
    Completed(Option<(String, Box<RawValue>)>),
    Failed(Failure),
}

/// Read a reply. A failed reply the orchestrator cannot read (a worker
/// of another version, a damaged log) is a `trap`: retryable, and says so.
pub fn read_reply(e: &Event) -> Option<Reply> {
    match e.kind.as_str() {
        COMPLETED => Some(Reply::Completed(first_output(e))),
        FAILED => Some(Reply::Failed(
            serde_json::from_slice::<Failed>(&e.data)
                .map(|f| Failure::new(f.class, crate::text::message(&f.message)))
                .unwrap_or_else(|err| {
                    Failure::new(
                        FailureClass::Trap,
                        format!("the step's failed reply cannot be read: {err}"),
                    )
                }),
        )),
        _ => None,
    }
}

/// The type and data of the first output a completed reply carries.
fn first_output(reply: &Event) -> Option<(String, Box<RawValue>)> {
    #[derive(Deserialize)]
    struct Completed {
        outputs: Vec<Output>,
    }
    #[derive(Deserialize)]
    struct Output {
        #[serde(rename = "type")]
        kind: String,
        /// Absent for binary data (`data_base64`).
        data: Option<Box<RawValue>>,
    }
    serde_json::from_slice::<Completed>(&reply.data)
        .ok()
        .and_then(|c| c.outputs.into_iter().next())
        .map(|o| (o.kind, o.data.unwrap_or_else(null)))
}

/// JSON `null`, as a raw value.
pub fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is JSON")
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
pub const HOST_OWNED: [&str; 8] = [
    TARGET, RUN, FLOW_STEP, ATTEMPT, START_BY, RUN_FOR, DEPLOYMENT, COMPONENT,
];

/// The deployment a command's run is pinned to (`None`: not a command, or
/// one sent before runs were pinned).
pub fn pinned_to(e: &Event) -> Option<u64> {
    if !is_command(e) {
        return None;
    }
    e.extensions.get(DEPLOYMENT)?.parse().ok()
}

/// The first host-owned extension `e` carries, if any.
pub fn host_owned_extension(e: &Event) -> Option<&'static str> {
    HOST_OWNED
        .into_iter()
        .find(|k| e.extensions.contains_key(*k))
}

/// When a command must start by (Unix ms), and how long it may run once
/// started: `None` for what is not a command, or a command sent before
/// commands carried them.
pub fn command_bounds(e: &Event) -> Option<(u64, std::time::Duration)> {
    let n = |k: &str| e.extensions.get(k)?.parse::<u64>().ok();
    Some((n(START_BY)?, std::time::Duration::from_millis(n(RUN_FOR)?)))
}

/// Whether `e` is an orchestration command (its worker answers with a
/// reply instead of routing its output).
pub fn is_command(e: &Event) -> bool {
    e.extensions.contains_key(RUN) && e.extensions.contains_key(TARGET)
}

/// Whether `e` is a reply to one of the orchestrator's commands.
pub fn is_reply(e: &Event) -> bool {
    matches!(e.kind.as_str(), COMPLETED | FAILED)
        && e.extensions.get(TARGET).map(String::as_str) == Some(GROUP)
}

/// The run a reply or an awaited event belongs to.
pub fn run_of(e: &Event) -> &str {
    e.extensions
        .get(RUN)
        .map_or_else(|| e.correlation_id(), String::as_str)
}

/// The suffix that makes a flow step's id the id of its compensation.
const UNDO: &str = "~undo";

/// The flow-step id of the compensation of flow step `id`.
pub fn undo_id(id: &str) -> String {
    format!("{id}{UNDO}")
}

/// The flow step `id` compensates, if it is a compensation.
pub fn undoes(id: &str) -> Option<&str> {
    id.strip_suffix(UNDO)
}

/// The flow step `id` is, or compensates (of an element of a for-each
/// step: that step).
pub fn base_step(id: &str) -> &str {
    let id = undoes(id).unwrap_or(id);
    element_of(id).map_or(id, |(step, _)| step)
}

/// The id of element `i` of for-each step `step`: `step[i]`.
pub fn element_id(step: &str, i: u32) -> String {
    format!("{step}[{i}]")
}

/// The for-each step and the index of element `id`, if it is one.
pub fn element_of(id: &str) -> Option<(&str, u32)> {
    let inner = id.strip_suffix(']')?;
    let open = inner.rfind('[')?;
    let i = inner[open + 1..].parse().ok()?;
    Some((&inner[..open], i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_reads_back_and_the_old_name_of_retry_too() {
        for c in FailureClass::ALL {
            assert_eq!(FailureClass::parse(c.as_str()), Some(c));
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{c}\""));
            assert_eq!(serde_json::from_str::<FailureClass>(&json).unwrap(), c);
        }
        assert_eq!(FailureClass::parse("exhausted"), Some(FailureClass::Retry));
        assert_eq!(
            serde_json::from_str::<FailureClass>("\"exhausted\"").unwrap(),
            FailureClass::Retry
        );
        assert_eq!(FailureClass::parse("timed out"), None);
    }

    #[test]
    fn a_failed_reply_reads_back_as_its_class_whatever_its_message() {
        let command = Event::new("order.placed", "troupe://shop/orchestrator", b"{}".to_vec());
        let f = Failure::new(FailureClass::Retry, "gateway timed out");
        let reply = failed_reply(&command, "troupe://shop/step/s", &f);
        match read_reply(&reply) {
            Some(Reply::Failed(got)) => assert_eq!(got, f),
            other => panic!("{other:?}"),
        }
        let mut garbled = reply.clone();
        garbled.data = b"{\"class\": \"tired\"}".to_vec();
        match read_reply(&garbled) {
            Some(Reply::Failed(got)) => assert_eq!(got.class, FailureClass::Trap),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn compensation_ids_are_built_and_read_here() {
        assert_eq!(undo_id("charge"), "charge~undo");
        assert_eq!(undoes(&undo_id("charge")), Some("charge"));
        assert_eq!(undoes("charge"), None);
        assert_eq!(base_step("charge~undo"), "charge");
        assert_eq!(base_step("charge"), "charge");
    }
}
