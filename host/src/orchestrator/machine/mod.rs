//! The orchestrator's decisions, apart from their effects.
//!
//! [`Machine`] holds every active run and decides what each input does to
//! it: a start, a reply or an awaited event, a timer. A decision is a
//! [`Transition`]: the run it touched and a list of [`Action`]s (commands to
//! send, timers to arm, whether the run's record must be written, the run's
//! end). The machine performs no I/O and reads no clock: the time is an
//! argument, so its tests drive it with a fake clock (`tests.rs`), and
//! replaying a run's replies after a crash is the same code fed the
//! replies' own times. The driver (`../driver/`) carries the actions out,
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
//! - **A commit that failed loses nothing**: the driver writes the run
//!   again from what the machine holds ([`Machine::resync`]: its record,
//!   and each waiting step's command under the same id), and a start that
//!   could not be stored is forgotten ([`Machine::forget`]), since its
//!   producer was told it failed.
//! - Compensations run one at a time, in reverse order of completion.
//! - Every run ends: each step either replies or times out, a backoff ends,
//!   and the run's deadline is always armed while it runs.

mod child;
mod command;
mod control;
mod failure;
mod fan;
mod park;
mod pins;
mod recovery;
mod reply;
mod start;
#[cfg(test)]
mod tests;
mod transition;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;

use super::flows::FlowSets;
use super::rfc3339;
use super::run::{RunRecord, RunState, StepState};
use crate::clock::epoch_ms;
use crate::event::Event;
use crate::flow::{Action as FlowAction, Flow, FlowStep, INPUT};
use crate::orchestrator::control::{self as ctl, Control};
use crate::protocol::{self, Failure, FailureClass};
use crate::retry::RetryPolicy;

pub(crate) use control::redrivable;
pub(crate) use park::PARK_AFTER_MS;
pub(crate) use start::{KeyRow, key_row};
pub(crate) use transition::{Action, Start, Started, Transition};

/// Every active run, and what the machine needs to decide for them.
pub(crate) struct Machine {
    flows: FlowSets,
    /// How many active runs are pinned to each deployment.
    pinned: BTreeMap<u64, usize>,
    pub(super) runs: HashMap<String, RunRecord>,
    /// `source` of the commands.
    source: String,
    /// The largest state row the broker stores (NATS: one message).
    max_state_bytes: Option<usize>,
    /// The most runs active at once.
    limit: usize,
    /// Idempotency keys of the active runs (state-row key -> run id); a
    /// key of an ended run is found in the broker's state instead.
    keys: HashMap<String, String>,
    /// Runs [`Self::replay`] ended, whose final records are still to write.
    replayed_ends: Vec<Transition>,
    /// Runs let go of while they sleep (`park.rs`), by id.
    parked: HashMap<String, park::Parked>,
    /// Runs whose park is being committed: the token of the latest.
    parking: HashMap<String, u64>,
    park_tokens: u64,
    /// The least time to a wake-up for which a run is parked, ms.
    park_after: u64,
    /// The elements of for-each steps in flight, by run and flow step, as
    /// read once from the run (`fan.rs`).
    fan_items: std::cell::RefCell<HashMap<String, fan::Items>>,
}

impl Machine {
    pub fn new(
        flows: FlowSets,
        source: String,
        max_state_bytes: Option<usize>,
        limit: usize,
    ) -> Machine {
        Machine {
            flows,
            pinned: BTreeMap::new(),
            runs: HashMap::new(),
            source,
            max_state_bytes,
            limit,
            keys: HashMap::new(),
            replayed_ends: Vec::new(),
            parked: HashMap::new(),
            parking: HashMap::new(),
            park_tokens: 0,
            park_after: PARK_AFTER_MS,
            fan_items: Default::default(),
        }
    }

