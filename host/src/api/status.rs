//! What `GET /v1/runs/{id}` serves: a run's aggregated status, made from
//! the orchestrator's record but apart from it. The record is the
//! orchestrator's to change (deadlines, command ids, the undo queue,
//! idempotency keys); this is the API's, documented in its OpenAPI
//! document (`Run`), and changes only as an API does.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::orchestrator::run::{
    Elements, Operated, RunRecord, RunState, SignalRecord, StepRecord, StepState,
};

/// A run's status.
#[derive(Serialize)]
pub struct RunStatus<'a> {
    id: &'a str,
    flow: &'a str,
    /// The deployment the run started on: its flow and its steps, to its
    /// end.
    #[serde(skip_serializing_if = "Option::is_none")]
    deployment: Option<u64>,
    state: RunState,
    input: &'a Value,
    created: &'a str,
    updated: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<u64>,
    /// Why the run failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    /// Flow steps by id; compensations as `ID~undo`.
    steps: BTreeMap<&'a str, StepStatus<'a>>,
    /// Who cancelled it, why, when.
    #[serde(skip_serializing_if = "Option::is_none")]
    cancelled: Option<&'a Operated>,
    /// Each redrive, oldest first.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    redrives: &'a [Operated],
    /// The signals sent to it, and what became of each.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    signals: &'a [SignalRecord],
    /// A child run: the run whose step started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<ParentStatus<'a>>,
}

/// The run a child run was started by, and its flow step.
#[derive(Serialize)]
pub struct ParentStatus<'a> {
    run: &'a str,
    step: &'a str,
}

/// A flow step's status.
#[derive(Serialize)]
pub struct StepStatus<'a> {
    state: StepState,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    started: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a RawValue>,
    /// Each failed attempt: `attempt N: CLASS: message`.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [String],
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    /// The SHA-256 of the component that answered its last attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<&'a str>,
    /// A sleeping step: when it wakes.
    #[serde(skip_serializing_if = "Option::is_none")]
    wakes: Option<String>,
    /// A for-each step: how many elements, and how far they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    elements: Option<&'a Elements>,
    /// A child flow step: the run its current attempt started.
    #[serde(skip_serializing_if = "Option::is_none")]
    child: Option<&'a str>,
}

impl<'a> From<&'a RunRecord> for RunStatus<'a> {
    fn from(r: &'a RunRecord) -> RunStatus<'a> {
        RunStatus {
            id: &r.id,
            flow: &r.flow,
            deployment: r.deployment,
            state: r.state,
            input: &r.input,
            created: &r.created,
            updated: &r.updated,
            finished: r.finished.as_deref(),
            duration_ms: r.duration_ms,
            error: r.error.as_deref(),
            steps: r
                .steps
                .iter()
                .map(|(id, s)| (id.as_str(), StepStatus::from(s)))
                .collect(),
            cancelled: r.cancelled.as_ref(),
            redrives: &r.redrives,
            signals: &r.signals,
            parent: r.parent.as_ref().map(|p| ParentStatus {
                run: &p.run,
                // The step that started it, also once it is undone.
                step: crate::protocol::undoes(&p.step).unwrap_or(&p.step),
            }),
        }
    }
}

impl<'a> From<&'a StepRecord> for StepStatus<'a> {
    fn from(s: &'a StepRecord) -> StepStatus<'a> {
        StepStatus {
            state: s.state,
            attempts: s.attempts,
            started: s.started.as_deref(),
            finished: s.finished.as_deref(),
            duration_ms: s.duration_ms,
            output_type: s.output_type.as_deref(),
            output: s.output.as_deref(),
            errors: &s.errors,
            reason: s.reason.as_deref(),
            component: s.component.as_deref(),
            wakes: s
                .deadline_ms
                .filter(|_| s.state == StepState::Sleeping)
                .map(crate::clock::rfc3339),
            elements: s.elements.as_ref(),
            child: s.child.as_deref(),
        }
    }
}
