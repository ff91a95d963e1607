//! The task that carries out the machine's decisions (`machine/`): it
//! feeds the machine starts, replies and timers with the time, and turns
//! each [`Transition`] into one broker commit: the delivery's ack, the
//! commands, the run's record when the transition needs it, state rows.
//!
//! Where the broker's log can be read back by run cheaply (the embedded
//! store, [`Journal::Checkpoints`]), a transition caused by a step's reply
//! does not write the run's record: the reply is already in the log, and
//! after a crash [`Machine::replay`] applies it again to the last record
//! written. Every other transition writes the record. Live status is
//! served from memory.
//!
//! The task wakes for a start, a status query (on a channel of its own, so
//! it never waits behind queued starts), a reply, a settled final record,
//! or a timer; a wake-up for a start or a reply also takes what else is
//! waiting on that channel (up to [`BATCH`]), so under load the loop's
//! own cost is paid once per batch, not per message.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::control::{self, Ask, Control};
use super::flows::FlowSets;
use super::machine::{Action, Machine, Start, Started, Transition};
use super::run::{RunRecord, RunState, key};
use super::timers::Timers;

mod child;
mod commit;
mod parked;

use super::{Inbox, Msg, StartError, Starting, now_ms};
use crate::broker::{Broker, BrokerError, Commit, Consumer, Delivery};
use commit::log_failure;

/// What became of a commit, when the driver must act on it.
pub(super) enum Settled {
    /// A run's final record: stored or not.
    Ended {
        run: String,
        state: RunState,
        stored: bool,
    },
    /// A commit of an active run failed: nothing of it was stored.
    Failed { run: String },
    /// An active run was written again ([`Driver::on_resync`]).
    Resynced { run: String },
    /// A run's start could not be stored (its producer was told).
    StartFailed { run: String },
    /// A run's record, read for a control of a run the machine does not
    /// hold (`None`: no such run).
    Loaded {
        delivery: Delivery,
        control: Control,
        run: Option<Box<RunRecord>>,
    },
    /// A park's commit is durable: the run may be let go of.
    Parked { run: String, token: u64 },
    /// A parked run's record, read back (`Ok(None)`: not in the store).
    ReadBack {
        run: String,
        record: Result<Option<Box<RunRecord>>, String>,
    },
}

/// The first wait before a run whose commit failed is written again; it
/// doubles with each failure, up to [`RESYNC_MAX`].
const RESYNC_FIRST: Duration = Duration::from_millis(200);
const RESYNC_MAX: Duration = Duration::from_secs(5);

/// The most messages of one kind handled per wake-up of the driver.
const BATCH: usize = 64;

/// When the driver writes a run's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Journal {
    /// At every transition (a broker whose log is not indexed by run).
    EveryTransition,
    /// At every transition but those a step's reply causes; after a
    /// crash, the replies in the log are applied again.
    Checkpoints,
}

pub(super) struct Driver {
    machine: Machine,
    broker: Arc<dyn Broker>,
    timers: Timers,
    journal: Journal,
    /// Runs that ended, until their final record is durable (so status
    /// never goes back to an older record meanwhile).
    ending: HashMap<String, RunRecord>,
    /// Told what became of commits the driver must follow up.
    settled: mpsc::UnboundedSender<Settled>,
    /// Runs whose commit failed, to write again: when (epoch ms) and how
    /// many times it failed.
    resync: HashMap<String, (u64, u32)>,
    finished: tokio::sync::broadcast::Sender<(String, RunState)>,
    /// The admission limit, and the gauges the driver keeps up to date.
    load: Arc<super::Load>,
    /// The flows of every deployment held (a deploy changes them).
    flows: watch::Receiver<FlowSets>,
    /// The deployments active runs are pinned to, for this host's
    /// deployer.
    pins: Arc<watch::Sender<BTreeSet<u64>>>,
    /// Where the runs' spans go (if anywhere).
    telemetry: crate::telemetry::Telemetry,
    /// Parked runs being read back.
    reading: std::collections::HashSet<String>,
    /// Control events that wait for a parked run to be read back, in
    /// the order they came.
    held: HashMap<String, Vec<Delivery>>,
    read_backs: Arc<tokio::sync::Semaphore>,
}