    /// Take on an active run as last written to the store.
    pub fn load(&mut self, run: RunRecord) {
        if let Some(k) = &run.key {
            self.keys.insert(key_row(&run.flow, k), run.id.clone());
        }
        self.pin(run.deployment);
        if let Some(old) = self.runs.insert(run.id.clone(), run) {
            self.unpin(old.deployment);
        }
    }

    /// A run as the machine holds it.
    pub fn run(&self, id: &str) -> Option<&RunRecord> {
        self.runs.get(id)
    }

    pub fn active(&self) -> usize {
        self.runs.len()
    }

    /// A reply, or an event a hybrid step may await. `None` when it is
    /// not for an active run (a late or duplicate reply of an ended run, or
    /// an awaited type from a cascade that is no run): it is only acked.
    pub fn on_event(&mut self, e: &Event, now: u64) -> Option<Transition> {
        let run_id = protocol::run_of(e).to_string();
        if !self.runs.contains_key(&run_id) {
            return None;
        }
        match ctl::read(e) {
            Some(Control::Cancel(ask)) => return self.cancel(&run_id, ask, &e.id, now),
            // An active run has nothing to redrive; a copy of its start
            // starts nothing; it has not completed, so there is nothing
            // to undo yet.
            Some(Control::Redrive(_) | Control::Child(_) | Control::Compensate(_)) => {
                return None;
            }
            Some(Control::Signal(sig)) => return self.signal(&run_id, sig, &e.id, now),
            None => {}
        }
        let mut t = self.begin(&run_id);
        match protocol::read_reply(e) {
            Some(reply) => self.on_reply(&run_id, e, reply, &mut t, now),
            None => self.on_awaited(&run_id, e, &mut t, now),
        }
        self.settle(&mut t, now);
        Some(t)
    }

    /// Whether the timer (`at`, `run_id`, `sid`) still acts: the run's
    /// deadline while it runs, or the timeout or backoff of a step's
    /// current attempt.
    pub fn live(&self, at: u64, run_id: &str, sid: &str) -> bool {
        let Some(run) = self.runs.get(run_id) else {
            // A parked run's read-back.
            return self.read_back_at(run_id) == Some(at);
        };
        if sid.is_empty() {
            return at == run.deadline_ms && run.state == RunState::Running;
        }
        run.steps.get(sid).is_some_and(|r| {
            r.deadline_ms == Some(at)
                && matches!(
                    r.state,
                    StepState::Dispatched | StepState::Backoff | StepState::Sleeping
                )
        })
    }

    /// A timer came due at `now`. `None` if what it guarded settled first.
    pub fn on_timer(&mut self, at: u64, run_id: &str, sid: &str, now: u64) -> Option<Transition> {
        if !self.live(at, run_id, sid) || self.is_parked(run_id) {
            return None;
        }
        let mut t = self.begin(run_id);
        t.actions.push(Action::Checkpoint);
        let run = &self.runs[run_id];
        let state = run.steps.get(sid).map(|r| r.state);
        if sid.is_empty() {
            let ms = run.deadline_ms - run.created_ms;
            self.cancel_children(run_id, &format!("the run timed out after {ms} ms"), &mut t);
            let run = self.runs.get_mut(run_id).expect("live");
            run.timed_out = true;
            for rec in run.steps.values_mut() {
                if rec.state == StepState::Dispatched {
                    rec.state = StepState::TimedOut;
                    rec.deadline_ms = None;
                }
            }
            self.fail_run(run_id, format!("run timed out after {ms} ms"), &mut t, now);
        } else if state == Some(StepState::Backoff) {
            self.dispatch(run_id, sid, &mut t, now);
        } else if state == Some(StepState::Sleeping) {
            self.step_done(run_id, sid, None, &mut t, now);
        } else {
            if let Some(child) = run.steps[sid].child.clone()
                && self.is_child(run_id, sid)
                && protocol::undoes(sid).is_none()
            {
                // Superseded: the step is tried again, or fails.
                t.send(self.cancel_child(run_id, &child, "its step timed out"));
            }
            let (queue, run) = bounds_of(self.flow_of(run_id).as_deref(), sid);
            let why = if queue == 0 {
                format!("no reply within {run} ms")
            } else {
                format!(
                    "no reply within {} ms of being sent ({queue} ms to be started, \
                     queue_timeout_ms, {run} ms to run, timeout_ms, and {REPLY_GRACE_MS} ms \
                     for the reply)",
                    queue + run + REPLY_GRACE_MS
                )
            };
            let f = Failure::new(FailureClass::Timeout, why);
            self.step_failed(run_id, sid, f, &mut t, now);
        }
        self.settle(&mut t, now);
        Some(t)
    }

