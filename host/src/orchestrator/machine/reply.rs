//! What a reply, or an event a hybrid step awaits, does to its run: the
//! step it answers completes or fails; a reply that answers no current
//! command is refused and noted. Part of [`Machine`].

use serde_json::value::RawValue;

use super::{Action, Machine, Transition};
use crate::event::Event;
use crate::flow::Action as FlowAction;
use crate::orchestrator::run::StepState;
use crate::protocol::{self, FLOW_STEP, Failure, FailureClass, Reply};

impl Machine {
    pub(super) fn on_reply(
        &mut self,
        run_id: &str,
        e: &Event,
        reply: Reply,
        t: &mut Transition,
        now: u64,
    ) {
        let sid = e.extensions.get(FLOW_STEP).cloned().unwrap_or_default();
        let Some(rec) = self.runs[run_id].steps.get(&sid) else {
            return;
        };
        let current = rec.command_id.as_deref() == e.causation_id();
        if current && rec.state == StepState::Dispatched {
            let component = e.extensions.get(protocol::COMPONENT).cloned();
            if let Some(rec) = self
                .runs
                .get_mut(run_id)
                .and_then(|r| r.steps.get_mut(&sid))
            {
                rec.component = component;
            }
            match reply {
                Reply::Completed(output) => match self.record_too_large(run_id, output.as_ref()) {
                    Some(f) => self.step_failed(run_id, &sid, f, t, now),
                    None => self.step_done(run_id, &sid, output, t, now),
                },
                Reply::Failed(f) => self.step_failed(run_id, &sid, f, t, now),
            }
        } else if matches!(reply, Reply::Completed(_))
            && (!current || rec.state == StepState::Cancelled)
        {
            // A completion from an attempt that was superseded (it timed
            // out, and a later attempt was sent; or the run was cancelled
            // while it ran): refused, and said.
            let attempt = e
                .extensions
                .get(protocol::ATTEMPT)
                .map_or("an earlier attempt".to_string(), |a| format!("attempt {a}"));
            let after = if current {
                "the run was cancelled"
            } else {
                "it was superseded"
            };
            let rec = self
                .runs
                .get_mut(run_id)
                .and_then(|r| r.steps.get_mut(&sid))
                .expect("present");
            let note = format!(
                "{attempt} completed after {after}: its reply was refused (what it did stands)"
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
    pub(super) fn on_awaited(&mut self, run_id: &str, e: &Event, t: &mut Transition, now: u64) {
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
}
