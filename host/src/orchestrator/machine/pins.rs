//! Which deployments active runs are pinned to: counted as runs start,
//! load and end, and written (`deploys-in-use`) in the commit that changes
//! the set, for the hosts that must keep those deployments loaded. Part of
//! [`Machine`].

use std::collections::BTreeSet;

use super::{Action, FlowSets, Machine};

impl Machine {
    /// A deploy: new runs start on `flows.current` from now on; runs in
    /// flight keep the flows of their own deployments (which `flows` must
    /// still hold).
    pub fn set_flows(&mut self, flows: FlowSets) {
        self.flows = flows;
    }

    /// The deployments active runs are pinned to.
    pub fn pins(&self) -> BTreeSet<u64> {
        self.pinned.keys().copied().collect()
    }

    /// Count a run pinned to `d`; whether the set of pins grew.
    pub(super) fn pin(&mut self, d: Option<u64>) -> bool {
        let Some(d) = d else { return false };
        let n = self.pinned.entry(d).or_default();
        *n += 1;
        *n == 1
    }

    /// Count a run pinned to `d` gone; whether the set of pins shrank.
    pub(super) fn unpin(&mut self, d: Option<u64>) -> bool {
        let Some(d) = d else { return false };
        match self.pinned.get_mut(&d) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.pinned.remove(&d);
                true
            }
            None => false,
        }
    }

    /// The state row that says which deployments runs are pinned to, as
    /// of now: written in the commit that changes the set.
    pub(super) fn pins_row(&self) -> Action {
        Action::Put {
            key: crate::deploy::IN_USE_ROW.to_string(),
            value: serde_json::to_vec(&self.pins()).expect("a set of numbers serialises"),
        }
    }
}
