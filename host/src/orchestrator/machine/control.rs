//! An operator's control of a run (`../control.rs`): cancel an active
//! run, redrive an ended one. Part of [`Machine`].

use std::sync::Arc;

use super::{Action, Machine, Transition, key_row};
use crate::flow::{Flow, signal};
use crate::orchestrator::control::{Ask, Signal};
use crate::orchestrator::flows::FlowSets;
use crate::orchestrator::rfc3339;
use crate::orchestrator::run::{
    Operated, RunRecord, RunState, SignalRecord, SignalState, StepRecord, StepState,
};
use crate::protocol;

impl Machine {
    /// Cancel active run `run_id`, as control event `event` asks: steps
    /// not started are cancelled; completed steps with a compensation are
    /// undone, in reverse order of completion; a step in flight with a
    /// compensation is waited for (until its timeout) and undone if it
    /// completes, one without is superseded at once (a late completion is
    /// refused and noted on it). The run ends `cancelled`. `None` when
    /// there is nothing to do: it was cancelled already (a copy of the
    /// event), or it is being undone after a failure, which ends it
    /// anyway.
    pub(super) fn cancel(
        &mut self,
        run_id: &str,
        ask: Ask,
        event: &str,
        now: u64,
    ) -> Option<Transition> {
        let run = self.runs.get_mut(run_id)?;
        if run.cancelled.is_some() || run.state != RunState::Running {
            return None;
        }
        let mut t = Transition::new(run_id);
        t.was = Some(run.state);
        t.actions.push(Action::Checkpoint);
        let why = format!(
            "cancelled by {}{}",
            ask.by,
            ask.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        run.cancelled = Some(Operated {
            by: ask.by,
            reason: ask.reason,
            at: rfc3339(now),
            event: event.to_string(),
        });
        let flow = self.flows.flow(run.deployment, &run.flow).cloned();
        let undoable = |sid: &str| flow.as_ref().is_some_and(|f| super::undoable(f, sid));
        for (sid, rec) in run.steps.iter_mut() {
            if rec.state == StepState::Dispatched && !undoable(sid) {
                rec.state = StepState::Cancelled;
                rec.deadline_ms = None;
                rec.finished = Some(rfc3339(now));
                rec.reason = Some("the run was cancelled while it ran".into());
            }
        }
        self.fail_run(run_id, why, &mut t, now);
        self.settle(&mut t, now);
        Some(t)
    }

    /// Run `run` (ended, as last stored) again from the steps that failed,
    /// on the current deployment, as control event `event` asks: its
    /// completed steps keep their outputs, each failed, timed-out or
    /// cancelled step starts again from its first attempt. `Err` says why
    /// not ([`redrivable`]), or that it was done already.
    pub fn redrive(
        &mut self,
        mut run: RunRecord,
        ask: Ask,
        event: &str,
        now: u64,
    ) -> Result<Transition, String> {
        if self.runs.contains_key(&run.id) {
            return Err("it is running".into());
        }
        if run.redrives.iter().any(|r| r.event == event) {
            return Err("this redrive was done already".into());
        }
        let flow = redrivable(&run, &self.flows)?;
        let mut t = Transition::new(&run.id);
        t.was = Some(run.state);
        for s in &flow.steps {
            run.steps.entry(s.id.clone()).or_default();
        }
        for rec in run.steps.values_mut() {
            if matches!(
                rec.state,
                StepState::Failed | StepState::TimedOut | StepState::Cancelled
            ) {
                *rec = StepRecord {
                    errors: std::mem::take(&mut rec.errors),
                    ..StepRecord::new()
                };
            }
        }
        run.deployment = Some(self.flows.current);
        run.state = RunState::Running;
        run.error = None;
        run.finished = None;
        run.duration_ms = None;
        run.timed_out = false;
        run.undo.clear();
        run.deadline_ms = now + flow.timeout_ms;
        run.redrives.push(Operated {
            by: ask.by,
            reason: ask.reason,
            at: rfc3339(now),
            event: event.to_string(),
        });
        let id = run.id.clone();
        if let Some(k) = &run.key {
            self.keys.insert(key_row(&run.flow, k), id.clone());
        }
        t.actions.push(Action::Checkpoint);
        t.actions.push(Action::Reopen);
        if self.pin(run.deployment) {
            t.actions.push(self.pins_row());
        }
        t.arm(run.deadline_ms, "");
        self.runs.insert(id.clone(), run);
        self.advance(&id, &mut t, now);
        self.settle(&mut t, now);
        Ok(t)
    }
}

/// Whether ended run `run` can be redriven on the current deployment of
/// `flows`: it failed or timed out, nothing of it was undone, and the
/// flow there still has every step the run has. Its flow, or why not.
pub fn redrivable(run: &RunRecord, flows: &FlowSets) -> Result<Arc<Flow>, String> {
    match run.state {
        RunState::Failed | RunState::TimedOut => {}
        RunState::Compensated => {
            return Err(
                "it was compensated: its completed steps were undone, so there is nothing to \
                 go on from"
                    .into(),
            );
        }
        RunState::Running | RunState::Compensating => {
            return Err("it has not ended".into());
        }
        RunState::Completed => return Err("it completed".into()),
        RunState::Cancelled => return Err("it was cancelled".into()),
    }
    let undone: Vec<&str> = run
        .steps
        .keys()
        .filter_map(|id| protocol::undoes(id))
        .collect();
    if !undone.is_empty() {
        return Err(format!(
            "compensations ran for {}: what they undid would not be done again",
            undone.join(", ")
        ));
    }
    let Some(flow) = flows.flow(None, &run.flow) else {
        return Err(format!("the current deployment has no flow {:?}", run.flow));
    };
    if let Some(gone) = run.steps.keys().find(|id| flow.step(id).is_none()) {
        return Err(format!(
            "the current deployment's flow {:?} has no step {gone:?}, which the run has",
            run.flow
        ));
    }
    Ok(flow.clone())
}

impl Machine {
    /// A signal to active run `run_id` (control event `event`): the step
    /// that awaits it takes its data as its output if it waits now; one
    /// not yet reached keeps it until it is. Recorded with the run either
    /// way (ignored, and why, if nothing waits for it). `None` for a copy
    /// of a signal already recorded.
    pub(super) fn signal(
        &mut self,
        run_id: &str,
        sig: Signal,
        event: &str,
        now: u64,
    ) -> Option<Transition> {
        let flow = self.flow_of(run_id)?;
        let run = self.runs.get_mut(run_id)?;
        if run.signals.iter().any(|s| s.event == event) {
            return None;
        }
        let mut t = Transition::new(run_id);
        t.was = Some(run.state);
        t.actions.push(Action::Checkpoint);
        let awaiting = flow.signal(&sig.name).map(|(s, _)| s.id.clone());
        let (state, note) = match &awaiting {
            None => (
                SignalState::Ignored,
                Some("no step of the flow awaits it".into()),
            ),
            Some(sid) => match run.steps.get(sid).map(|r| r.state) {
                _ if run.state != RunState::Running => (
                    SignalState::Ignored,
                    Some("the run is being undone".to_string()),
                ),
                Some(StepState::Dispatched) => (SignalState::Delivered, None),
                Some(StepState::Pending)
                    if !run
                        .signals
                        .iter()
                        .any(|s| s.name == sig.name && s.state == SignalState::Kept) =>
                {
                    (SignalState::Kept, None)
                }
                Some(StepState::Pending) => (
                    SignalState::Ignored,
                    Some(format!("a signal {:?} is already kept for it", sig.name)),
                ),
                Some(other) => (
                    SignalState::Ignored,
                    Some(format!("the step is {other:?}, not waiting").to_lowercase()),
                ),
                None => (
                    SignalState::Ignored,
                    Some("the run has no such step".into()),
                ),
            },
        };
        run.signals.push(SignalRecord {
            name: sig.name.clone(),
            data: sig.data.clone(),
            by: sig.by,
            at: rfc3339(now),
            event: event.to_string(),
            step: awaiting.clone(),
            state,
            note,
        });
        if let (SignalState::Delivered, Some(sid)) = (state, awaiting) {
            let data = raw(&sig.data);
            self.step_done(
                run_id,
                &sid,
                Some((signal::output_type(&sig.name), data)),
                &mut t,
                now,
            );
        }
        self.settle(&mut t, now);
        Some(t)
    }

    /// Signal step `sid` was just dispatched: if a signal for it is kept,
    /// it takes it now.
    pub(super) fn take_kept_signal(
        &mut self,
        run_id: &str,
        sid: &str,
        t: &mut Transition,
        now: u64,
    ) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        let Some(kept) = run
            .signals
            .iter_mut()
            .find(|s| s.step.as_deref() == Some(sid) && s.state == SignalState::Kept)
        else {
            return;
        };
        kept.state = SignalState::Delivered;
        let (name, data) = (kept.name.clone(), raw(&kept.data));
        t.actions.push(Action::Checkpoint);
        self.step_done(
            run_id,
            sid,
            Some((signal::output_type(&name), data)),
            t,
            now,
        );
    }
}

/// `value` as the raw JSON a step's output is kept as.
fn raw(value: &serde_json::Value) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(value).expect("JSON serialises")
}
