//! A run's start, and the idempotency key a producer may start it with:
//! the key's state row, and the active runs' keys the machine holds.
//! Part of [`Machine`].

use super::{Action, Machine, Start, Started, Transition};
use crate::orchestrator::run::{RunRecord, RunState, StepRecord};
use crate::orchestrator::{StartError, rfc3339};

/// Room a run's record and its commands need besides the input, bytes.
const RUN_OVERHEAD: usize = 8 * 1024;

impl Machine {
    /// The run an idempotency key started, if it is active.
    pub fn keyed(&self, flow: &str, key: &str) -> Option<&str> {
        self.keys.get(&key_row(flow, key)).map(String::as_str)
    }

    /// Start a run.
    pub fn start(&mut self, s: Start, now: u64) -> Result<Started, StartError> {
        // A child run starts on its parent's deployment.
        let deployment = s
            .parent
            .as_ref()
            .and(s.deployment)
            .filter(|d| self.flows.flow(Some(*d), &s.flow).is_some())
            .unwrap_or(self.flows.current);
        let Some(f) = self.flows.flow(Some(deployment), &s.flow).cloned() else {
            return Err(StartError::UnknownFlow(s.flow));
        };
        // A run of this id, held or parked (a copy of a child's start).
        if self.runs.contains_key(&s.id) || self.parked.contains_key(&s.id) {
            return Ok(Started::Existing(s.id));
        }
        if let Some(k) = &s.key
            && let Some(id) = self.keyed(&s.flow, k)
        {
            return Ok(Started::Existing(id.to_string()));
        }
        if let Some(max) = self.max_state_bytes {
            let size = serde_json::to_vec(&s.input).map_or(usize::MAX, |v| v.len());
            let max = max.saturating_sub(RUN_OVERHEAD);
            if size > max {
                return Err(StartError::TooLarge { size, max });
            }
        }
        // Back-pressure, not a queue: beyond the limit a good start is
        // refused at once (the API answers 503 with Retry-After).
        // A child run is not refused: its parent, admitted, waits for it.
        if self.runs.len() >= self.limit && s.parent.is_none() {
            return Err(StartError::Busy { limit: self.limit });
        }
        let deployment = Some(deployment);
        let run = RunRecord {
            id: s.id.clone(),
            flow: s.flow.clone(),
            deployment,
            state: RunState::Running,
            input: s.input,
            created: rfc3339(now),
            updated: rfc3339(now),
            finished: None,
            duration_ms: None,
            error: None,
            deadline_ms: now.saturating_add(f.timeout_ms),
            created_ms: now,
            steps: f
                .steps
                .iter()
                .map(|s| (s.id.clone(), StepRecord::new()))
                .collect(),
            undo: Vec::new(),
            timed_out: false,
            completions: 0,
            key: s.key.clone(),
            cancelled: None,
            redrives: Vec::new(),
            signals: Vec::new(),
            trace: s.trace.clone(),
            parent: s.parent.clone(),
        };
        let mut t = Transition::new(&s.id);
        t.actions.push(Action::Checkpoint);
        if let Some(k) = &s.key {
            let row = key_row(&s.flow, k);
            let value = KeyRow {
                run: s.id.clone(),
                at_ms: now,
            };
            t.actions.push(Action::Put {
                key: row.clone(),
                value: serde_json::to_vec(&value).expect("a key row serialises"),
            });
            self.keys.insert(row, s.id.clone());
        }
        t.arm(run.deadline_ms, "");
        if self.pin(deployment) {
            t.actions.push(self.pins_row());
        }
        self.runs.insert(s.id.clone(), run);
        self.advance(&s.id, &mut t, now);
        self.settle(&mut t, now);
        Ok(Started::New(t))
    }
}

/// The state row that records which run idempotency key `key` started for
/// `flow`: a name NATS accepts as a key whatever the key's characters.
pub(crate) fn key_row(flow: &str, key: &str) -> String {
    let name = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{flow}\n{key}").as_bytes(),
    );
    format!("start/{}", name.simple())
}

/// What the state row [`key_row`] holds: the run the key started, and
/// when (epoch ms; the key names it for [`crate::orchestrator::IDEMPOTENCY_WINDOW`]).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct KeyRow {
    pub run: String,
    pub at_ms: u64,
}
