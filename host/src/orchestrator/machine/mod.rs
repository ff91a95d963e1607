//! The orchestrator's decisions, apart from their effects.
//!
//! [`Machine`] holds every active run and decides what each input does to
//! it: a start, a reply or an awaited event, a timer. A decision is a
//! [`Transition`]: the run it touched and a list of [`Action`]s (commands to
//! send, timers to arm, whether the run's record must be written, the run's
//! end). The machine performs no I/O and reads no clock: the time is an
//! argument, so its tests drive it with a fake clock (`tests.rs`), and
//! replaying a run's replies after a crash is the same code fed the
//! replies' own times. The driver (`../driver.rs`) carries the actions out,
//! one broker commit per transition.
//!
//! Invariants (tested in `tests.rs`, by example and by property):
//! - **A command's id is a function of (run, flow step, attempt)**: an
//!   attempt re-sent after a restart is the same command, which the broker
//!   deduplicates; no attempt is ever sent under two ids.
//! - **A reply counts only for the command it answers** (its causation id
//!   is the step's current command, and the step still waits); a duplicate
//!   changes nothing, and a completion from a superseded attempt is refused
//!   and noted on the step, never silently dropped.
//! - **Time no host drove a run does not count against its steps**: at
//!   recovery (a restart, a takeover) every waiting step's timeout starts
//!   again from the recovery, and its command is re-sent with the same id.
//!   A run's own timeout is wall-clock time from its start.
//! - Compensations run one at a time, in reverse order of completion.
//! - Every run ends: each step either replies or times out, a backoff ends,
//!   and the run's deadline is always armed while it runs.

mod command;
mod failure;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;

use super::run::{RunRecord, RunState, StepRecord, StepState};
use super::{InputCheck, StartError, rfc3339};
use crate::app::RetryPolicy;
use crate::clock::epoch_ms;
use crate::event::Event;
use crate::flow::{Action as FlowAction, Flow, FlowStep, INPUT};
use crate::protocol::{self, FLOW_STEP, Failure, FailureClass, Reply};

/// Room a run's record and its commands need besides the input, bytes.
const RUN_OVERHEAD: usize = 8 * 1024;

/// What a transition asks of the driver.
#[derive(Debug)]
pub(crate) enum Action {
    /// Send this command (or a hybrid step's event).
    Send(Event),
    /// Wake the machine at `at` (epoch ms) for flow step `sid` of the run
    /// (`""`: the run's own deadline).
    Arm { at: u64, sid: String },
    /// Write the run's record with this transition. Without it, the
    /// record is written only where the journal takes every transition
    /// (the transition is a reply's, which the broker's log keeps).
    Checkpoint,
    /// Also write this state row.
    Put { key: String, value: Vec<u8> },
    /// The run ended: its final record (no longer held by the machine).
    End(Box<RunRecord>),
}

/// One decision: what happened to one run.
#[derive(Debug)]
pub(crate) struct Transition {
    pub run: String,
    pub actions: Vec<Action>,
}

impl Transition {
    fn new(run: &str) -> Transition {
        Transition {
            run: run.to_string(),
            actions: Vec::new(),
        }
    }

    fn send(&mut self, e: Event) {
        self.actions.push(Action::Send(e));
    }

    fn arm(&mut self, at: u64, sid: &str) {
        self.actions.push(Action::Arm {
            at,
            sid: sid.to_string(),
        });
    }

    pub fn sends(&self) -> impl Iterator<Item = &Event> {
        self.actions.iter().filter_map(|a| match a {
            Action::Send(e) => Some(e),
            _ => None,
        })
    }

    pub fn checkpoint(&self) -> bool {
        self.actions.iter().any(|a| matches!(a, Action::Checkpoint))
    }
}

/// A start the machine is asked for.
pub(crate) struct Start {
    /// The new run's id (drawn by the driver: the machine draws nothing).
    pub id: String,
    pub flow: String,
    pub input: Value,
    /// The producer's `Idempotency-Key`.
    pub key: Option<String>,
}

/// What a start came to.
#[derive(Debug)]
pub(crate) enum Started {
    /// A new run; the transition records it and sends its first commands.
    New(Transition),
    /// A run this key started, still active: its id.
    Existing(String),
}

