//! What the machine hands the driver: a [`Transition`] per decision, a
//! list of [`Action`]s for one run; and what a start is asked with and
//! came to.

use serde_json::Value;

use crate::event::Event;
use crate::orchestrator::run::{RunRecord, RunState};

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
    /// Once this commit is durable, hand `token` back to the machine
    /// ([`super::Machine::evict`]): the run sleeps, and may be let go of.
    Park { token: u64 },
    /// The run had ended and goes on (a redrive): its record, and the
    /// row of the key that started it, are no longer to be pruned.
    Reopen,
}

/// One decision: what happened to one run.
#[derive(Debug)]
pub(crate) struct Transition {
    pub run: String,
    pub actions: Vec<Action>,
    /// The run's state before the transition, when it was taken: a
    /// transition that changes it writes the record (the run index lists
    /// runs by state).
    pub(super) was: Option<RunState>,
}

impl Transition {
    pub(super) fn new(run: &str) -> Transition {
        Transition {
            run: run.to_string(),
            actions: Vec::new(),
            was: None,
        }
    }

    /// A transition of run `run` made of `actions`.
    pub fn of(run: &str, actions: Vec<Action>) -> Transition {
        Transition {
            actions,
            ..Transition::new(run)
        }
    }

    pub(super) fn send(&mut self, e: Event) {
        self.actions.push(Action::Send(e));
    }

    pub(super) fn arm(&mut self, at: u64, sid: &str) {
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
    /// The `traceparent` of the request that asked.
    pub trace: Option<String>,
    /// A child run: the parent it answers.
    pub parent: Option<crate::orchestrator::run::Parent>,
    /// A child run: its parent's deployment (the current one otherwise).
    pub deployment: Option<u64>,
}

impl Start {
    /// The start of child run `id` that control `c` asks for, in the
    /// trace `trace` (the start event's).
    pub fn child(
        id: String,
        c: crate::orchestrator::control::Child,
        trace: Option<String>,
    ) -> Start {
        Start {
            id,
            flow: c.flow,
            input: c.input,
            key: None,
            trace,
            parent: Some(c.parent),
            deployment: c.deployment,
        }
    }
}

/// What a start came to.
#[derive(Debug)]
pub(crate) enum Started {
    /// A new run; the transition records it and sends its first commands.
    New(Transition),
    /// A run this key started, still active: its id.
    Existing(String),
}
