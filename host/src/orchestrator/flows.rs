//! The flows of every deployment. A run is driven by the flow of the
//! deployment it started on, to its end; new runs start on the current
//! deployment's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::flow::{Action, Flow};

/// One deployment's flows, by name.
pub type Flows = Arc<HashMap<String, Arc<Flow>>>;

/// The flows of the deployments the orchestrator may drive runs of.
#[derive(Clone, Default)]
pub struct FlowSets {
    /// The deployment new runs start on.
    pub current: u64,
    pub by_deployment: BTreeMap<u64, Flows>,
}

impl FlowSets {
    /// `flows` as deployment `n`, the current one.
    pub fn one(n: u64, flows: Vec<Flow>) -> FlowSets {
        let mut sets = FlowSets::default();
        sets.insert(n, flows);
        sets.current = n;
        sets
    }

    /// Add deployment `n`'s flows.
    pub fn insert(&mut self, n: u64, flows: Vec<Flow>) {
        let flows = flows
            .into_iter()
            .map(|f| (f.name.clone(), Arc::new(f)))
            .collect();
        self.by_deployment.insert(n, Arc::new(flows));
    }

    /// The flows of deployment `n` (`None`: the current one).
    pub fn of(&self, n: Option<u64>) -> Option<&Flows> {
        self.by_deployment.get(&n.unwrap_or(self.current))
    }

    /// Flow `name` of deployment `n` (`None`: the current one).
    pub fn flow(&self, n: Option<u64>, name: &str) -> Option<&Arc<Flow>> {
        self.of(n)?.get(name)
    }

    /// The event types the hybrid steps of every deployment's flows wait
    /// for: the orchestrator's group subscribes to them.
    pub fn awaited(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .by_deployment
            .values()
            .flat_map(|fs| fs.values())
            .flat_map(|f| &f.steps)
            .flat_map(|s| match &s.action {
                Action::Hybrid { done, failed, .. } => {
                    let mut v = vec![done.clone()];
                    v.extend(failed.clone());
                    v
                }
                Action::Command { .. }
                | Action::Signal { .. }
                | Action::Sleep(_)
                | Action::Child { .. } => Vec::new(),
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}