impl Driver {
    pub(super) fn new(
        machine: Machine,
        broker: Arc<dyn Broker>,
        journal: Journal,
        finished: tokio::sync::broadcast::Sender<(String, RunState)>,
        load: Arc<super::Load>,
        flows: watch::Receiver<FlowSets>,
        pins: Arc<watch::Sender<BTreeSet<u64>>>,
    ) -> (Driver, mpsc::UnboundedReceiver<Settled>) {
        let (settled, rx) = mpsc::unbounded_channel();
        let driver = Driver {
            machine,
            broker,
            timers: Timers::new(),
            journal,
            ending: HashMap::new(),
            settled,
            resync: HashMap::new(),
            finished,
            load,
            flows,
            pins,
            telemetry: crate::telemetry::Telemetry::off(),
            reading: Default::default(),
            held: HashMap::new(),
            read_backs: Arc::new(tokio::sync::Semaphore::new(parked::READ_BACKS)),
        };
        (driver, rx)
    }

    /// Export the runs' spans to `telemetry`.
    pub(super) fn export_to(&mut self, telemetry: crate::telemetry::Telemetry) {
        self.telemetry = telemetry;
    }

    /// Runs the machine holds.
    pub(super) fn active(&self) -> usize {
        self.machine.active()
    }

    /// Drive the runs until the handle is dropped, the broker closes,
    /// `lost` says this host no longer holds the orchestrator lease (the
    /// inbox is handed back, to stand by with), or `stop` says the host
    /// stops. What it committed is the broker's to settle; what it had
    /// not, the next driver recovers.
    pub(super) async fn run(
        mut self,
        mut inbox: Inbox,
        mut settled: mpsc::UnboundedReceiver<Settled>,
        consumer: Arc<dyn Consumer>,
        mut lost: watch::Receiver<bool>,
        mut stop: crate::shutdown::Shutdown,
    ) -> Option<Inbox> {
        self.recover();
        loop {
            self.load
                .active
                .store(self.machine.active(), Ordering::Relaxed);
            self.load
                .parked
                .store(self.machine.parked(), Ordering::Relaxed);
            let next = self
                .timers
                .next_at()
                .into_iter()
                .chain(self.resync.values().map(|(at, _)| *at))
                .filter(|&at| at != u64::MAX)
                .min();
            let sleep = async {
                match next {
                    Some(at) => {
                        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await
                    }
                    None => std::future::pending().await,
                }
            };
            // A woken branch takes what else is waiting on its channel
            // too (up to BATCH), rather than one message per wake-up.
            tokio::select! {
                msg = inbox.starts.recv() => match msg {
                    Some(msg) => {
                        self.on_msg(msg);
                        for _ in 0..BATCH {
                            let Ok(msg) = inbox.starts.try_recv() else { break };
                            self.on_msg(msg);
                        }
                    }
                    None => return None,
                },
                Some(msg) = inbox.queries.recv() => self.on_msg(msg),
                Some(s) = settled.recv() => self.on_settled(s),
                d = consumer.next() => match d {
                    Some(d) => {
                        self.on_delivery(d);
                        for _ in 0..BATCH {
                            let Some(Some(d)) = consumer.next().now_or_never() else { break };
                            self.on_delivery(d);
                        }
                    }
                    None => return None,
                },
                _ = sleep => {
                    self.on_timers();
                    self.on_resync();
                }
                Ok(()) = self.flows.changed() => {
                    let flows = self.flows.borrow_and_update().clone();
                    self.machine.set_flows(flows);
                }
                _ = lost.changed() => if *lost.borrow() {
                    return Some(inbox);
                },
                _ = stop.recv() => {
                    tracing::debug!(active = self.machine.active(), "the orchestrator stops");
                    return None;
                }
            }
        }
    }

