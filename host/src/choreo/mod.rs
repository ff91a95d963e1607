//! Choreography: feeding deliveries to a step and routing what it emits.
//!
//! Each step gets `concurrency` worker threads. A worker takes a delivery
//! from the step's consumer group, checks it against the step's contract,
//! runs the guest, checks every emitted event against the contract, stamps
//! the host-owned attributes on it (id, source, time, correlation,
//! causation, trace, schema) and hands the lot to the broker, which acks the
//! input and publishes the outputs together (for an orchestration command,
//! the outputs go back to the orchestrator in one reply instead). There is
//! no central controller: the broker's routing by event type is the whole
//! wiring.
//!
//! **The broker never waits on a guest**: guests run on these worker
//! threads, and the workers hand broker calls to the async runtime without
//! waiting for their commit (at most [`MAX_UNSETTLED`] per step), so a slow
//! fsync does not idle a worker and a slow guest does not hold a commit.
//!
//! A contract violation, in either direction, is never retried: the input
//! goes to the DLQ at once, classed `contract`, and an alert is raised: an
//! error log line, a counter, and a `troupe.alert.contract` event.
//!
//! Each outbound HTTP call a step made is recorded as a `troupe.http.call`
//! event under the event being handled: committed with the outcome when
//! the step succeeded, published after the retry or dead letter otherwise
//! (a crash in between loses the record, never the call's effect).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::broker::{Broker, BrokerError, Commit, Consumer, Delivery, Disposition, KvCommit};
use crate::contract::Violation;
use crate::event::{Emitted, Event, JSON};
use crate::kv::{InFlight, Refused, WRITE_EVENT, Writes};
use crate::protocol::{self, FailureClass};
use crate::runtime::outbound::calls::{CALL_EVENT, CallRecord};
use crate::runtime::step::Failure;
use crate::stats::StepStats;
use crate::telemetry::Telemetry;
use crate::world;

mod failure;
mod records;
mod traced;
pub mod versions;

use records::{stamped, stamped_for};
use traced::Traced;
pub use versions::{Pick, Version, Versions};

/// Broker calls a step's workers may have outstanding at once.
pub const MAX_UNSETTLED: usize = 4096;
/// Runs of one delivery whose state commit may be refused (what it read
/// changed) before it counts as a failure (`retry`, with backoff).
pub const MAX_RERUNS: u32 = 16;
/// The type of the alert raised for a contract violation.
pub const CONTRACT_ALERT: &str = "troupe.alert.contract";

/// What a step's workers share.
pub struct Wiring {
    /// The step's name (its consumer group).
    pub name: Arc<str>,
    /// Its versions: the current deployment's, and those runs are pinned
    /// to.
    pub versions: Arc<Versions>,
    pub consumer: Arc<dyn Consumer>,
    pub broker: Arc<dyn Broker>,
    pub stats: Arc<StepStats>,
    /// `source` of the events the step emits, `troupe://APP/step/NAME`.
    pub source: String,
    /// `source` of the host's own events (alerts).
    pub host_source: String,
    pub runtime: Handle,
    /// Where the spans of each delivery go (if anywhere).
    pub telemetry: Telemetry,
    /// Worker threads.
    concurrency: usize,
    unsettled: Arc<Semaphore>,
    /// Deliveries back from a refused state commit, for the workers to
    /// take before new ones.
    again: (async_channel::Sender<Again>, async_channel::Receiver<Again>),
    /// The keys the step's state commits in flight write.
    in_flight: Arc<InFlight>,
    /// Whether the workers take deliveries (not while this host cannot
    /// load the app's current deployment).
    gate: tokio::sync::watch::Sender<bool>,
}

/// A delivery back from its state commit.
enum Again {
    /// What its invocation read changed before the commit: run it again
    /// (this is its run number `runs + 1`).
    Run { d: Delivery, runs: u32 },
    /// The commit could not be made: fail it as `failure`.
    Fail {
        d: Delivery,
        failure: Failure,
        calls: Vec<Event>,
    },
}

