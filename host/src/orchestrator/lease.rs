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
//! A holder that cannot renew stops driving before its lease can expire.
//!
//! The embedded broker serves one host and grants the lease at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};

use super::driver::{Driver, Journal};
use super::machine::Machine;
use super::run::{RunRecord, RunState};
use super::{GROUP, Inbox, InputCheck, Msg, StartError, Starting};
use crate::app::RetryPolicy;
use crate::broker::{Broker, BrokerError, Consumer};
use crate::flow::Flow;
use crate::shutdown::{Shutdown, Tasks};

/// The lease's name in the app's state.
const LEASE: &str = "orchestrator";
/// How long a lease lasts unless renewed.
pub const TTL: Duration = Duration::from_secs(6);
/// How often the holder renews it, and a standby tries for it.
pub const RENEW: Duration = Duration::from_secs(2);

/// Everything a host needs to drive the flows once it holds the lease.
pub(super) struct Lead {
    pub broker: Arc<dyn Broker>,
    pub flows: Arc<HashMap<String, Arc<Flow>>>,
    /// Event types hybrid steps wait for.
    pub awaited: Vec<String>,
    pub check_input: InputCheck,
    pub source: String,
    pub finished: broadcast::Sender<(String, RunState)>,
    /// This process, as the lease's holder.
    pub holder: String,
    pub load: Arc<super::Load>,
}

impl Lead {
    /// Drive the flows now if the lease is free, else stand by; either
    /// way until `tasks` stops.
    pub async fn start(self, rx: Inbox, tasks: &mut Tasks) -> Result<(), BrokerError> {
        let stop = tasks.shutdown();
        if self.broker.lease(LEASE, &self.holder, TTL).await? {
            let (driver, ended, consumer) = self.driver().await?;
            let lost = self.keep(stop.clone());
            tasks.spawn("orchestrator", driver.run(rx, ended, consumer, lost, stop));
        } else {
            tracing::info!(
                "another host of this app drives its flows; this one stands by to take over"
            );
            tasks.spawn("orchestrator standby", self.stand_by(rx, stop));
        }
        Ok(())
    }

    /// Subscribe the orchestrator's group and load the active runs (on a
    /// broker whose log is indexed by run, with the replies since their
    /// last checkpoint applied again).
    async fn driver(
        &self,
    ) -> Result<
        (
            Driver,
            tokio::sync::mpsc::UnboundedReceiver<(String, RunState, bool)>,
            Arc<dyn Consumer>,
        ),
        BrokerError,
    > {
        let consumer = self
            .broker
            .subscribe(GROUP, &self.awaited, RetryPolicy::default())
            .await?;
        let journal = if self.broker.indexed_trace() {
            Journal::Checkpoints
        } else {
            Journal::EveryTransition
        };
        let mut machine = Machine::new(
            self.flows.clone(),
            self.source.clone(),
            self.broker.max_state_bytes(),
            self.check_input.clone(),
            self.load.limit,
        );
        for (_, v) in self.broker.state_scan("run/").await? {
            match serde_json::from_slice::<RunRecord>(&v) {
                Ok(r) if !r.state.is_final() => {
                    let id = r.id.clone();
                    machine.load(r);
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
        let (driver, ended) = Driver::new(
            machine,
            self.broker.clone(),
            journal,
            self.finished.clone(),
            self.load.clone(),
        );
        Ok((driver, ended, consumer))
    }

    /// Renew the lease every [`RENEW`]; the receiver turns `true` when it
    /// is lost (taken by another host, or not renewed for too long).
    fn keep(&self, mut stop: Shutdown) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        let (broker, holder) = (self.broker.clone(), self.holder.clone());
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
                match broker.lease(LEASE, &holder, TTL).await {
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

    async fn stand_by(self, mut rx: Inbox, mut stop: Shutdown) {
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
                    None => return,
                },
                Some(msg) = rx.queries.recv() => standby(msg),
                _ = stop.recv() => return,
                _ = tick.tick() => match self.broker.lease(LEASE, &self.holder, TTL).await {
                    Ok(true) => match self.driver().await {
                        Ok((driver, ended, consumer)) => {
                            tracing::info!(runs = driver.active(), "took over the app's flows");
                            let lost = self.keep(stop.clone());
                            return driver.run(rx, ended, consumer, lost, stop).await;
                        }
                        Err(e) => tracing::error!("cannot take over the app's flows: {e}"),
                    },
                    Ok(false) => {}
                    Err(e) => tracing::warn!("cannot reach the broker for the orchestrator lease: {e}"),
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