    /// The flow of a run (an `Arc`: cheap to hold while the run changes).
    fn flow_of(&self, run: &str) -> Option<Arc<Flow>> {
        self.runs
            .get(run)
            .and_then(|r| self.flows.flow(r.deployment, &r.flow))
            .cloned()
    }

    /// Whether `sid` (a flow step or an element of one) is undone by a
    /// compensation once it completed: a for-each step is undone element
    /// by element, not as a whole.
    fn undoable(&self, run_id: &str, sid: &str) -> bool {
        self.flow_of(run_id).is_some_and(|f| undoable(&f, sid))
    }

    fn retry_of(&self, run_id: &str, sid: &str) -> RetryPolicy {
        self.flow_of(run_id)
            .and_then(|f| f.step(protocol::base_step(sid)).map(|s| s.retry.clone()))
            .unwrap_or_default()
    }

    /// Send attempt `attempts + 1` of flow step `sid` (reach it, if it is
    /// a sleep or a for-each step).
    fn dispatch(&mut self, run_id: &str, sid: &str, t: &mut Transition, now: u64) {
        let flow = self.flow_of(run_id);
        match flow.as_ref().and_then(|f| f.step(sid)) {
            Some(s) if s.fan.is_some() => {
                return self.fan_out(run_id, sid, s.fan.as_ref().expect("matched"), t, now);
            }
            Some(FlowStep {
                action: FlowAction::Sleep(wake),
                ..
            }) => return self.sleep(run_id, sid, wake, t, now),
            _ => {}
        }
        let timeout = timeout_of(flow.as_deref(), sid);
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
        // (The flow read above: no second lookup on the commands' path.)
        let child = protocol::undoes(sid).is_none()
            && flow.as_ref().is_some_and(|f| child::is_child(f, sid));
        if let Some(e) = self.command(run_id, sid, attempt, now) {
            if let Some(rec) = self.runs.get_mut(run_id).and_then(|r| r.steps.get_mut(sid)) {
                rec.command_id = Some(e.id.clone());
                // The child run's id is its start's.
                if child {
                    rec.child = Some(e.id.clone());
                }
            }
            t.send(e);
        }
        // A signal step sends nothing: it waits for its signal, which may
        // have come already.
        self.take_kept_signal(run_id, sid, t, now);
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
        // A for-each step settles for its elements (some may have failed
        // within its tolerance).
        let run = self.runs.get_mut(run_id).expect("live");
        let done = run
            .steps
            .iter()
            .filter(|(id, _)| protocol::element_of(id).is_none())
            .all(|(_, r)| matches!(r.state, StepState::Completed | StepState::Skipped));
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
        let element = protocol::element_of(sid).map(|(parent, _)| parent.to_string());
        match run.state {
            RunState::Running => match element {
                Some(parent) => self.element_settled(run_id, &parent, None, t, now),
                None => self.advance(run_id, t, now),
            },
            RunState::Compensating => {
                if run.cancelled.is_some() && protocol::undoes(sid).is_none() {
                    rec.reason = Some("completed after the run was cancelled".into());
                }
                if let Some(orig) = protocol::undoes(sid) {
                    if let Some(r) = run.steps.get_mut(orig) {
                        r.state = StepState::Compensated;
                    }
                } else if self.undoable(run_id, sid) {
                    // It finished after the run began to fail: undo it too.
                    let run = self.runs.get_mut(run_id).expect("live");
                    run.undo.push(sid.to_string());
                }
                self.next_undo(run_id, t, now);
            }
            _ => {}
        }
    }

