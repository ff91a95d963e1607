//! Child runs, as the driver meets them (`../machine/child.rs` decides):
//! a start or a compensation their parent asked for, once the child's
//! stored record (if any) is read.

use super::{Delivery, Driver, RunRecord, Start, Started, now_ms};
use crate::event::TRACEPARENT;
use crate::orchestrator::control::Child;
use crate::orchestrator::run::Parent;

impl Driver {
    /// Start child run `c` as delivery `d` asks, with `stored` its record
    /// if it was found: a copy of a start that was done finds the child
    /// held (acked) or ended (its end answered again, under a fresh id:
    /// the first answer may have reached a parent that was not waiting
    /// yet, after a crash).
    pub(super) fn start_child(&mut self, d: Delivery, c: Child, stored: Option<Box<RunRecord>>) {
        let id = crate::protocol::run_of(&d.event).to_string();
        if self.machine.run(&id).is_some() || self.machine.is_parked(&id) {
            return self.ack(d, Vec::new());
        }
        if let Some(run) = stored {
            let answer = match run.parent.as_ref() {
                Some(p) if run.state.is_final() && p.command == d.event.id => {
                    self.machine.end_reply(&run).map(again)
                }
                _ => None,
            };
            return self.ack(d, answer.into_iter().collect());
        }
        let parent = c.parent.clone();
        let trace = d.event.extensions.get(TRACEPARENT).cloned();
        match self
            .machine
            .start(Start::child(id.clone(), c, trace), now_ms())
        {
            Ok(Started::New(t)) => {
                tracing::debug!(run = %id, parent = %parent.run, "child run started");
                self.commit(Some(d), t, None);
            }
            Ok(Started::Existing(_)) => self.ack(d, Vec::new()),
            Err(e) => {
                tracing::warn!(run = %id, parent = %parent.run, "child run not started: {e}");
                let why = format!("the child run could not start: {e}");
                let answer = self.machine.refuse_child(&parent, why);
                self.ack(d, vec![answer]);
            }
        }
    }

    /// Undo ended child run `stored` for its parent's compensation `p`, as
    /// delivery `d` asks; or answer at once if there is nothing to run.
    pub(super) fn compensate(&mut self, d: Delivery, p: Parent, stored: Option<Box<RunRecord>>) {
        let id = crate::protocol::run_of(&d.event).to_string();
        let Some(run) = stored else {
            let why = format!(
                "child run {id} is not in the store (retention removed it?): nothing of it can \
                 be undone"
            );
            let answer = self.machine.refuse_child(&p, why);
            return self.ack(d, vec![answer]);
        };
        match self.machine.compensate(*run, p, now_ms()) {
            Ok(t) => {
                tracing::info!(run = %id, "child run reopened to be undone");
                // It goes on: no final record of it is to be written again.
                self.ending.remove(&id);
                self.resync.remove(&id);
                self.commit(Some(d), t, None);
            }
            Err(answer) => self.ack(d, answer.map(|a| again(*a)).into_iter().collect()),
        }
    }
}

/// An answer sent again: a fresh id, which no broker drops as a copy of
/// the first (the parent counts one reply per attempt either way).
fn again(mut e: crate::event::Event) -> crate::event::Event {
    e.id = uuid::Uuid::now_v7().to_string();
    e
}