    /// Take up the runs loaded into the machine (see [`Machine::recover`]).
    fn recover(&mut self) {
        let flows = self.flows.borrow_and_update().clone();
        self.machine.set_flows(flows);
        for t in self.machine.recover(now_ms()) {
            tracing::info!(run = %t.run, resent = t.sends().count(), "resuming run");
            self.commit(None, t, None);
        }
        let parked = self.machine.read_backs();
        if !parked.is_empty() {
            tracing::info!(
                runs = parked.len(),
                "sleeping runs left parked in the store"
            );
        }
        for (run, at) in parked {
            let machine = &self.machine;
            self.timers
                .arm(at, &run, "", |at, run, sid| machine.live(at, run, sid));
        }
        // Which deployments the runs are pinned to, as found: the row the
        // runs' commits keep, written whole once (it may lag a crash).
        let pins = self.machine.pins();
        let row = serde_json::to_vec(&pins).expect("a set of numbers serialises");
        let commit = Commit {
            state: vec![(crate::deploy::IN_USE_ROW.to_string(), Some(row))],
            ..Commit::default()
        };
        self.broker
            .commit_then(commit, Box::new(|r| log_failure(&r)));
        self.pins.send_replace(pins);
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Start(s) => self.start(s),
            Msg::Status { id, reply } => {
                let run = self.machine.run(&id).or_else(|| self.ending.get(&id));
                let _ = reply.send(run.cloned());
            }
        }
    }

    fn start(&mut self, s: Starting) {
        let Starting {
            flow,
            input,
            key,
            trace,
            reply,
        } = s;
        let start = Start {
            id: Uuid::now_v7().to_string(),
            flow,
            input,
            key,
            trace,
            parent: None,
            deployment: None,
        };
        match self.machine.start(start, now_ms()) {
            Ok(Started::New(t)) => {
                let id = t.run.clone();
                let settled = self.settled.clone();
                let then: crate::broker::Then = Box::new(move |r: Result<(), BrokerError>| {
                    if r.is_err() {
                        let run = id.clone();
                        let _ = settled.send(Settled::StartFailed { run });
                    }
                    let _ = reply.send(r.map(|()| (id, true)).map_err(StartError::from));
                });
                self.commit(None, t, Some(then));
            }
            Ok(Started::Existing(id)) => {
                // Answered once what is committed before is durable, the
                // start of that run among it (commits settle in order).
                let then: crate::broker::Then = Box::new(move |r: Result<(), BrokerError>| {
                    let _ = reply.send(r.map(|()| (id, false)).map_err(StartError::from));
                });
                self.broker.commit_then(Commit::default(), then);
            }
            Err(e) => {
                if matches!(e, StartError::Busy { .. }) {
                    self.load.refused.fetch_add(1, Ordering::Relaxed);
                }
                let _ = reply.send(Err(e));
            }
        }
    }

    fn on_delivery(&mut self, d: Delivery) {
        let ctl = control::read(&d.event);
        // A cancel or a signal for a parked run: it is read back first.
        if ctl.is_some() {
            let id = crate::protocol::run_of(&d.event).to_string();
            if self.machine.is_parked(&id) {
                return self.read_back(id, Some(d));
            }
        }
        // A redrive of a run that ended, a child run to start or to undo:
        // its record is read first (from memory if its final record is
        // still being written).
        if let Some(c @ (Control::Redrive(_) | Control::Child(_) | Control::Compensate(_))) = ctl {
            let id = crate::protocol::run_of(&d.event).to_string();
            if self.machine.run(&id).is_none() {
                match self.ending.get(&id) {
                    Some(run) => {
                        let run = Box::new(run.clone());
                        self.on_loaded(d, c, Some(run));
                    }
                    None => {
                        let (broker, tell) = (self.broker.clone(), self.settled.clone());
                        tokio::spawn(async move {
                            let run = match broker.state_get(&key(&id)).await {
                                Ok(v) => v.and_then(|v| serde_json::from_slice(&v).ok()),
                                Err(e) => {
                                    // Delivered again after the backoff.
                                    tracing::warn!(run = %id, "cannot read the run: {e}");
                                    return;
                                }
                            };
                            let _ = tell.send(Settled::Loaded {
                                delivery: d,
                                control: c,
                                run,
                            });
                        });
                    }
                }
                return;
            }
        }
        match self.machine.on_event(&d.event, now_ms()) {
            Some(t) => self.commit(Some(d), t, None),
            // A reply for a finished run (a late answer or a duplicate), or
            // an awaited event type from a cascade that is not a run: ack.
            None => self.broker.commit_then(
                Commit {
                    ack: Some(d),
                    ..Commit::default()
                },
                Box::new(|r| log_failure(&r)),
            ),
        }
    }

    /// A control of run `run` (as stored; not held by the machine).
    fn on_loaded(&mut self, d: Delivery, control: Control, run: Option<Box<RunRecord>>) {
        match control {
            Control::Redrive(ask) => self.redrive(d, ask, run),
            Control::Child(c) => self.start_child(d, *c, run),
            Control::Compensate(p) => self.compensate(d, p, run),
            // Only the three above are read first.
            Control::Cancel(_) | Control::Signal(_) => self.ack(d, Vec::new()),
        }
    }

    /// Ack `d` with `events` (answers), in one commit.
    fn ack(&mut self, d: Delivery, events: Vec<crate::event::Event>) {
        let commit = Commit {
            ack: Some(d),
            events,
            ..Commit::default()
        };
        self.broker
            .commit_then(commit, Box::new(|r| log_failure(&r)));
    }

    /// Redrive `run` as delivery `d` asks, or only ack it if the run
    /// cannot be (the API said why before it sent the request; a copy
    /// delivered again finds it done).
    fn redrive(&mut self, d: Delivery, ask: Ask, run: Option<Box<RunRecord>>) {
        let id = crate::protocol::run_of(&d.event).to_string();
        let outcome = match run {
            _ if self.machine.run(&id).is_some() => Err("it is running".to_string()),
            None => Err("no such run".to_string()),
            Some(run) => self.machine.redrive(*run, ask, &d.event.id, now_ms()),
        };
        match outcome {
            Ok(t) => {
                tracing::info!(run = %id, "redriven");
                // It goes on: no final record of it is to be written again.
                self.ending.remove(&id);
                self.resync.remove(&id);
                self.commit(Some(d), t, None);
            }
            Err(why) => {
                tracing::info!(run = %id, "not redriven: {why}");
                let ack = Commit {
                    ack: Some(d),
                    ..Commit::default()
                };
                self.broker.commit_then(ack, Box::new(|r| log_failure(&r)));
            }
        }
    }

    fn on_timers(&mut self) {
        let now = now_ms();
        while let Some((at, run, sid)) = self.timers.pop_due(now) {
            if self.machine.is_parked(&run) {
                if self.machine.live(at, &run, &sid) {
                    self.read_back(run, None);
                }
                continue;
            }
            if let Some(t) = self.machine.on_timer(at, &run, &sid, now) {
                self.commit(None, t, None);
            }
        }
    }

    fn on_settled(&mut self, s: Settled) {
        match s {
            Settled::Ended {
                run,
                state,
                stored: true,
            } => {
                self.ending.remove(&run);
                self.resync.remove(&run);
                let _ = self.finished.send((run, state));
            }
            // Kept in `ending` (status serves it) until written.
            Settled::Ended { run, .. } | Settled::Failed { run } => {
                let tries = self.resync.get(&run).map_or(0, |r| r.1) + 1;
                let wait = RESYNC_FIRST
                    .saturating_mul(1 << (tries - 1).min(8))
                    .min(RESYNC_MAX);
                self.resync
                    .insert(run, (now_ms() + wait.as_millis() as u64, tries));
            }
            Settled::Resynced { run } => {
                self.resync.remove(&run);
            }
            Settled::StartFailed { run } => {
                self.machine.forget(&run);
                self.ending.remove(&run);
                self.resync.remove(&run);
            }
            Settled::Loaded {
                delivery,
                control,
                run,
            } => self.on_loaded(delivery, control, run),
            Settled::Parked { run, token } => {
                if self.machine.evict(&run, token)
                    && let Some(at) = self.machine.read_back_at(&run)
                {
                    let machine = &self.machine;
                    self.timers
                        .arm(at, &run, "", |at, run, sid| machine.live(at, run, sid));
                }
            }
            Settled::ReadBack { run, record } => self.on_read_back(run, record),
        }
    }

    /// Write again the runs whose commit failed and whose wait is over:
    /// an active run's record and waiting commands, an ended run's final
    /// record. Nothing else is lost meanwhile: a reply whose commit failed
    /// is delivered again (and counted once), and the timers armed by a
    /// lost transition still stand.
    fn on_resync(&mut self) {
        let now = now_ms();
        let due: Vec<String> = self
            .resync
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(run, _)| run.clone())
            .collect();
        for run in due {
            // Cleared when this commit is stored; a new failure sets the
            // next, longer, wait from the count kept here.
            if let Some(r) = self.resync.get_mut(&run) {
                r.0 = u64::MAX;
            }
            let t = match self.ending.get(&run) {
                Some(ended) => Some(Transition::of(
                    &run,
                    vec![Action::End(Box::new(ended.clone()))],
                )),
                None => self.machine.resync(&run, now),
            };
            let Some(t) = t else {
                self.resync.remove(&run);
                continue;
            };
            // A final record says itself how it went (`Settled::Ended`).
            let then: Option<crate::broker::Then> = if self.ending.contains_key(&run) {
                None
            } else {
                let tell = self.settled.clone();
                Some(Box::new(move |r| {
                    log_failure(&r);
                    let _ = tell.send(match r {
                        Ok(()) => Settled::Resynced { run },
                        Err(_) => Settled::Failed { run },
                    });
                }))
            };
            self.commit(None, t, then);
        }
    }
}

/// The reply a start waits for: the run's id, and whether it is new.
pub(super) type StartReply = oneshot::Sender<Result<(String, bool), StartError>>;
