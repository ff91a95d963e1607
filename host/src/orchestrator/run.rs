//! A run's record: its state, and each flow step's state, attempts,
//! timings, output and error. This is both what the orchestrator persists
//! (one state row per run, `run/<id>`) and what `GET /v1/runs/{id}` serves:
//! the aggregated status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    /// A step failed for good; completed steps are being undone.
    Compensating,
    Completed,
    /// Failed, and every completed step with a compensation was undone.
    Compensated,
    /// Failed, and could not be fully undone (or nothing needed undoing).
    Failed,
    /// Ran past the flow's timeout (after compensating).
    TimedOut,
    /// Cancelled by an operator (after compensating what completed).
    Cancelled,
}

impl RunState {
    pub fn is_final(self) -> bool {
        !matches!(self, RunState::Running | RunState::Compensating)
    }
}

/// Where a flow step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Waiting for the steps it depends on.
    Pending,
    /// A command is out (or, for a hybrid step, the event is published and
    /// the completion is awaited).
    Dispatched,
    /// Failed and waiting for its next attempt.
    Backoff,
    /// A sleep step, until its `deadline_ms`.
    Sleeping,
    Completed,
    /// Its condition did not hold, or its input was skipped.
    Skipped,
    Failed,
    TimedOut,
    /// The run ended before it was dispatched.
    Cancelled,
    /// Completed, then undone by its compensation.
    Compensated,
    /// Completed; its compensation failed.
    CompensationFailed,
}

/// One flow step's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub state: StepState,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The output event's type and data (kept as the JSON text the step
    /// produced: it is copied into the next command, not interpreted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Box<RawValue>>,
    /// Errors of failed attempts, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Why it was skipped: its input was skipped, or which condition was
    /// false and what it saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The id of the command (event) of the current attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// Epoch ms when the current attempt times out, or the backoff ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Order of completion (for compensating in reverse).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_seq: Option<u32>,
    /// The SHA-256 of the component that answered its last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// A for-each step's elements (each one is a record of its own,
    /// `ID[i]`): how many, and how far they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elements: Option<Elements>,
    /// A child flow step: the run its current attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<String>,
}

/// How far a for-each step's elements are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Elements {
    pub total: u32,
    /// Elements sent (the next to send is this one).
    pub sent: u32,
    /// Elements that completed or failed for good.
    pub settled: u32,
    pub failed: u32,
}

impl StepRecord {
    pub fn new() -> StepRecord {
        StepRecord {
            state: StepState::Pending,
            attempts: 0,
            started: None,
            finished: None,
            duration_ms: None,
            output_type: None,
            output: None,
            errors: Vec::new(),
            reason: None,
            command_id: None,
            deadline_ms: None,
            completed_seq: None,
            component: None,
            elements: None,
            child: None,
        }
    }
}

impl Default for StepRecord {
    fn default() -> Self {
        StepRecord::new()
    }
}

/// A run: the aggregated status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub flow: String,
    /// The deployment the run started on: its flow and its commands'
    /// steps are that deployment's, to its end. (Runs started before
    /// deployments were recorded have none, and take the current one.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<u64>,
    pub state: RunState,
    pub input: Value,
    pub created: String,
    pub updated: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why the run failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Epoch ms when the run times out.
    pub deadline_ms: u64,
    pub created_ms: u64,
    /// Flow steps by id; compensations appear as `ID~undo`.
    pub steps: BTreeMap<String, StepRecord>,
    /// Compensations still to run, next first (flow step ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub undo: Vec<String>,
    /// Set when the run timed out (it ends `timed_out` once compensated).
    #[serde(default)]
    pub timed_out: bool,
    #[serde(default)]
    pub completions: u32,
    /// The `Idempotency-Key` the run was started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Who cancelled it, why and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<Operated>,
    /// Each redrive, oldest first: the steps that failed ran again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redrives: Vec<Operated>,
    /// The signals sent to the run, in the order they reached it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<SignalRecord>,
    /// The `traceparent` of what started the run (the start request's
    /// span), when it came with one: the run is a span of that trace, and
    /// its commands carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// A child run: the run whose flow step started it, and what its end
    /// answers there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent>,
}

/// The run a child run answers: its end is a reply to the event that
/// started it, or (once the parent undoes it) to the one that asked for
/// its compensation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    pub run: String,
    /// The parent's flow step (`ID~undo` once it is being undone).
    pub step: String,
    pub attempt: u32,
    /// The id of the event the child's end answers.
    pub command: String,
}

/// A signal sent to a run, kept with it: what it carried and what became
/// of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalRecord {
    pub name: String,
    pub data: Value,
    pub by: String,
    pub at: String,
    /// The id of the control event that carried it.
    pub event: String,
    /// The step that awaits it, if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub state: SignalState,
    /// Why it was ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What became of a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalState {
    /// Its step waited for it: the signal's data is the step's output.
    Delivered,
    /// Its step has not been reached: kept until it is.
    Kept,
    /// Nothing waits for it (the step received one, was skipped, or
    /// ended otherwise; the API refuses such a signal before it is sent,
    /// so this is a signal that lost a race).
    Ignored,
}

/// What an operator did to a run: who, why, when, and the id of the
/// control event that asked (a copy delivered again does nothing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operated {
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: String,
    pub event: String,
}

impl RunRecord {
    /// What the run index keeps of the run ([`crate::broker::runs`]).
    pub fn entry(&self) -> crate::broker::runs::RunEntry {
        let name = serde_json::to_value(self.state).expect("a state serialises");
        crate::broker::runs::RunEntry {
            id: self.id.clone(),
            flow: self.flow.clone(),
            state: name.as_str().unwrap_or_default().to_string(),
            created_ms: self.created_ms,
            updated_ms: crate::clock::epoch_ms(&self.updated).unwrap_or(self.created_ms),
            deployment: self.deployment,
            key: self.key.clone(),
            error: self
                .error
                .as_deref()
                .map(|e| crate::text::clean(e, crate::broker::runs::MAX_ERROR)),
        }
    }
}

/// The state-row key of a run.
pub fn key(id: &str) -> String {
    format!("{}{id}", crate::broker::RUN_ROW)
}

#[cfg(test)]
mod tests {
    use super::RunState;

    /// The broker recognises ended runs in stores written before it was
    /// told of them by these names: they must be the final states.
    #[test]
    fn the_broker_knows_the_final_states_by_name() {
        let all = [
            RunState::Running,
            RunState::Compensating,
            RunState::Completed,
            RunState::Compensated,
            RunState::Failed,
            RunState::TimedOut,
            RunState::Cancelled,
        ];
        let mut finals: Vec<String> = all
            .iter()
            .filter(|s| s.is_final())
            .map(|s| {
                serde_json::to_value(s)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        finals.sort();
        let mut known: Vec<&str> = crate::broker::ENDED_RUN_STATES.to_vec();
        known.sort();
        assert_eq!(finals, known);
    }
}
