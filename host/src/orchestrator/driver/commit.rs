//! A transition carried out: one broker commit of its commands, its state
//! rows, the run's record when it needs writing, and the ack of what
//! caused it; and what the driver is told of it once it settles.

use super::{Action, Delivery, Driver, Journal, RunRecord, Settled, Transition, key};
use crate::broker::{BrokerError, Commit};

impl Driver {
    /// Carry out transition `t` as one commit with the ack `ack`: its
    /// commands, its state rows, and the run's record if the transition
    /// asks for it, the run ended, or the journal takes every transition.
    pub(super) fn commit(
        &mut self,
        ack: Option<Delivery>,
        t: Transition,
        then: Option<crate::broker::Then>,
    ) {
        // The run index follows the record's checkpoints (a start, a
        // change of state, an end, ...), not every record NATS writes.
        let checkpoint = t.checkpoint();
        let write = checkpoint || self.journal == Journal::EveryTransition;
        let Transition {
            run: id, actions, ..
        } = t;
        let mut commit = Commit {
            ack,
            ..Commit::default()
        };
        let mut ended = None;
        let mut park = None;
        for a in actions {
            match a {
                Action::Send(e) => commit.events.push(e),
                Action::Park { token } => park = Some(token),
                Action::Arm { at, sid } => {
                    let machine = &self.machine;
                    self.timers
                        .arm(at, &id, &sid, |at, run, sid| machine.live(at, run, sid));
                }
                Action::Checkpoint => {}
                Action::Reopen => {
                    commit.reopened.push(key(&id));
                    if let Some(run) = self.machine.run(&id)
                        && let Some(k) = &run.key
                    {
                        commit
                            .reopened
                            .push(super::super::machine::key_row(&run.flow, k));
                    }
                }
                Action::Put { key, value } => {
                    if key == crate::deploy::IN_USE_ROW {
                        self.pins.send_replace(self.machine.pins());
                    }
                    commit.state.push((key, Some(value)))
                }
                Action::End(run) => {
                    tracing::debug!(run = %id, flow = %run.flow, state = ?run.state, "run finished");
                    commit.state.push((key(&id), Some(record(&run))));
                    commit.runs.push(run.entry());
                    // Kept for `[retention] runs`, with the row of the
                    // idempotency key that started it.
                    commit.ended.push(key(&id));
                    if let Some(k) = &run.key {
                        commit
                            .ended
                            .push(super::super::machine::key_row(&run.flow, k));
                    }
                    // A child run answers its parent.
                    commit.events.extend(self.machine.end_reply(&run));
                    ended = Some(run.state);
                    self.ending.insert(id.clone(), *run);
                }
            }
        }
        if ended.is_none()
            && write
            && let Some(run) = self.machine.run(&id)
        {
            commit.state.push((key(&id), Some(record(run))));
            if checkpoint {
                commit.runs.push(run.entry());
            }
        }
        // A transition the log alone explains (a reply's, without a
        // record) sends commands that can be derived again from the
        // durable reply: they may go out before their own commit is
        // durable (`Commit::early`), which saves the steps a sync.
        commit.early = self.journal == Journal::Checkpoints && commit.state.is_empty();
        if self.telemetry.tracing()
            && let Some(run) = self.ending.get(&id).or_else(|| self.machine.run(&id))
        {
            super::super::traced::export(&self.telemetry, run, &commit.events, ended.is_some());
        }
        let tell = self.settled.clone();
        // A park: the run is let go of once this commit is durable.
        let then = match park {
            None => then,
            Some(token) => {
                let (run, tell) = (id.clone(), self.settled.clone());
                let parked: crate::broker::Then = Box::new(move |r| {
                    if r.is_ok() {
                        let _ = tell.send(Settled::Parked { run, token });
                    }
                    if let Some(then) = then {
                        then(r);
                    }
                });
                Some(parked)
            }
        };
        let then: crate::broker::Then = match (ended, then) {
            (Some(state), then) => Box::new(move |r| {
                log_failure(&r);
                let run = id;
                let stored = r.is_ok();
                let _ = tell.send(Settled::Ended { run, state, stored });
                if let Some(then) = then {
                    then(r);
                }
            }),
            (None, Some(then)) => then,
            (None, None) => Box::new(move |r| {
                log_failure(&r);
                if r.is_err() {
                    let _ = tell.send(Settled::Failed { run: id });
                }
            }),
        };
        self.broker.commit_then(commit, then);
    }
}

fn record(run: &RunRecord) -> Vec<u8> {
    serde_json::to_vec(run).expect("a run serialises")
}

pub(super) fn log_failure(r: &Result<(), BrokerError>) {
    if let Err(e) = r {
        tracing::warn!("orchestrator commit failed (the run is written again shortly): {e}");
    }
}
