//! Switching: a recorded deployment made current on this host, earlier
//! ones kept while runs are pinned to them, and the workers, routes and
//! flows brought in line.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{DeployError, Deployer, Held};
use crate::choreo::{Version, Versions, Wiring};
use crate::deploy::{Deployment, keep};
use crate::stats::StepStats;

/// What one step's workers are told after a change.
struct StepPlan {
    name: String,
    current: Option<Version>,
    held: BTreeMap<u64, Version>,
    /// The types it is routed (the current deployment's, if it consumes
    /// them by choreography there).
    kinds: Vec<String>,
}

impl Deployer {
    /// Make recorded deployment `d`, loaded as `held`, the current one.
    pub(super) async fn switch(&self, d: &Deployment, held: Held) -> Result<(), DeployError> {
        {
            let mut st = self.state.lock().expect("deployer lock");
            st.ledger.recorded(d.clone());
            if st.flows.by_deployment.is_empty() {
                // The first switch: every recorded deployment's flows (runs
                // in flight may be pinned to any).
                let all: Vec<Deployment> = st.ledger.all().cloned().collect();
                for e in &all {
                    self.add_flows(&mut st.flows, e);
                }
            }
            self.add_flows(&mut st.flows, d);
            st.flows.current = d.number;
            st.loaded.insert(d.number, held);
            st.current = d.number;
            st.unready = None;
        }
        self.rewire().await?;
        self.prune();
        Ok(())
    }

    /// Parse `d`'s flows into `flows` (a deployment whose flows no longer
    /// parse, recorded by another version of Troupe, is logged and passed).
    fn add_flows(&self, flows: &mut crate::orchestrator::FlowSets, d: &Deployment) {
        if flows.by_deployment.contains_key(&d.number) {
            return;
        }
        match super::read::flows_of(d, &self.dir) {
            Ok(f) => flows.insert(d.number, f),
            Err(e) => tracing::error!(deployment = d.number, "its flows cannot be read: {e}"),
        }
    }

    /// Keep deployment `k`, loaded as `held` (a run is pinned to it).
    pub(super) fn hold(&self, k: u64, held: Held) {
        {
            let mut st = self.state.lock().expect("deployer lock");
            st.loaded.insert(k, held);
        }
        self.set_versions();
    }

    /// Each step's plan, from the state.
    fn plans(&self) -> Vec<StepPlan> {
        let st = self.state.lock().expect("deployer lock");
        let mut names: BTreeSet<&String> = BTreeSet::new();
        for h in st.loaded.values() {
            names.extend(h.steps.keys());
        }
        let cur = st.loaded.get(&st.current);
        names
            .into_iter()
            .map(|name| {
                let version = |n: u64, h: &Held| {
                    h.steps.get(name).map(|s| Version {
                        deployment: n,
                        step: s.clone(),
                    })
                };
                let current = cur.and_then(|h| version(st.current, h));
                let held = st
                    .loaded
                    .iter()
                    .filter_map(|(n, h)| Some((*n, version(*n, h)?)))
                    .collect();
                let kinds = current
                    .as_ref()
                    .filter(|v| v.step.choreography)
                    .map(|v| v.step.contract.consumed_kinds())
                    .unwrap_or_default();
                StepPlan {
                    name: name.clone(),
                    current,
                    held,
                    kinds,
                }
            })
            .collect()
    }

    /// Tell each step's workers its versions, and the door its steps.
    pub(super) fn set_versions(&self) {
        let plans = self.plans();
        let wired = self.wired.lock().expect("wired lock");
        for p in plans {
            if let Some(w) = wired.wirings.get(&p.name) {
                w.versions.set(p.current, p.held);
            }
        }
        let st = self.state.lock().expect("deployer lock");
        let door: Vec<_> = st
            .loaded
            .get(&st.current)
            .map(|h| h.steps.values().cloned().collect())
            .unwrap_or_default();
        *self.door.write().expect("door lock") = Arc::new(door);
    }

