//! Child flow steps (`flow = "other"`), on both sides. Part of [`Machine`].
//!
//! The parent's step sends a control event, `troupe.run.child`, through
//! the broker to the orchestrator, as it would send a command to a step:
//! its id is derived from (run, flow step, attempt) like any command's,
//! and it is the child run's id too, so a copy sent again after a crash
//! starts nothing new. The orchestrator starts the child from it (on the
//! parent's deployment); the child's end is a reply to it, as a worker's
//! is to a command: its output, or why it failed.
//!
//! A parent that fails, is cancelled or times out cancels a child still
//! running; a child step that timed out cancels its child before it is
//! tried again. A completed child step is undone by its child: the
//! compensation sends `troupe.run.compensate`, which reopens the ended
//! child to undo its own completed steps, and its end answers that.

use serde_json::Value;

use super::{Action, Machine, Transition};
use crate::event::{CORRELATION_ID, Emitted, Event, JSON, TRACEPARENT, derived_id};
use crate::flow::{Action as FlowAction, Flow};
use crate::orchestrator::control::{self as ctl, Ask, Child, Control};
use crate::orchestrator::rfc3339;
use crate::orchestrator::run::{Parent, RunRecord, RunState, StepState};
use crate::protocol::{
    self, ATTEMPT, FLOW_STEP, Failure, FailureClass, RUN, completed_reply, failed_reply,
};

impl Machine {
    /// Whether flow step `sid` of run `run_id` (or the step it undoes)
    /// runs a child flow.
    pub(super) fn is_child(&self, run_id: &str, sid: &str) -> bool {
        self.flow_of(run_id)
            .is_some_and(|f| is_child(&f, protocol::base_step(sid)))
    }

    /// The event of attempt `attempt` of child step `sid` (with id `id`):
    /// start the child, or (`ID~undo`) undo it.
    pub(super) fn child_command(
        &self,
        run: &RunRecord,
        flow: &Flow,
        sid: &str,
        attempt: u32,
        id: String,
        now: u64,
    ) -> Option<Event> {
        let parent = Parent {
            run: run.id.clone(),
            step: sid.to_string(),
            attempt,
            command: id.clone(),
        };
        let (child, control) = match protocol::undoes(sid) {
            Some(orig) => (
                run.steps.get(orig)?.child.clone()?,
                Control::Compensate(parent),
            ),
            None => {
                let s = flow.step(sid)?;
                let FlowAction::Child { flow: callee } = &s.action else {
                    return None;
                };
                let input: Value = serde_json::from_slice(&self.output_of(&run.id, &s.input)?)
                    .unwrap_or(Value::Null);
                let c = Child {
                    flow: callee.clone(),
                    deployment: run.deployment,
                    input,
                    parent,
                };
                (id.clone(), Control::Child(Box::new(c)))
            }
        };
        let mut e = ctl::event(&child, &self.source, &control);
        e.time = rfc3339(now);
        // The parent's step and attempt, for its trace: the start is a
        // span of the step's, and the child's run a span of the start.
        e.extensions.insert(FLOW_STEP.to_string(), sid.to_string());
        e.extensions
            .insert(ATTEMPT.to_string(), attempt.to_string());
        e.extensions.insert(
            TRACEPARENT.to_string(),
            super::command::traceparent(&run.id, run.trace.as_deref(), &id),
        );
        e.id = id;
        Some(e)
    }

    /// Cancel the children of run `run_id`'s child steps still waiting
    /// for them: the run no longer does (it failed, was cancelled, or
    /// timed out). Each child undoes what it completed and ends
    /// `cancelled`; its reply finds the step settled, or settles it.
    pub(super) fn cancel_children(&self, run_id: &str, why: &str, t: &mut Transition) {
        let Some(run) = self.runs.get(run_id) else {
            return;
        };
        for (sid, rec) in &run.steps {
            if rec.state == StepState::Dispatched
                && protocol::undoes(sid).is_none()
                && self.is_child(run_id, sid)
                && let Some(child) = &rec.child
            {
                t.send(self.cancel_child(run_id, child, why));
            }
        }
    }

    /// The cancel of child run `child` by its parent `run_id` (one id per
    /// child: a copy sent again is one cancel).
    pub(super) fn cancel_child(&self, run_id: &str, child: &str, why: &str) -> Event {
        let ask = Ask {
            by: format!("run {run_id}"),
            reason: Some(why.to_string()),
        };
        let mut e = ctl::event(child, &self.source, &Control::Cancel(ask));
        e.id = derived_id(child, "cancel");
        e
    }

