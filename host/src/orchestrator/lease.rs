//! Which host drives an app's flows.
//!
//! On a broker several hosts share (NATS), every host of an app runs its
//! steps, but **one host at a time drives its flows**: the one holding the
//! app's orchestrator lease, a key-value entry taken and renewed by
//! compare-and-set. The others stand by: they answer a start with
//! [`StartError::Standby`], serve run status (it is in the shared store),
//! and try for the lease every [`RENEW`]. When the holder dies its lease
//! runs out after [`TTL`]; a standby takes it, loads the active runs from
//! the store and drives them on (the replies the dead host held come back
//! to the orchestrator's shared consumer once their ack wait passes).
//! A holder that cannot renew stops driving before its lease can expire,
//! and stands by again: once it can take the lease back (no other host
//! took it), it drives again, from the store. [`Standing`] is what
//! `/readyz` and `/metrics` show of all this.
//!
//! The embedded broker serves one host and grants the lease at once.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch};

use super::driver::{Driver, Journal, Settled};
use super::flows::FlowSets;
use super::machine::Machine;
use super::run::{RunRecord, RunState};
use super::{GROUP, Inbox, Msg, StartError, Starting};
use crate::broker::{Broker, BrokerError, Consumer};
use crate::retry::RetryPolicy;
use crate::shutdown::{Shutdown, Tasks};

/// The lease's name in the app's state.
const LEASE: &str = "orchestrator";
/// How long a lease lasts unless renewed.
pub const TTL: Duration = Duration::from_secs(6);
/// How often the holder renews it, and a standby tries for it.
pub const RENEW: Duration = Duration::from_secs(2);

/// Where this host stands with the app's orchestrator lease.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Standing {
    /// Whether this host drives the app's flows now (else it stands by).
    pub driving: bool,
    /// Why the last attempt to take or renew the lease failed, while the
    /// attempts fail: the host cannot tell whether it may drive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_error: Option<String>,
    /// Times this host stopped driving because it lost the lease.
    pub lost: u64,
}

/// [`Standing`], shared between the lease's tasks and the API.
#[derive(Debug, Default)]
pub struct Shared(Mutex<Standing>);

impl Shared {
    pub fn get(&self) -> Standing {
        self.0.lock().expect("standing lock").clone()
    }

    fn update(&self, f: impl FnOnce(&mut Standing)) {
        f(&mut self.0.lock().expect("standing lock"));
    }

    /// The outcome of an attempt to take or renew the lease.
    fn attempt<T>(&self, r: &Result<T, BrokerError>) {
        self.update(|s| s.lease_error = r.as_ref().err().map(|e| e.to_string()));
    }
}

/// A driver ready to run: what [`Lead::driver`] makes once the lease is
/// this host's.
type Driving = (Driver, mpsc::UnboundedReceiver<Settled>, Arc<dyn Consumer>);

/// Everything a host needs to drive the flows once it holds the lease.
pub(super) struct Lead {
    pub broker: Arc<dyn Broker>,
    /// The flows of every deployment held, as deploys change them.
    pub flows: watch::Receiver<FlowSets>,
    /// The deployments active runs are pinned to, as the driver finds them.
    pub pins: Arc<watch::Sender<BTreeSet<u64>>>,
    pub source: String,
    pub finished: broadcast::Sender<(String, RunState)>,
    /// This process, as the lease's holder.
    pub holder: String,
    pub load: Arc<super::Load>,
    pub standing: Arc<Shared>,
    /// Where the runs' spans go.
    pub telemetry: crate::telemetry::Telemetry,
}

impl Lead {
    /// Drive the flows now if the lease is free, else stand by; either
    /// way until `tasks` stops. A broker that cannot be asked at all is
    /// an error here, at the host's start.
    pub async fn start(self, rx: Inbox, tasks: &mut Tasks) -> Result<(), BrokerError> {
        let stop = tasks.shutdown();
        let first = if self.broker.lease(LEASE, &self.holder, TTL).await? {
            Some(self.driver().await?)
        } else {
            tracing::info!(
                "another host of this app drives its flows; this one stands by to take over"
            );
            None
        };
        tasks.spawn("orchestrator", self.lead(rx, first, stop));
        Ok(())
    }

    /// Drive while this host holds the lease, stand by while it does not,
    /// for as long as the host runs.
    async fn lead(self, mut rx: Inbox, mut first: Option<Driving>, stop: Shutdown) {
        loop {
            let (driver, ended, consumer) = match first.take() {
                Some(d) => d,
                None => match self.stand_by(&mut rx, stop.clone()).await {
                    Some(d) => d,
                    None => return,
                },
            };
            self.standing.update(|s| s.driving = true);
            let lost = self.keep(stop.clone());
            match driver.run(rx, ended, consumer, lost, stop.clone()).await {
                Some(back) => {
                    rx = back;
                    self.broker.unsubscribe(GROUP);
                    self.load
                        .active
                        .store(0, std::sync::atomic::Ordering::Relaxed);
                    self.standing.update(|s| {
                        s.driving = false;
                        s.lost += 1;
                    });
                }
                None => return,
            }
        }
    }