/// Every active run, and what the machine needs to decide for them.
pub(crate) struct Machine {
    flows: Arc<HashMap<String, Arc<Flow>>>,
    pub(super) runs: HashMap<String, RunRecord>,
    /// `source` of the commands.
    source: String,
    /// The largest state row the broker stores (NATS: one message).
    max_state_bytes: Option<usize>,
    check_input: InputCheck,
    /// The most runs active at once.
    limit: usize,
    /// Idempotency keys of the active runs (state-row key -> run id); a
    /// key of an ended run is found in the broker's state instead.
    keys: HashMap<String, String>,
    /// Runs [`Self::replay`] ended, whose final records are still to write.
    replayed_ends: Vec<Transition>,
}

impl Machine {
    pub fn new(
        flows: Arc<HashMap<String, Arc<Flow>>>,
        source: String,
        max_state_bytes: Option<usize>,
        check_input: InputCheck,
        limit: usize,
    ) -> Machine {
        Machine {
            flows,
            runs: HashMap::new(),
            source,
            max_state_bytes,
            check_input,
            limit,
            keys: HashMap::new(),
            replayed_ends: Vec::new(),
        }
    }

    /// Take on an active run as last written to the store.
    pub fn load(&mut self, run: RunRecord) {
        if let Some(k) = &run.key {
            self.keys.insert(key_row(&run.flow, k), run.id.clone());
        }
        self.runs.insert(run.id.clone(), run);
    }

    /// A run as the machine holds it.
    pub fn run(&self, id: &str) -> Option<&RunRecord> {
        self.runs.get(id)
    }

    pub fn active(&self) -> usize {
        self.runs.len()
    }

    /// The run an idempotency key started, if it is active.
    pub fn keyed(&self, flow: &str, key: &str) -> Option<&str> {
        self.keys.get(&key_row(flow, key)).map(String::as_str)
    }

    /// Apply to run `run_id` (loaded from its last checkpoint) the replies
    /// in `log`, the run's trace in log order, each at its own time. The
    /// commands those transitions sent are not collected: [`Self::recover`]
    /// re-sends the command of every waiting step.
    pub fn replay(&mut self, run_id: &str, log: &[Event]) -> usize {
        let mut replies = 0;
        for e in log {
            if !protocol::is_reply(e) || protocol::run_of(e) != run_id {
                continue;
            }
            if !self.runs.contains_key(run_id) {
                break; // it ended
            }
            let at = epoch_ms(&e.time).unwrap_or(0);
            if let Some(t) = self.on_event(e, at) {
                // A run the replies ended: its final record is written
                // at recovery.
                let end = t.actions.into_iter().find(|a| matches!(a, Action::End(_)));
                if let Some(end) = end {
                    self.replayed_ends.push(Transition {
                        run: run_id.to_string(),
                        actions: vec![end],
                    });
                }
            }
            replies += 1;
        }
        replies
    }

    /// After a restart or a takeover, at `now`: for every run, arm its
    /// deadline and its steps' timers, give every waiting step its full
    /// timeout from now (the time no host drove the run is not the step's),
    /// and re-send its command (same id: the broker drops those it has).
    /// Each run's record is written, and the final record of each run
    /// that [`Self::replay`] ended.
    pub fn recover(&mut self, now: u64) -> Vec<Transition> {
        let ids: Vec<String> = self.runs.keys().cloned().collect();
        let mut out = std::mem::take(&mut self.replayed_ends);
        for id in ids {
            let mut t = Transition::new(&id);
            t.actions.push(Action::Checkpoint);
            let flow = self.flow_of(&id);
            let run = self.runs.get_mut(&id).expect("listed");
            t.arm(run.deadline_ms, "");
            let sids: Vec<String> = run.steps.keys().cloned().collect();
            let mut waiting = Vec::new();
            for sid in sids {
                let rec = run.steps.get_mut(&sid).expect("listed");
                let Some(mut at) = rec.deadline_ms else {
                    continue;
                };
                if rec.state == StepState::Dispatched {
                    at = at.max(now + timeout_of(flow.as_deref(), &sid));
                    rec.deadline_ms = Some(at);
                    waiting.push((sid.clone(), rec.attempts));
                }
                t.arm(at, &sid);
            }
            for (sid, attempt) in waiting {
                if let Some(e) = self.command(&id, &sid, attempt, now) {
                    t.send(e);
                }
            }
            self.touch(&id, now);
            out.push(t);
        }
        out
    }