    /// The reply child run `run` owes its parent now that it has ended:
    /// to the event that started it, its output (that of its flow's
    /// `output` step) or why it failed; to the event that asked it to
    /// undo itself, whether it could. `None` for a run with no parent.
    pub(crate) fn end_reply(&self, run: &RunRecord) -> Option<Event> {
        let p = run.parent.as_ref()?;
        let command = parent_command(p, run.trace.as_deref(), &self.source);
        let reply = if protocol::undoes(&p.step).is_some() {
            let failed = run
                .steps
                .values()
                .any(|r| r.state == StepState::CompensationFailed);
            if failed {
                let why = format!(
                    "undoing child run {} failed: {}",
                    run.id,
                    run.error.as_deref().unwrap_or("a compensation failed")
                );
                failed_reply(
                    &command,
                    &self.source,
                    &Failure::new(FailureClass::Rejected, why),
                )
            } else {
                completed_reply(&command, &self.source, &[])
            }
        } else {
            match run.state {
                RunState::Completed => {
                    let flow = self.flows.flow(run.deployment, &run.flow);
                    let out = flow
                        .and_then(|f| f.output.as_ref())
                        .and_then(|o| run.steps.get(o))
                        .filter(|r| r.state == StepState::Completed);
                    let outputs: Vec<Emitted> = out
                        .and_then(|r| r.output.as_ref().map(|o| (r, o)))
                        .map(|(r, o)| Emitted {
                            kind: r
                                .output_type
                                .clone()
                                .unwrap_or_else(|| OUTPUT_TYPE.to_string()),
                            subject: None,
                            content_type: Some(JSON.to_string()),
                            data: o.get().as_bytes().to_vec(),
                            schema: None,
                        })
                        .into_iter()
                        .collect();
                    completed_reply(&command, &self.source, &outputs)
                }
                state => {
                    let class = match state {
                        RunState::TimedOut => FailureClass::Timeout,
                        _ => FailureClass::Rejected,
                    };
                    let state = serde_json::to_value(state).expect("a state serialises");
                    let why = format!(
                        "child run {} ended {}: {}",
                        run.id,
                        state.as_str().unwrap_or_default(),
                        run.error.as_deref().unwrap_or("no reason given")
                    );
                    failed_reply(&command, &self.source, &Failure::new(class, why))
                }
            }
        };
        Some(reply)
    }

    /// The reply to a parent whose child could not be started (or undone):
    /// `why`.
    pub(crate) fn refuse_child(&self, p: &Parent, why: String) -> Event {
        let command = parent_command(p, None, &self.source);
        failed_reply(
            &command,
            &self.source,
            &Failure::new(FailureClass::Rejected, why),
        )
    }

    /// Undo ended child run `run` (as last stored) for its parent's
    /// compensation `p`: its completed steps with a compensation are
    /// undone, in reverse order of completion, and it ends `compensated`;
    /// its end answers `p`. `Err` carries the answer now when there is
    /// nothing to run: it ended otherwise (its failure undid it), nothing
    /// of it needs undoing, or this compensation was done already.
    pub fn compensate(
        &mut self,
        mut run: RunRecord,
        p: Parent,
        now: u64,
    ) -> Result<Transition, Option<Box<Event>>> {
        if self.runs.contains_key(&run.id) {
            return Err(None);
        }
        if run.parent.as_ref() == Some(&p) {
            return Err(self.end_reply(&run).map(Box::new));
        }
        let Some(flow) = self.flows.flow(run.deployment, &run.flow).cloned() else {
            // Not "nothing to undo": what it would undo is not known here.
            let why = format!(
                "child run {}: its flow {:?} (deployment {:?}) is not loaded here, so its steps \
                 cannot be undone",
                run.id, run.flow, run.deployment
            );
            return Err(Some(Box::new(self.refuse_child(&p, why))));
        };
        let undoable = |sid: &str| super::undoable(&flow, sid);
        let to_undo = run.state == RunState::Completed
            && run
                .steps
                .iter()
                .any(|(sid, r)| r.state == StepState::Completed && undoable(sid));
        let by = p.run.clone();
        run.parent = Some(p);
        if !to_undo {
            return Err(self.end_reply(&run).map(Box::new));
        }
        let id = run.id.clone();
        let mut t = Transition::new(&id);
        t.was = Some(run.state);
        t.actions.push(Action::Checkpoint);
        t.actions.push(Action::Reopen);
        run.state = RunState::Running;
        run.finished = None;
        run.duration_ms = None;
        run.error = None;
        run.deadline_ms = now.saturating_add(flow.timeout_ms);
        if self.pin(run.deployment) {
            t.actions.push(self.pins_row());
        }
        self.runs.insert(id.clone(), run);
        let why = format!("undone: its parent run {by} is being compensated");
        self.fail_run(&id, why, &mut t, now);
        self.settle(&mut t, now);
        Ok(t)
    }
}

/// The type of a child step's output when its child's `output` step
/// produced data of no event type (a for-each step's array).
pub const OUTPUT_TYPE: &str = "troupe.run.output";

/// Whether flow step `id` of `flow` runs a child flow.
pub(super) fn is_child(flow: &Flow, id: &str) -> bool {
    flow.step(id)
        .is_some_and(|s| matches!(s.action, FlowAction::Child { .. }))
}

/// The event a child's reply answers, as its parent sent it (enough of
/// it to reply to: its id, run, flow step, attempt and trace).
fn parent_command(p: &Parent, trace: Option<&str>, source: &str) -> Event {
    let mut e = Event::new(ctl::CHILD, source, Vec::new());
    e.id = p.command.clone();
    e.subject = Some(p.run.clone());
    for (k, v) in [
        (RUN, p.run.clone()),
        (CORRELATION_ID, p.run.clone()),
        (FLOW_STEP, p.step.clone()),
        (ATTEMPT, p.attempt.to_string()),
    ] {
        e.extensions.insert(k.to_string(), v);
    }
    if let Some(t) = trace {
        e.extensions.insert(TRACEPARENT.to_string(), t.to_string());
    }
    e
}
