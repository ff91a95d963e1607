//! Parked runs: a run that only sleeps (every step it waits on is a sleep
//! step, nothing is in flight) is written to the store and let go of, so
//! that a sleeping run holds no more of the host than its wake-up time.
//! Part of [`Machine`].
//!
//! A transition that leaves a run idle until a wake-up more than
//! `park_after_ms` away (default [`PARK_AFTER_MS`]) carries [`Action::Park`] (with the record's
//! checkpoint): once that commit is durable, the driver hands the token
//! back ([`Machine::evict`]), and the run is let go of if nothing touched
//! it since. What the machine keeps of it: its id and the time it is to be
//! taken up again, [`PARK_LEAD_MS`] before it wakes (the driver reads its
//! record back then, [`Machine::unpark`], so it wakes on time). A control
//! event for a parked run (a cancel, a signal) is held by the driver until
//! the run is read back. A parked run stays pinned to its deployment, and
//! does not count against `max_active_runs`: it is not active in the
//! host, only in the store.
//!
//! **A run is let go of only once its record, as the machine holds it, is
//! durable**: the token of a park is the last change to the run; any later
//! transition takes a new one (or none), and an old token evicts nothing.

use super::{Action, Machine, Transition};
use crate::orchestrator::run::{RunRecord, RunState, StepState};

/// What the machine keeps of a parked run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Parked {
    /// When to read it back (epoch ms): [`PARK_LEAD_MS`] before it wakes.
    pub read_back: u64,
    /// The deployment it is pinned to.
    pub deployment: Option<u64>,
}

/// The least time to a wake-up for which a run is parked, ms (the
/// default of `[orchestrator] park_after_ms`).
pub(crate) const PARK_AFTER_MS: u64 = 2_000;
/// How long before its wake-up a parked run is read back, ms.
pub(crate) const PARK_LEAD_MS: u64 = 500;

impl Machine {
    /// Park runs asleep until at least `ms` ahead (`[orchestrator]
    /// park_after_ms`).
    pub fn set_park_after(&mut self, ms: u64) {
        self.park_after = ms;
    }

    /// When run `run_id` next needs the machine, if it is idle until then:
    /// running, nothing in flight or backing off, nothing to undo, and at
    /// least one step asleep. (Its deadline counts: it may come first.)
    pub(super) fn idle_until(&self, run_id: &str) -> Option<u64> {
        let run = self.runs.get(run_id)?;
        if run.state != RunState::Running || !run.undo.is_empty() {
            return None;
        }
        let mut wake = None::<u64>;
        for rec in run.steps.values() {
            match rec.state {
                StepState::Dispatched | StepState::Backoff => return None,
                StepState::Sleeping => {
                    let at = rec.deadline_ms?;
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                }
                _ => {}
            }
        }
        wake.map(|w| w.min(run.deadline_ms))
    }

    /// At the end of a transition `t` of an active run: park the run if
    /// it is idle long enough (a checkpoint, and a token for the driver to
    /// hand back), else forget any park of it that is under way.
    pub(super) fn park_if_idle(&mut self, t: &mut Transition, now: u64) {
        let id = t.run.clone();
        match self.idle_until(&id) {
            Some(wake) if wake >= now + self.park_after => {
                self.park_tokens += 1;
                let token = self.park_tokens;
                self.parking.insert(id, token);
                if !t.checkpoint() {
                    t.actions.push(Action::Checkpoint);
                }
                t.actions.push(Action::Park { token });
            }
            _ => {
                self.parking.remove(&id);
            }
        }
    }

    /// The commit of park `token` of run `run_id` is durable: let the run
    /// go, keeping its wake-up time, if that park is still its latest
    /// change. Whether it was let go of.
    pub fn evict(&mut self, run_id: &str, token: u64) -> bool {
        if self.parking.get(run_id) != Some(&token) {
            return false;
        }
        self.parking.remove(run_id);
        self.let_go(run_id)
    }

    /// Let run `run_id` go if it is idle: its record, as held, must be
    /// the one stored.
    fn let_go(&mut self, run_id: &str) -> bool {
        let Some(wake) = self.idle_until(run_id) else {
            return false;
        };
        let run = self.runs.remove(run_id).expect("idle, so held");
        self.drop_elements(run_id);
        if let Some(k) = &run.key {
            // Its start is durable: the key's row answers for it.
            self.keys.remove(&super::key_row(&run.flow, k));
        }
        // Still pinned: its deployment must stay loaded.
        let parked = Parked {
            read_back: wake.saturating_sub(PARK_LEAD_MS).max(1),
            deployment: run.deployment,
        };
        self.parked.insert(run.id, parked);
        true
    }

    /// After a restart: park run `run_id`, just loaded as stored, if it
    /// is idle long enough. Nothing in the log is to be replayed onto a
    /// run stored idle: with no command out, every reply of it in the log
    /// is one it had already. Its read-back timer is the driver's to arm
    /// ([`Machine::read_backs`]).
    pub fn park_loaded(&mut self, run_id: &str, now: u64) -> bool {
        match self.idle_until(run_id) {
            Some(wake) if wake >= now + self.park_after => self.let_go(run_id),
            _ => false,
        }
    }

    /// Whether run `run_id` is parked (in the store, not held).
    pub fn is_parked(&self, run_id: &str) -> bool {
        self.parked.contains_key(run_id)
    }

    /// How many runs are parked.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// When parked run `run_id` is to be read back (epoch ms).
    pub fn read_back_at(&self, run_id: &str) -> Option<u64> {
        self.parked.get(run_id).map(|p| p.read_back)
    }

    /// Every parked run and when it is to be read back: the timers a
    /// driver arms when it takes the runs up.
    pub fn read_backs(&self) -> Vec<(String, u64)> {
        self.parked
            .iter()
            .map(|(id, p)| (id.clone(), p.read_back))
            .collect()
    }

    /// Take back parked run `run`, as read from the store: its timers are
    /// armed again (its wake-up fires at its time, or at once if that has
    /// passed). `None` if it was not parked (it was taken back already).
    pub fn unpark(&mut self, run: RunRecord) -> Option<Transition> {
        self.parked.remove(&run.id)?;
        let mut t = Transition::new(&run.id);
        t.arm(run.deadline_ms, "");
        for (sid, rec) in &run.steps {
            if let Some(at) = rec.deadline_ms {
                t.arm(at, sid);
            }
        }
        if let Some(k) = &run.key {
            self.keys
                .insert(super::key_row(&run.flow, k), run.id.clone());
        }
        // Pinned all along: not pinned again.
        self.runs.insert(run.id.clone(), run);
        Some(t)
    }

    /// Parked run `run_id` could not be read back (the store failed):
    /// try again at `at`. The new time, if it is still parked.
    pub fn defer_read_back(&mut self, run_id: &str, at: u64) -> Option<u64> {
        let p = self.parked.get_mut(run_id)?;
        p.read_back = at;
        Some(at)
    }

    /// A parked run read back is gone from the store, or unreadable: it
    /// is no longer waited for (what ended it, if anything, said so).
    pub fn forget_parked(&mut self, run_id: &str) {
        if let Some(p) = self.parked.remove(run_id) {
            self.unpin(p.deployment);
        }
    }
}