    /// Bring the workers, the routes and the orchestrator in line with
    /// the state: a step new to this host is subscribed and its workers
    /// started; each step gets its versions, then its routes; the
    /// orchestrator the flows.
    pub(super) async fn rewire(&self) -> Result<(), DeployError> {
        let plans = self.plans();
        for p in &plans {
            let exists = self
                .wired
                .lock()
                .expect("wired lock")
                .wirings
                .contains_key(&p.name);
            if exists {
                continue;
            }
            // Configured by the newest deployment that has it.
            let (retry, concurrency) = {
                let st = self.state.lock().expect("deployer lock");
                let cfg = st
                    .loaded
                    .values()
                    .rev()
                    .find_map(|h| h.app.steps.get(&p.name))
                    .expect("a held step is configured");
                (cfg.retry.clone(), cfg.concurrency())
            };
            let consumer = self.broker.subscribe(&p.name, &p.kinds, retry).await?;
            let v = p
                .current
                .clone()
                .or_else(|| p.held.values().next_back().cloned());
            let Some(v) = v else { continue };
            if let Some(r) = self.broker.kv_reader() {
                v.step.sandbox.set_state_reader(r);
            }
            let stats = Arc::new(StepStats::default());
            self.stats
                .lock()
                .expect("stats lock")
                .insert(p.name.clone(), stats.clone());
            let w = Arc::new(Wiring::new(
                Arc::new(Versions::one(v.deployment, v.step.clone())),
                &p.name,
                concurrency,
                consumer,
                self.broker.clone(),
                stats,
                &self.app_name,
                self.handle.clone(),
                self.telemetry.clone(),
            ));
            let mut wired = self.wired.lock().expect("wired lock");
            if wired.started {
                let threads = w.spawn().map_err(|e| {
                    DeployError::Invalid(format!("cannot start worker threads: {e}"))
                })?;
                wired.workers.extend(threads);
            }
            wired.wirings.insert(p.name.clone(), w);
        }
        // The state reader on every loaded step (a step's bucket reads go
        // through the broker).
        if let Some(r) = self.broker.kv_reader() {
            for p in &plans {
                for v in p.held.values() {
                    v.step.sandbox.set_state_reader(r.clone());
                }
            }
        }
        self.set_versions();
        for p in &plans {
            self.broker.route(&p.name, &p.kinds).await?;
        }
        if let Some(o) = self.orchestrator.get() {
            let flows = self.state.lock().expect("deployer lock").flows.clone();
            let awaited = flows.awaited();
            o.set_flows(flows);
            self.broker.route(crate::protocol::GROUP, &awaited).await?;
        }
        if let Some(s) = self.schedules.get() {
            let st = self.state.lock().expect("deployer lock");
            if let Some(held) = st.loaded.get(&st.current) {
                s.set(held.app.schedules.clone());
            }
        }
        Ok(())
    }

    /// Unload every deployment that is neither current nor pinned.
    pub(super) fn prune(&self) {
        let dropped: Vec<u64> = {
            let mut st = self.state.lock().expect("deployer lock");
            let pins: BTreeSet<u64> = st.pins_here.union(&st.pins_row).copied().collect();
            let keep = keep(Some(st.current), pins);
            let gone: Vec<u64> = st
                .loaded
                .keys()
                .filter(|k| !keep.contains(k))
                .copied()
                .collect();
            for k in &gone {
                st.loaded.remove(k);
            }
            gone
        };
        if !dropped.is_empty() {
            tracing::info!(deployments = ?dropped, "unloaded: no run is pinned to them any more");
            self.set_versions();
        }
    }

    /// The deployments the app's state row says runs are pinned to.
    pub(super) async fn read_pins_row(&self) -> Result<BTreeSet<u64>, DeployError> {
        Ok(self
            .broker
            .state_get(crate::deploy::IN_USE_ROW)
            .await?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default())
    }

    /// Take a new set of pins (`here`: from this host's orchestrator; else
    /// the state row), load what is pinned and not held, unload the rest.
    pub(super) async fn pins(&self, pins: BTreeSet<u64>, here: bool) {
        let missing: Vec<u64> = {
            let mut st = self.state.lock().expect("deployer lock");
            if here {
                st.pins_here = pins.clone();
            } else {
                st.pins_row = pins.clone();
            }
            pins.iter()
                .filter(|k| !st.loaded.contains_key(k))
                .copied()
                .collect()
        };
        for k in missing {
            if let Err(e) = self.ensure_loaded(k).await {
                tracing::error!(deployment = k, "runs are pinned to it, but {e}");
            }
        }
        self.prune();
    }
}