    /// Start a run.
    pub fn start(&mut self, s: Start, now: u64) -> Result<Started, StartError> {
        let Some(f) = self.flows.get(&s.flow).cloned() else {
            return Err(StartError::UnknownFlow(s.flow));
        };
        if let Some(k) = &s.key
            && let Some(id) = self.keyed(&s.flow, k)
        {
            return Ok(Started::Existing(id.to_string()));
        }
        if let Err(reason) = (self.check_input)(&f, &s.input) {
            return Err(StartError::BadInput {
                kind: f.input.clone(),
                reason,
            });
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
        if self.runs.len() >= self.limit {
            return Err(StartError::Busy { limit: self.limit });
        }
        let run = RunRecord {
            id: s.id.clone(),
            flow: s.flow.clone(),
            state: RunState::Running,
            input: s.input,
            created: rfc3339(now),
            updated: rfc3339(now),
            finished: None,
            duration_ms: None,
            error: None,
            deadline_ms: now + f.timeout_ms,
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
        self.runs.insert(s.id.clone(), run);
        self.advance(&s.id, &mut t, now);
        self.settle(&mut t, now);
        Ok(Started::New(t))
    }

    /// A reply, or an event a hybrid step may await. `None` when it is
    /// not for an active run (a late or duplicate reply of an ended run, or
    /// an awaited type from a cascade that is no run): it is only acked.
    pub fn on_event(&mut self, e: &Event, now: u64) -> Option<Transition> {
        let run_id = protocol::run_of(e).to_string();
        if !self.runs.contains_key(&run_id) {
            return None;
        }
        let mut t = Transition::new(&run_id);
        match protocol::read_reply(e) {
            Some(reply) => self.on_reply(&run_id, e, reply, &mut t, now),
            None => self.on_awaited(&run_id, e, &mut t, now),
        }
        self.settle(&mut t, now);
        Some(t)
    }

    fn on_reply(&mut self, run_id: &str, e: &Event, reply: Reply, t: &mut Transition, now: u64) {
        let sid = e.extensions.get(FLOW_STEP).cloned().unwrap_or_default();
        let Some(rec) = self.runs[run_id].steps.get(&sid) else {
            return;
        };
        let current = rec.command_id.as_deref() == e.causation_id();
        if current && rec.state == StepState::Dispatched {
            match reply {
                Reply::Completed(output) => match self.record_too_large(run_id, output.as_ref()) {
                    Some(f) => self.step_failed(run_id, &sid, f, t, now),
                    None => self.step_done(run_id, &sid, output, t, now),
                },
                Reply::Failed(f) => self.step_failed(run_id, &sid, f, t, now),
            }
        } else if !current && matches!(reply, Reply::Completed(_)) {
            // A completion from an attempt that was superseded (it timed
            // out, and a later attempt was sent): refused, and said.
            let attempt = e
                .extensions
                .get(protocol::ATTEMPT)
                .map_or("an earlier attempt".to_string(), |a| format!("attempt {a}"));
            let rec = self
                .runs
                .get_mut(run_id)
                .and_then(|r| r.steps.get_mut(&sid))
                .expect("present");
            let note = format!(
                "{attempt} completed after it was superseded: its reply was refused (what it did \
                 stands)"
            );
            // Once: the reply may be delivered again, or replayed from the
            // log after a restart.
            if !rec.errors.contains(&note) {
                rec.errors.push(note);
                t.actions.push(Action::Checkpoint);
            }
        }
    }

    /// An awaited choreography event for a hybrid step.
    fn on_awaited(&mut self, run_id: &str, e: &Event, t: &mut Transition, now: u64) {
        let Some(flow) = self.flow_of(run_id) else {
            return;
        };
        let kind = e.kind.as_str();
        let run = &self.runs[run_id];
        let waiting = flow.steps.iter().find(|s| {
            matches!(&s.action, FlowAction::Hybrid { done, failed, .. } if done == kind || failed.as_deref() == Some(kind))
                && run.steps[&s.id].state == StepState::Dispatched
        });
        let Some(s) = waiting else { return };
        let FlowAction::Hybrid { done, .. } = &s.action else {
            unreachable!("found as hybrid")
        };
        // The event settled a step: not a reply, so the log alone does not
        // explain it; the record is written.
        t.actions.push(Action::Checkpoint);
        if kind == done {
            let data = serde_json::from_slice::<Box<RawValue>>(&e.data)
                .ok()
                .filter(|_| e.is_json())
                .unwrap_or_else(protocol::null);
            self.step_done(run_id, &s.id, Some((e.kind.clone(), data)), t, now);
        } else {
            let msg =
                crate::text::message(&format!("{kind}: {}", String::from_utf8_lossy(&e.data)));
            let f = Failure::new(FailureClass::Rejected, msg);
            self.step_failed(run_id, &s.id, f, t, now);
        }
    }

    /// Whether the timer (`at`, `run_id`, `sid`) still acts: the run's
    /// deadline while it runs, or the timeout or backoff of a step's
    /// current attempt.
    pub fn live(&self, at: u64, run_id: &str, sid: &str) -> bool {
        let Some(run) = self.runs.get(run_id) else {
            return false;
        };
        if sid.is_empty() {
            return at == run.deadline_ms && run.state == RunState::Running;
        }
        run.steps.get(sid).is_some_and(|r| {
            r.deadline_ms == Some(at)
                && matches!(r.state, StepState::Dispatched | StepState::Backoff)
        })
    }

    /// A timer came due at `now`. `None` if what it guarded settled first.
    pub fn on_timer(&mut self, at: u64, run_id: &str, sid: &str, now: u64) -> Option<Transition> {
        if !self.live(at, run_id, sid) {
            return None;
        }
        let mut t = Transition::new(run_id);
        t.actions.push(Action::Checkpoint);
        let run = self.runs.get_mut(run_id).expect("live");
        if sid.is_empty() {
            let ms = run.deadline_ms - run.created_ms;
            run.timed_out = true;
            for rec in run.steps.values_mut() {
                if rec.state == StepState::Dispatched {
                    rec.state = StepState::TimedOut;
                    rec.deadline_ms = None;
                }
            }
            self.fail_run(run_id, format!("run timed out after {ms} ms"), &mut t, now);
        } else if run.steps[sid].state == StepState::Backoff {
            self.dispatch(run_id, sid, &mut t, now);
        } else {
            let ms = timeout_of(self.flow_of(run_id).as_deref(), sid);
            let f = Failure::new(FailureClass::Timeout, format!("no reply within {ms} ms"));
            self.step_failed(run_id, sid, f, &mut t, now);
        }
        self.settle(&mut t, now);
        Some(t)
    }

    /// The flow of a run (an `Arc`: cheap to hold while the run changes).
    fn flow_of(&self, run: &str) -> Option<Arc<Flow>> {
        self.runs
            .get(run)
            .and_then(|r| self.flows.get(&r.flow))
            .cloned()
    }

    fn retry_of(&self, run_id: &str, sid: &str) -> RetryPolicy {
        self.flow_of(run_id)
            .and_then(|f| f.step(protocol::base_step(sid)).map(|s| s.retry.clone()))
            .unwrap_or_default()
    }

    /// Send attempt `attempts + 1` of flow step `sid`.
    fn dispatch(&mut self, run_id: &str, sid: &str, t: &mut Transition, now: u64) {
        let timeout = timeout_of(self.flow_of(run_id).as_deref(), sid);
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        let rec = run.steps.entry(sid.to_string()).or_default();
        rec.attempts += 1;
        rec.state = StepState::Dispatched;
        if rec.started.is_none() {
            rec.started = Some(rfc3339(now));
        }
        rec.deadline_ms = Some(now + timeout);
        let attempt = rec.attempts;
        t.arm(now + timeout, sid);
        if let Some(e) = self.command(run_id, sid, attempt, now) {
            if let Some(rec) = self.runs.get_mut(run_id).and_then(|r| r.steps.get_mut(sid)) {
                rec.command_id = Some(e.id.clone());
            }
            t.send(e);
        }
    }

    /// Dispatch every step whose dependencies are settled; finish the run
    /// when nothing is left.
    fn advance(&mut self, run_id: &str, t: &mut Transition, now: u64) {
        let Some(flow) = self.flow_of(run_id) else {
            return;
        };
        loop {
            if self.runs[run_id].state != RunState::Running {
                return;
            }
            let mut progressed = false;
            for s in &flow.steps {
                let run = &self.runs[run_id];
                if run.steps[&s.id].state != StepState::Pending {
                    continue;
                }
                let settled = |id: &String| {
                    matches!(
                        run.steps[id].state,
                        StepState::Completed | StepState::Skipped
                    )
                };
                if !s.after.iter().all(settled) {
                    continue;
                }
                if let Some(reason) = skip_reason(run, s) {
                    let rec = self
                        .runs
                        .get_mut(run_id)
                        .and_then(|r| r.steps.get_mut(&s.id))
                        .expect("a step of the run");
                    rec.state = StepState::Skipped;
                    rec.reason = Some(reason);
                    progressed = true;
                    continue;
                }
                self.dispatch(run_id, &s.id, t, now);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        let run = self.runs.get_mut(run_id).expect("live");
        let done = run
            .steps
            .values()
            .all(|r| matches!(r.state, StepState::Completed | StepState::Skipped));
        if done {
            finish(run, RunState::Completed, now);
        }
    }

    /// `output`: the type and data of the step's (first) output event.
    fn step_done(
        &mut self,
        run_id: &str,
        sid: &str,
        output: Option<(String, Box<RawValue>)>,
        t: &mut Transition,
        now: u64,
    ) {
        let run = self.runs.get_mut(run_id).expect("live");
        run.completions += 1;
        let seq = run.completions;
        let rec = run.steps.get_mut(sid).expect("step");
        rec.state = StepState::Completed;
        rec.finished = Some(rfc3339(now));
        let started = rec.started.as_deref().and_then(epoch_ms).unwrap_or(now);
        rec.duration_ms = Some(now.saturating_sub(started));
        rec.deadline_ms = None;
        rec.completed_seq = Some(seq);
        if let Some((kind, data)) = output {
            rec.output_type = Some(kind);
            rec.output = Some(data);
        }
        match run.state {
            RunState::Running => self.advance(run_id, t, now),
            RunState::Compensating => {
                if let Some(orig) = protocol::undoes(sid) {
                    if let Some(r) = run.steps.get_mut(orig) {
                        r.state = StepState::Compensated;
                    }
                } else if self
                    .flow_of(run_id)
                    .is_some_and(|f| f.step(sid).is_some_and(|s| s.compensate.is_some()))
                {
                    // It finished after the run began to fail: undo it too.
                    let run = self.runs.get_mut(run_id).expect("live");
                    run.undo.push(sid.to_string());
                }
                self.next_undo(run_id, t, now);
            }
            _ => {}
        }
    }

    /// Close a transition: stamp the run's record, and if the run ended,
    /// hand its final record over.
    fn settle(&mut self, t: &mut Transition, now: u64) {
        let id = t.run.clone();
        self.touch(&id, now);
        if self.runs.get(&id).is_some_and(|r| r.state.is_final()) {
            let run = self.runs.remove(&id).expect("present");
            if let Some(k) = &run.key {
                self.keys.remove(&key_row(&run.flow, k));
            }
            t.actions.push(Action::End(Box::new(run)));
        }
    }

    fn touch(&mut self, id: &str, now: u64) {
        if let Some(run) = self.runs.get_mut(id) {
            run.updated = rfc3339(now);
        }
    }
}

/// The time flow step `sid` (or the step it compensates) may take.
fn timeout_of(flow: Option<&Flow>, sid: &str) -> u64 {
    flow.and_then(|f| f.step(protocol::base_step(sid)).map(|s| s.timeout_ms))
        .unwrap_or(crate::flow::DEFAULT_STEP_TIMEOUT_MS)
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
/// when (epoch ms; the key names it for [`super::IDEMPOTENCY_WINDOW`]).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct KeyRow {
    pub run: String,
    pub at_ms: u64,
}

/// End `run` as `state` at `now` (epoch ms).
fn finish(run: &mut RunRecord, state: RunState, now: u64) {
    run.state = state;
    run.finished = Some(rfc3339(now));
    run.duration_ms = Some(now.saturating_sub(run.created_ms));
}

/// Why flow step `s` of `run` is skipped, or `None` if it runs: it runs if
/// its input was not skipped and its condition holds.
fn skip_reason(run: &RunRecord, s: &FlowStep) -> Option<String> {
    if s.input != INPUT && run.steps[&s.input].state == StepState::Skipped {
        return Some(format!("its input `{}` was skipped", s.input));
    }
    let c = s.when.as_ref()?;
    match run.steps.get(&c.step) {
        Some(r) if r.state == StepState::Completed => {
            let output = r.output.as_ref().map(|raw| serde_json::from_str(raw.get()));
            let data = output.and_then(Result::ok).unwrap_or(Value::Null);
            (!c.holds(&data)).then(|| c.explain(&data))
        }
        _ => Some(format!(
            "`{}` is false: `{}` did not complete",
            c.text.trim(),
            c.step
        )),
    }
}