impl Wiring {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        versions: Arc<Versions>,
        name: &str,
        concurrency: usize,
        consumer: Arc<dyn Consumer>,
        broker: Arc<dyn Broker>,
        stats: Arc<StepStats>,
        app: &str,
        runtime: Handle,
        telemetry: Telemetry,
    ) -> Wiring {
        Wiring {
            source: crate::event::source(app, &format!("step/{name}")),
            host_source: crate::event::source(app, "host"),
            name: name.into(),
            versions,
            consumer,
            broker,
            stats,
            runtime,
            telemetry,
            concurrency,
            unsettled: Arc::new(Semaphore::new(MAX_UNSETTLED)),
            again: async_channel::unbounded(),
            in_flight: Arc::default(),
            gate: tokio::sync::watch::Sender::new(true),
        }
    }

    /// Let the workers take deliveries, or stop them taking any (those in
    /// hand are finished).
    pub fn open(&self, open: bool) {
        if self.gate.send_replace(open) != open {
            self.consumer.pause(!open);
        }
    }

    /// Start the step's worker threads; they end when the broker closes.
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
        (0..self.concurrency)
            .map(|i| {
                let w = self.clone();
                std::thread::Builder::new()
                    .name(format!("step-{}-{i}", self.name))
                    .stack_size(crate::contract::CHECK_STACK)
                    .spawn(move || w.work())
            })
            .collect()
    }

    /// Wait until every broker call the workers started has finished.
    pub async fn drain(&self) {
        let _ = self.unsettled.acquire_many(MAX_UNSETTLED as u32).await;
    }

    fn work(&self) {
        let again = self.again.1.clone();
        let mut gate = self.gate.subscribe();
        loop {
            let next = self.runtime.block_on(async {
                // Closed: this host cannot serve the app's current
                // deployment, and takes nothing until it can.
                let _ = gate.wait_for(|open| *open).await;
                tokio::select! {
                    biased;
                    Ok(a) = again.recv() => Some(a),
                    d = self.consumer.next() => d.map(|d| Again::Run { d, runs: 0 }),
                }
            });
            match next {
                None => return,
                // Taken as the gate closed: for another member of the group.
                Some(Again::Run { d, runs: 0 }) if !*gate.borrow() => self.consumer.hand_back(d),
                Some(Again::Run { d, runs }) => self.run(d, runs),
                Some(Again::Fail { d, failure, calls }) => self.failed(d, failure, calls),
            }
        }
    }

    /// Handle one delivery, start to finish.
    pub fn process(&self, d: Delivery) {
        self.run(d, 0)
    }

    /// Run `d`'s invocation (run number `runs + 1`: a run whose state
    /// commit found what it read changed is run again at once, without
    /// counting against its retry budget, up to [`MAX_RERUNS`] runs).
    fn run(&self, mut d: Delivery, runs: u32) {
        let v = match self.versions.pick(&d.event) {
            Pick::Version(v) => v,
            Pick::NotHere(n) => {
                // The run's deployment is not loaded here: the
                // orchestrator retries the attempt (on NATS, perhaps on a
                // host that holds it).
                let f = Failure::new(
                    FailureClass::Retry,
                    format!(
                        "deployment {n} of step `{}` is not loaded on this host",
                        self.name
                    ),
                );
                return self.failed(d, f, Vec::new());
            }
            Pick::NoCurrent => {
                let f = Failure::new(
                    FailureClass::Rejected,
                    format!(
                        "step `{}` is not in the current deployment (replay it once a deployment \
                         has it)",
                        self.name
                    ),
                );
                return self.failed(d, f, Vec::new());
            }
        };
        // Which version handles it, for its dead letter if it comes to that.
        d.version = Some((v.deployment, v.step.digest.as_str().into()));
        let step = &v.step;
        let attempt = protocol::attempt_of(&d.event, d.attempt);
        let sampled = self.telemetry.tracing()
            && crate::telemetry::spans::trace_of(&d.event)
                .is_none_or(|c| self.telemetry.samples(c.trace));
        let mut traced = sampled.then(|| {
            Traced::begin(
                &self.telemetry,
                &d.event,
                &self.name,
                attempt,
                SystemTime::now(),
            )
        });
        if runs == 0
            && let Err(v) = step.contract.check_input(&d.event)
        {
            if let Some(t) = &mut traced {
                t.failed(FailureClass::Contract.as_str(), &v.to_string());
            }
            return self.violation(d, v, None, Vec::new());
        }
        // A command is started by its bound or not at all (the orchestrator
        // has given up on it, or soon will, and may have sent the next
        // attempt), and runs for its flow step's time at most.
        let bounds = protocol::command_bounds(&d.event);
        if let Some((start_by, _)) = bounds {
            let now = crate::clock::now_ms();
            if runs == 0 && now > start_by {
                let waited = format!(
                    "waited in the queue past its bound (the flow step's queue_timeout_ms) by {} \
                     ms: not run",
                    now - start_by
                );
                if let Some(t) = &mut traced {
                    t.failed(FailureClass::Timeout.as_str(), &waited);
                }
                return self.failed(d, Failure::new(FailureClass::Timeout, waited), Vec::new());
            }
        }
        let start = Instant::now();
        let started = traced.is_some().then(SystemTime::now);
        let handled = step.handle_within(&d.event, attempt, bounds.map(|(_, run)| run));
        StepStats::add(&self.stats.guest_micros, start.elapsed().as_micros() as u64);
        if let (Some(t), Some(started)) = (&mut traced, started) {
            let failure = match &handled.result {
                Err(Failure::Failed(f)) => Some(f),
                _ => None,
            };
            let version = (v.deployment, step.digest.as_str());
            t.invoked(
                &d.event,
                &self.name,
                attempt,
                version,
                started,
                &handled.calls,
                failure,
            );
        }
        let calls = self.call_events(&v, &d.event, attempt, handled.calls);
        match handled.result {
            Ok(emits) => self.completed(d, &v, emits, calls, start, handled.kv, runs, traced),
            Err(f) => self.failed(d, f, calls),
        }
    }

    /// The guest returned `emits`: gate them, stamp them, and commit them
    /// with the ack (or, for a command, reply with them) and the state it
    /// wrote (run number `runs + 1`).
    #[allow(clippy::too_many_arguments)]
    fn completed(
        &self,
        d: Delivery,
        v: &Version,
        emits: Vec<world::Emit>,
        calls: Vec<Event>,
        start: Instant,
        kv: Writes,
        runs: u32,
        mut traced: Option<Traced>,
    ) {
        let step = &v.step;
        let mut checked = Vec::with_capacity(emits.len());
        for e in emits {
            let ct = e.content_type.unwrap_or_else(|| JSON.to_string());
            let gate = step
                .contract
                .check_output(&e.kind, e.subject.as_deref(), &ct, &e.data);
            let declared = match gate {
                Ok(t) => t.urn.clone(),
                Err(v) => {
                    // The output itself, for `dlq show` (cleaned and cut:
                    // it is the guest's).
                    let rejected = crate::text::clean(&String::from_utf8_lossy(&e.data), 2048);
                    if let Some(t) = &mut traced {
                        t.failed(FailureClass::Contract.as_str(), &v.to_string());
                    }
                    return self.violation(d, v, Some(rejected), calls);
                }
            };
            checked.push(Emitted {
                kind: e.kind,
                subject: e.subject,
                content_type: Some(ct),
                data: e.data,
                schema: Some(declared),
            });
        }
        tracing::debug!(
            step = %step.name(),
            event = %d.event.id,
            "{} -> [{}] in {:.0?}",
            d.event.kind,
            checked.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>().join(", "),
            start.elapsed()
        );
        let emitted = checked.len() as u64;
        let mut out: Vec<Event> = if protocol::is_command(&d.event) {
            // A command: the output goes back to the orchestrator in the
            // reply, not into the choreography.
            vec![stamped(
                v,
                protocol::completed_reply(&d.event, &self.source, &checked),
            )]
        } else {
            checked
                .into_iter()
                .enumerate()
                .map(|(i, e)| stamped(v, d.event.caused(step.name(), &self.source, i, e)))
                .collect()
        };
        // What the broker cannot store must not be committed: it would
        // fail, and the input would be delivered again, forever.
        if let Some(Err(e)) = out
            .iter()
            .map(|e| self.broker.check_size(e))
            .find(Result::is_err)
        {
            if let Some(t) = &mut traced {
                t.failed(FailureClass::Limit.as_str(), &e.to_string());
            }
            return self.failed(d, Failure::new(FailureClass::Limit, e.to_string()), calls);
        }
        if let Some(t) = &mut traced {
            t.published(&out);
        }
        let failed = if protocol::is_command(&d.event) {
            "cannot reply to the orchestrator (the command will be redelivered)"
        } else {
            "cannot settle a delivery (it will be redelivered)"
        };
        if kv.is_empty() {
            StepStats::add(&self.stats.handled, 1);
            StepStats::add(&self.stats.emitted, emitted);
            // The reply (or the outputs) first: the records follow in the
            // same commit.
            out.extend(calls);
            return self.commit_ack(d, out, failed, traced);
        }
        // With state: an invocation that read what a commit in flight
        // writes would be refused; it waits for that commit and runs again.
        let Some(claimed) = self.in_flight.claim(&kv) else {
            self.in_flight.wait(&kv);
            StepStats::add(&self.stats.kv_conflicts, 1);
            if runs + 1 < MAX_RERUNS {
                return self.run(d, runs + 1);
            }
            let failure = Failure::new(
                FailureClass::Retry,
                format!("state it read kept changing before its commit ({MAX_RERUNS} runs)"),
            );
            return self.failed(d, failure, Vec::new());
        };
        // The commit's verdict decides: a refused one comes back to the
        // workers to run again (or, over a quota, to fail as `limit`); the
        // worker goes on meanwhile.
        let records = calls.clone();
        out.extend(calls);
        if !kv.writes.is_empty() {
            out.push(self.write_record(
                v,
                &d.event,
                protocol::attempt_of(&d.event, d.attempt),
                &kv,
            ));
        }
        let commit = Commit {
            ack: Some(d.clone()),
            events: out,
            kv: Some(KvCommit {
                writes: kv,
                limits: step.sandbox.config.limits.kv.clone(),
            }),
            ..Commit::default()
        };
        let permit = self.permit();
        let in_flight = self.in_flight.clone();
        let (again, stats, name) = (self.again.0.clone(), self.stats.clone(), self.name.clone());
        let writes = commit.kv.as_ref().map_or(0, |k| k.writes.writes.len());
        let sent = traced.is_some().then(SystemTime::now);
        self.broker.commit_then(
            commit,
            Box::new(move |r| {
                in_flight.release(claimed);
                if let (Some(t), Some(sent)) = (&mut traced, sent) {
                    let verdict = match &r {
                        Ok(()) => Ok(()),
                        Err(BrokerError::Refused(Refused::Conflict(_))) => Err("conflict"),
                        Err(BrokerError::Refused(Refused::Quota(_))) => Err("quota"),
                        Err(_) => Err("unavailable"),
                    };
                    t.committed(&name, writes, sent, verdict);
                }
                drop(traced);
                let back = match r {
                    Ok(()) => {
                        StepStats::add(&stats.handled, 1);
                        StepStats::add(&stats.emitted, emitted);
                        None
                    }
                    Err(BrokerError::Refused(Refused::Conflict(c))) => {
                        StepStats::add(&stats.kv_conflicts, 1);
                        tracing::debug!(step = %name, event = %d.event.id, "run again: {c}");
                        Some(if runs + 1 < MAX_RERUNS {
                            Again::Run { d, runs: runs + 1 }
                        } else {
                            let failure = Failure::new(
                                FailureClass::Retry,
                                format!(
                                    "state it read kept changing before its commit \
                                     ({MAX_RERUNS} runs; last: {c})"
                                ),
                            );
                            Again::Fail {
                                d,
                                failure,
                                calls: Vec::new(),
                            }
                        })
                    }
                    Err(BrokerError::Refused(Refused::Quota(q))) => Some(Again::Fail {
                        d,
                        failure: Failure::new(FailureClass::Limit, q),
                        calls: records,
                    }),
                    Err(e) => {
                        // The delivery stays unsettled: delivered again later.
                        tracing::error!(step = %name, "{failed}: {e}");
                        None
                    }
                };
                if let Some(a) = back {
                    // Closed only when the workers are gone: the delivery
                    // is still unsettled, and delivered again later.
                    let _ = again.try_send(a);
                }
                drop(permit);
            }),
        );
    }

    /// A slot for one more unsettled broker call, waiting while all
    /// [`MAX_UNSETTLED`] are taken.
    fn permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        let sem = self.unsettled.clone();
        sem.clone().try_acquire_owned().unwrap_or_else(|_| {
            self.runtime
                .block_on(sem.acquire_owned())
                .expect("the semaphore is never closed")
        })
    }

    /// Run a broker call on the async runtime without waiting for it; at
    /// most [`MAX_UNSETTLED`] at once per step (the worker waits beyond).
    fn settle(&self, call: impl Future<Output = Result<(), BrokerError>> + Send + 'static) {
        let permit = self.permit();
        let step = self.name.clone();
        self.runtime.spawn(async move {
            if let Err(e) = call.await {
                // The delivery stays unsettled in the broker and is
                // delivered again after a restart: nothing is lost.
                tracing::error!(step = %step, "broker call failed: {e}");
            }
            drop(permit);
        });
    }
}

/// Publish the records of the calls of an attempt that did not commit
/// (after its retry or dead letter is settled: a failure here loses a
/// record, never a delivery, so it is logged as such).
async fn publish_records(b: &dyn Broker, step: &str, calls: Vec<Event>) {
    if calls.is_empty() {
        return;
    }
    let n = calls.len();
    if let Err(e) = b.publish(calls).await {
        tracing::warn!(step = %step, "the trace records of {n} outbound call(s) are lost: {e}");
    }
}