    /// Subscribe the orchestrator's group and load the active runs (on a
    /// broker whose log is indexed by run, with the replies since their
    /// last checkpoint applied again).
    async fn driver(&self) -> Result<Driving, BrokerError> {
        let awaited = self.flows.borrow().awaited();
        let consumer = self
            .broker
            .subscribe(GROUP, &awaited, RetryPolicy::default())
            .await?;
        let journal = if self.broker.indexed_trace() {
            Journal::Checkpoints
        } else {
            Journal::EveryTransition
        };
        let mut machine = Machine::new(
            self.flows.borrow().clone(),
            self.source.clone(),
            self.broker.max_state_bytes(),
            self.load.limit,
        );
        machine.set_park_after(self.load.park_after_ms);
        for (_, v) in self.broker.state_scan("run/").await? {
            match serde_json::from_slice::<RunRecord>(&v) {
                Ok(r) if !r.state.is_final() => {
                    let id = r.id.clone();
                    machine.load(r);
                    // Asleep until later: let go of at once (see
                    // `machine/park.rs`).
                    if machine.park_loaded(&id, super::now_ms()) {
                        continue;
                    }
                    if journal == Journal::Checkpoints {
                        let log = self.broker.trace(&id).await?;
                        let replies = machine.replay(&id, &log);
                        tracing::debug!(run = %id, replies, "replayed the run's replies onto its checkpoint");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!("unreadable run record: {e}"),
            }
        }
        let (mut driver, ended) = Driver::new(
            machine,
            self.broker.clone(),
            journal,
            self.finished.clone(),
            self.load.clone(),
            self.flows.clone(),
            self.pins.clone(),
        );
        driver.export_to(self.telemetry.clone());
        Ok((driver, ended, consumer))
    }

    /// Renew the lease every [`RENEW`]; the receiver turns `true` when it
    /// is lost (taken by another host, or not renewed for too long).
    fn keep(&self, mut stop: Shutdown) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        let (broker, holder) = (self.broker.clone(), self.holder.clone());
        let standing = self.standing.clone();
        tokio::spawn(async move {
            let mut renewed = Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(RENEW) => {}
                    _ = stop.recv() => return,
                }
                if tx.is_closed() {
                    return; // the driver is gone
                }
                let r = broker.lease(LEASE, &holder, TTL).await;
                standing.attempt(&r);
                match r {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => break,
                    // Stop before the lease can expire under us.
                    Err(e) if renewed.elapsed() + RENEW < TTL - RENEW => {
                        tracing::warn!("cannot renew the orchestrator lease ({e}); retrying");
                    }
                    Err(e) => {
                        tracing::error!("cannot renew the orchestrator lease: {e}");
                        break;
                    }
                }
            }
            tracing::error!(
                "this host no longer holds the orchestrator lease: it stops driving flows"
            );
            let _ = tx.send(true);
        });
        rx
    }

    /// Answer starts with [`StartError::Standby`] and try for the lease
    /// every [`RENEW`]; the driver, once this host holds it. `None` when
    /// the host stops.
    async fn stand_by(&self, rx: &mut Inbox, mut stop: Shutdown) -> Option<Driving> {
        let mut tick = tokio::time::interval(RENEW);
        let standby = |msg| match msg {
            Msg::Start(Starting { reply, .. }) => {
                let _ = reply.send(Err(StartError::Standby));
            }
            Msg::Status { reply, .. } => {
                let _ = reply.send(None);
            }
        };
        loop {
            tokio::select! {
                msg = rx.starts.recv() => match msg {
                    Some(msg) => standby(msg),
                    None => return None,
                },
                Some(msg) = rx.queries.recv() => standby(msg),
                _ = stop.recv() => return None,
                _ = tick.tick() => {
                    let r = self.broker.lease(LEASE, &self.holder, TTL).await;
                    self.standing.attempt(&r);
                    match r {
                        Ok(true) => match self.driver().await {
                            Ok(d) => {
                                tracing::info!(runs = d.0.active(), "took over the app's flows");
                                return Some(d);
                            }
                            Err(e) => {
                                tracing::error!("cannot take over the app's flows: {e}");
                                self.standing.update(|s| s.lease_error = Some(e.to_string()));
                            }
                        },
                        Ok(false) => {}
                        Err(e) => tracing::warn!("cannot reach the broker for the orchestrator lease: {e}"),
                    }
                },
            }
        }
    }
}

/// This process as a lease holder: unique per process.
pub(super) fn holder() -> String {
    format!(
        "pid {} {}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}