    /// A transition of run `run_id`, which notes the run's state now.
    fn begin(&self, run_id: &str) -> Transition {
        let mut t = Transition::new(run_id);
        t.was = self.runs.get(run_id).map(|r| r.state);
        t
    }

    /// Close a transition: stamp the run's record (written if the run's
    /// state changed), and if the run ended, hand its final record over.
    fn settle(&mut self, t: &mut Transition, now: u64) {
        let id = t.run.clone();
        self.touch(&id, now);
        let now_in = self.runs.get(&id).map(|r| r.state);
        if t.was.is_some() && now_in != t.was && !t.checkpoint() {
            t.actions.push(Action::Checkpoint);
        }
        if self.runs.get(&id).is_some_and(|r| r.state.is_final()) {
            self.drop_elements(&id);
            self.parking.remove(&id);
            let run = self.runs.remove(&id).expect("present");
            if let Some(k) = &run.key {
                self.keys.remove(&key_row(&run.flow, k));
            }
            if self.unpin(run.deployment) {
                t.actions.push(self.pins_row());
            }
            t.actions.push(Action::End(Box::new(run)));
        } else if self.runs.contains_key(&id) {
            self.park_if_idle(t, now);
        }
    }

    fn touch(&mut self, id: &str, now: u64) {
        if let Some(run) = self.runs.get_mut(id) {
            run.updated = rfc3339(now);
        }
    }
}

/// Whether `sid` of `flow` is undone once it completed (see
/// [`Machine::undoable`]).
pub(super) fn undoable(flow: &Flow, sid: &str) -> bool {
    if protocol::undoes(sid).is_some() {
        return false; // a compensation is not undone
    }
    let whole_fan = protocol::element_of(sid).is_none();
    // A child run undoes itself, with its own compensations.
    flow.step(protocol::base_step(sid)).is_some_and(|s| {
        (s.compensate.is_some() && !(whole_fan && s.fan.is_some()))
            || matches!(s.action, FlowAction::Child { .. })
    })
}

/// How long an attempt of flow step `sid` (or of the compensation of the
/// step it names) may wait for a worker to start its command, and run
/// once started, ms. A hybrid step sends no command: it waits 0 and has
/// its `timeout_ms` for the awaited event.
pub(super) fn bounds_of(flow: Option<&Flow>, sid: &str) -> (u64, u64) {
    let base = flow.and_then(|f| f.step(protocol::base_step(sid)));
    let run = base.map_or(crate::flow::DEFAULT_STEP_TIMEOUT_MS, |s| s.timeout_ms);
    let command = protocol::undoes(sid).is_some()
        || base.is_none_or(|s| matches!(s.action, FlowAction::Command { .. }));
    let queue = match base {
        _ if !command => 0,
        Some(s) if s.queue_timeout_ms > 0 => s.queue_timeout_ms,
        _ => crate::flow::DEFAULT_QUEUE_TIMEOUT_MS,
    };
    (queue, run)
}

/// The longest an attempt of `sid` may take from when it is sent: its time
/// in the queue, its time running and, for a command, [`REPLY_GRACE_MS`]
/// for its reply to come back.
fn timeout_of(flow: Option<&Flow>, sid: &str) -> u64 {
    match bounds_of(flow, sid) {
        (0, run) => run,
        (queue, run) => queue + run + REPLY_GRACE_MS,
    }
}

/// Time for a command's reply to reach the orchestrator after the worker
/// finished it: a worker may start a command up to its start-by time and
/// run it for its whole `timeout_ms`, and the orchestrator must not give up
/// on it (and send the next attempt) while its reply is on the way.
pub(crate) const REPLY_GRACE_MS: u64 = 1_000;

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
