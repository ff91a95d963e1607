//! The versions of one step a host holds: the current deployment's, which
//! takes new work (events by type, commands of runs started now), and
//! those of earlier deployments that runs in flight are pinned to.
//!
//! A worker picks the version for each delivery as it takes it
//! ([`Versions::pick`]) and keeps it to the end of that delivery: a
//! deploy switches a step **at message boundaries**, and an invocation in
//! flight finishes on the instance it started on.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::event::Event;
use crate::runtime::step::LoadedStep;

/// One version of a step: the deployment it belongs to and its loaded
/// component (shared by every deployment with the same component and
/// configuration).
#[derive(Clone)]
pub struct Version {
    pub deployment: u64,
    pub step: Arc<LoadedStep>,
}

/// What a delivery is handled by.
pub enum Pick {
    Version(Version),
    /// A command pinned to deployment `.0`, which this host does not hold.
    NotHere(u64),
    /// An event for the current deployment, which has no such step (it was
    /// removed) or which this host could not load.
    NoCurrent,
}

/// The versions of one step.
#[derive(Default)]
pub struct Versions {
    table: RwLock<Table>,
}

#[derive(Default, Clone)]
struct Table {
    current: Option<Version>,
    /// Every deployment held, the current one too.
    held: BTreeMap<u64, Version>,
}

impl Versions {
    /// A step held in one deployment, the current one.
    pub fn one(deployment: u64, step: Arc<LoadedStep>) -> Versions {
        let v = Version { deployment, step };
        Versions {
            table: RwLock::new(Table {
                current: Some(v.clone()),
                held: [(deployment, v)].into(),
            }),
        }
    }

    /// Switch: `current` takes new work from now on; `held` are the
    /// versions of every deployment kept (the current one's included).
    pub fn set(&self, current: Option<Version>, held: BTreeMap<u64, Version>) {
        *self.table.write().expect("versions lock") = Table { current, held };
    }

    /// The version that handles `event`: a command pinned to a deployment
    /// is that deployment's, anything else the current one's.
    pub fn pick(&self, event: &Event) -> Pick {
        let t = self.table.read().expect("versions lock");
        match crate::protocol::pinned_to(event) {
            Some(n) => match t.held.get(&n) {
                Some(v) => Pick::Version(v.clone()),
                None => Pick::NotHere(n),
            },
            None => match &t.current {
                Some(v) => Pick::Version(v.clone()),
                None => Pick::NoCurrent,
            },
        }
    }

    /// The current version, if this host has one.
    pub fn current(&self) -> Option<Version> {
        self.table.read().expect("versions lock").current.clone()
    }

    /// Any version held (the current one first): for what does not depend
    /// on the version (the worker's configuration).
    pub fn any(&self) -> Option<Version> {
        let t = self.table.read().expect("versions lock");
        t.current
            .clone()
            .or_else(|| t.held.values().next_back().cloned())
    }
}
