//! The task that drives every active run: starts, replies, timers, and
//! resuming after a crash. Each transition ends in one [`Driver::commit`].
//!
//! Where the broker's log can be read back by run cheaply (the embedded
//! store, [`Journal::Checkpoints`]), a transition caused by a step's reply
//! does not write the run's record: the reply is already in the log, and
//! after a crash `replay.rs` applies it again to the last record written.
//! Every other transition (a start, a timer, a hybrid step's event, the
//! end of the run) writes the record. Live status is served from memory.
//!
//! The task wakes for a start, a status query (on a channel of its own, so
//! it never waits behind queued starts), a reply, a settled final record,
//! or a timer; a wake-up for a start or a reply also takes what else is
//! waiting on that channel (up to [`BATCH`]), so under load the loop's
//! own cost is paid once per batch, not per message.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::run::{RunRecord, RunState, StepRecord, StepState, key};
use super::timers::Timers;
use super::{
    COMPLETED, FAILED, FLOW_STEP, Inbox, InputCheck, Msg, StartError, messages, now_ms, rfc3339,
};
use crate::app::RetryPolicy;
use crate::broker::{Broker, BrokerError, Commit, Consumer, Delivery};
use crate::event::Event;
use crate::flow::{Action, Flow, FlowStep, INPUT};

/// A run whose final record's commit is settled: (run, state, stored).
pub(super) type Ended = (String, RunState, bool);

/// The most messages of one kind handled per wake-up of the driver.
const BATCH: usize = 64;

/// When the driver writes a run's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Journal {
    /// At every transition (a broker whose log is not indexed by run).
    EveryTransition,
    /// At every transition but those a step's reply causes; after a
    /// crash, the replies in the log are applied again (`replay.rs`).
    Checkpoints,
}

pub(super) struct Driver {
    pub(super) finished: tokio::sync::broadcast::Sender<(String, RunState)>,
    pub(super) broker: Arc<dyn Broker>,
    pub(super) flows: Arc<HashMap<String, Arc<Flow>>>,
    pub(super) runs: HashMap<String, RunRecord>,
    /// Runs that ended, until their final record is durable (so status
    /// never goes back to an older record meanwhile).
    pub(super) ending: HashMap<String, RunRecord>,
    /// Told when a final record's commit is settled; the receiver is
    /// taken by [`Driver::run`].
    pub(super) ended: (
        mpsc::UnboundedSender<Ended>,
        Option<mpsc::UnboundedReceiver<Ended>>,
    ),
    pub(super) timers: Timers,
    pub(super) check_input: InputCheck,
    pub(super) source: String,
    pub(super) journal: Journal,
    /// While a run is replayed, the time of the reply being applied
    /// (epoch ms); the wall clock otherwise.
    pub(super) clock: Option<u64>,
    /// The admission limit, and the gauges the driver keeps up to date.
    pub(super) load: Arc<super::Load>,
}

/// What one transition sends to the broker.
#[derive(Default)]
pub(super) struct Out {
    pub(super) events: Vec<Event>,
}

impl Driver {
    /// Drive the runs until the handle is dropped, the broker closes, or
    /// `lost` says this host no longer holds the orchestrator lease.
    pub(super) async fn run(
        mut self,
        mut inbox: Inbox,
        consumer: Arc<dyn Consumer>,
        mut lost: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut ended = self.ended.1.take().expect("the driver runs once");
        loop {
            self.load.active.store(self.runs.len(), Ordering::Relaxed);
            let next = self.timers.next_at();
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
                    None => return,
                },
                Some(msg) = inbox.queries.recv() => self.on_msg(msg),
                Some((id, state, stored)) = ended.recv() => {
                    self.ending.remove(&id);
                    if stored {
                        let _ = self.finished.send((id, state));
                    }
                }
                d = consumer.next() => match d {
                    Some(d) => {
                        self.on_delivery(d);
                        for _ in 0..BATCH {
                            let Some(Some(d)) = consumer.next().now_or_never() else { break };
                            self.on_delivery(d);
                        }
                    }
                    None => return,
                },
                _ = sleep => self.on_timers(),
                _ = lost.changed() => if *lost.borrow() {
                    return;
                },
            }
        }
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Start { flow, input, reply } => self.start(flow, input, reply),
            Msg::Status { id, reply } => {
                let run = self.runs.get(&id).or_else(|| self.ending.get(&id));
                let _ = reply.send(run.cloned());
            }
        }
    }

    /// Re-send the commands of every dispatched step and re-arm timers.
    pub(super) fn resume(&mut self) {
        let ids: Vec<String> = self.runs.keys().cloned().collect();
        for id in ids {
            let mut out = Out::default();
            let run = self.runs.get(&id).expect("listed");
            self.timers.arm(run.deadline_ms, &id, "", &self.runs);
            let steps: Vec<(String, StepRecord)> = run
                .steps
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (sid, rec) in steps {
                if let Some(at) = rec.deadline_ms {
                    self.timers.arm(at, &id, &sid, &self.runs);
                }
                if rec.state == StepState::Dispatched
                    && let Some(e) = self.command(&id, &sid, rec.attempts)
                {
                    out.events.push(e);
                }
            }
            tracing::info!(run = %id, resent = out.events.len(), "resuming run");
            self.commit(None, &id, out, true, None);
        }
    }

    fn start(
        &mut self,
        flow: String,
        input: Value,
        reply: oneshot::Sender<Result<String, StartError>>,
    ) {
        let Some(f) = self.flows.get(&flow) else {
            let _ = reply.send(Err(StartError::UnknownFlow(flow)));
            return;
        };
        if let Err(reason) = (self.check_input)(f, &input) {
            let _ = reply.send(Err(StartError::BadInput {
                kind: f.input.clone(),
                reason,
            }));
            return;
        }
        if let Some(max) = self.broker.max_state_bytes() {
            let size = serde_json::to_vec(&input).map_or(usize::MAX, |v| v.len());
            let max = max.saturating_sub(RUN_OVERHEAD);
            if size > max {
                let _ = reply.send(Err(StartError::TooLarge { size, max }));
                return;
            }
        }
        // Back-pressure, not a queue: beyond the limit a good start is
        // refused at once (the API answers 503 with Retry-After).
        if self.runs.len() >= self.load.limit {
            self.load.refused.fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(Err(StartError::Busy {
                limit: self.load.limit,
            }));
            return;
        }
        let id = Uuid::now_v7().to_string();
        let now = self.now();
        let run = RunRecord {
            id: id.clone(),
            flow: flow.clone(),
            state: RunState::Running,
            input,
            created: rfc3339(now),
            updated: rfc3339(now),
            finished: None,
            duration_ms: None,
            error: None,
            deadline_ms: now + f.timeout_ms,
            created_ms: now,
            steps: f
                .steps
                .iter()
                .map(|s| (s.id.clone(), StepRecord::new()))
                .collect(),
            undo: Vec::new(),
            timed_out: false,
            completions: 0,
        };
        let deadline = run.deadline_ms;
        self.runs.insert(id.clone(), run);
        self.timers.arm(deadline, &id, "", &self.runs);
        let mut out = Out::default();
        self.advance(&id, &mut out);
        let rid = id.clone();
        self.commit(
            None,
            &id,
            out,
            true,
            Some(Box::new(move |r: Result<(), BrokerError>| {
                let _ = reply.send(r.map(|()| rid).map_err(StartError::from));
            })),
        );
    }

    /// Now, in epoch ms (see [`Driver::clock`]).
    pub(super) fn now(&self) -> u64 {
        self.clock.unwrap_or_else(now_ms)
    }

    /// Send `out` and ack `ack`, with the run's record if `checkpoint`,
    /// if the run ended, or if the journal takes every transition.
    pub(super) fn commit(
        &mut self,
        ack: Option<Delivery>,
        id: &str,
        out: Out,
        checkpoint: bool,
        then: Option<crate::broker::Then>,
    ) {
        let mut state = Vec::new();
        let mut ended = None;
        let journal = self.journal;
        if let Some(run) = self.runs.get_mut(id) {
            run.updated = rfc3339(now_ms());
            let end = run.state.is_final();
            if checkpoint || end || journal == Journal::EveryTransition {
                state.push((
                    key(id),
                    Some(serde_json::to_vec(run).expect("a run serialises")),
                ));
            }
            if end {
                tracing::debug!(run = %id, flow = %run.flow, state = ?run.state, "run finished");
                ended = Some((id.to_string(), run.state));
                let run = self.runs.remove(id).expect("present");
                self.ending.insert(id.to_string(), run);
            }
        }
        // A transition the log alone explains (a reply's, without a
        // record) sends commands that can be derived again from the
        // durable reply: they may go out before their own commit is
        // durable (`Commit::early`), which saves the steps a sync.
        let early = journal == Journal::Checkpoints && !checkpoint && state.is_empty();
        let commit = Commit {
            ack,
            events: out.events,
            state,
            early,
        };
        let then = then.unwrap_or_else(|| {
            Box::new(|r| {
                if let Err(e) = r {
                    tracing::error!("orchestrator commit failed (the run resumes on restart): {e}");
                }
            })
        });
        let then: crate::broker::Then = match ended {
            None => then,
            Some((id, state)) => {
                let tell = self.ended.0.clone();
                Box::new(move |r| {
                    let _ = tell.send((id, state, r.is_ok()));
                    then(r)
                })
            }
        };
        self.broker.commit_then(commit, then);
    }

    /// The flow of a run (an `Arc`: cheap to hold while the run changes).
    pub(super) fn flow(&self, run: &str) -> Option<Arc<Flow>> {
        self.runs
            .get(run)
            .and_then(|r| self.flows.get(&r.flow))
            .cloned()
    }

    pub(super) fn dispatch(&mut self, run_id: &str, sid: &str, out: &mut Out) {
        let timeout = self.timeout_of(run_id, sid);
        let now = self.now();
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        let rec = run.steps.entry(sid.to_string()).or_default();
        rec.attempts += 1;
        rec.state = StepState::Dispatched;
        if rec.started.is_none() {
            rec.started = Some(rfc3339(now));
            rec.started_ms = now;
        }
        rec.deadline_ms = Some(now + timeout);
        let attempt = rec.attempts;
        self.timers.arm(now + timeout, run_id, sid, &self.runs);
        if let Some(e) = self.command(run_id, sid, attempt) {
            if let Some(rec) = self.runs.get_mut(run_id).and_then(|r| r.steps.get_mut(sid)) {
                rec.command_id = Some(e.id.clone());
            }
            out.events.push(e);
        }
    }

    pub(super) fn timeout_of(&self, run_id: &str, sid: &str) -> u64 {
        let base = sid.strip_suffix("~undo").unwrap_or(sid);
        self.flow(run_id)
            .and_then(|f| f.step(base).map(|s| s.timeout_ms))
            .unwrap_or(crate::flow::DEFAULT_STEP_TIMEOUT_MS)
    }

    pub(super) fn retry_of(&self, run_id: &str, sid: &str) -> RetryPolicy {
        let base = sid.strip_suffix("~undo").unwrap_or(sid);
        self.flow(run_id)
            .and_then(|f| f.step(base).map(|s| s.retry.clone()))
            .unwrap_or_default()
    }

    /// Dispatch every step whose dependencies are settled; finish the run
    /// when nothing is left.
    fn advance(&mut self, run_id: &str, out: &mut Out) {
        let Some(flow) = self.flow(run_id) else {
            return;
        };
        loop {
            let run = self.runs.get(run_id).expect("advancing a live run");
            if run.state != RunState::Running {
                return;
            }
            let mut progressed = false;
            for s in &flow.steps {
                let run = self.runs.get(run_id).expect("live");
                if run.steps[&s.id].state != StepState::Pending {
                    continue;
                }
                let settled = |id: &String| {
                    matches!(
                        run.steps[id].state,
                        StepState::Completed | StepState::Skipped
                    )
                };
                if !s.after.iter().all(settled) {
                    continue;
                }
                if let Some(reason) = skip_reason(run, s) {
                    let rec = self
                        .runs
                        .get_mut(run_id)
                        .expect("live")
                        .steps
                        .get_mut(&s.id)
                        .expect("step");
                    rec.state = StepState::Skipped;
                    rec.reason = Some(reason);
                    progressed = true;
                    continue;
                }
                self.dispatch(run_id, &s.id, out);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        let now = self.now();
        let run = self.runs.get_mut(run_id).expect("live");
        let done = run
            .steps
            .values()
            .all(|r| matches!(r.state, StepState::Completed | StepState::Skipped));
        if done {
            finish(run, RunState::Completed, now);
        }
    }

    fn on_delivery(&mut self, d: Delivery) {
        let run_id = messages::run_of(&d.event).to_string();
        if !self.runs.contains_key(&run_id) {
            // A reply for a finished run (a late answer or a duplicate), or
            // an awaited event type from a cascade that is not a run: ack.
            self.commit(Some(d), "", Out::default(), false, None);
            return;
        }
        let mut out = Out::default();
        let checkpoint = self.apply(&run_id, &d.event, &mut out);
        self.commit(Some(d), &run_id, out, checkpoint, None);
    }

    /// Apply a reply, or an event a hybrid step awaits, to its (live) run.
    /// Whether the run's record must be written with the transition: not
    /// for a reply (the log holds it, and [`Driver::replay`] applies it
    /// again after a crash), but for an awaited event that settled a step.
    pub(super) fn apply(&mut self, run_id: &str, e: &Event, out: &mut Out) -> bool {
        match e.kind.as_str() {
            COMPLETED | FAILED => {
                let sid = e.extensions.get(FLOW_STEP).cloned().unwrap_or_default();
                let current = self.runs[run_id]
                    .steps
                    .get(&sid)
                    .and_then(|r| r.command_id.clone());
                if current.as_deref() == e.causation_id()
                    && self.runs[run_id].steps[&sid].state == StepState::Dispatched
                {
                    if e.kind == COMPLETED {
                        let output = messages::first_output(e);
                        if let Some(why) = self.record_too_large(run_id, output.as_ref()) {
                            self.step_failed(run_id, &sid, why, false, out);
                        } else {
                            self.step_done(run_id, &sid, output, out);
                        }
                    } else {
                        let (msg, retryable) = messages::failure(e);
                        self.step_failed(run_id, &sid, msg, retryable, out);
                    }
                }
            }
            kind => {
                // An awaited choreography event for a hybrid step.
                let flow = self.flow(run_id);
                let waiting = flow.iter().flat_map(|f| f.steps.iter()).find(|s| {
                    matches!(&s.action, Action::Hybrid { done, failed, .. } if done == kind || failed.as_deref() == Some(kind))
                        && self.runs[run_id].steps[&s.id].state == StepState::Dispatched
                });
                if let Some(s) = waiting.cloned() {
                    let Action::Hybrid { done, .. } = &s.action else {
                        unreachable!()
                    };
                    if kind == done {
                        let data = serde_json::from_slice::<Box<RawValue>>(&e.data)
                            .ok()
                            .filter(|_| e.is_json())
                            .unwrap_or_else(messages::null);
                        self.step_done(run_id, &s.id, Some((e.kind.clone(), data)), out);
                    } else {
                        let msg = crate::text::message(&format!(
                            "{kind}: {}",
                            String::from_utf8_lossy(&e.data)
                        ));
                        self.step_failed(run_id, &s.id, msg, false, out);
                    }
                    return true;
                }
            }
        }
        false
    }

    /// `output`: the type and data of the step's (first) output event.
    fn step_done(
        &mut self,
        run_id: &str,
        sid: &str,
        output: Option<(String, Box<RawValue>)>,
        out: &mut Out,
    ) {
        let now = self.now();
        let run = self.runs.get_mut(run_id).expect("live");
        run.completions += 1;
        let seq = run.completions;
        let rec = run.steps.get_mut(sid).expect("step");
        rec.state = StepState::Completed;
        rec.finished = Some(rfc3339(now));
        rec.duration_ms = Some(now.saturating_sub(rec.started_ms));
        rec.deadline_ms = None;
        rec.completed_seq = Some(seq);
        if let Some((kind, data)) = output {
            rec.output_type = Some(kind);
            rec.output = Some(data);
        }
        match run.state {
            RunState::Running => self.advance(run_id, out),
            RunState::Compensating => {
                if let Some(orig) = sid.strip_suffix("~undo") {
                    if let Some(r) = run.steps.get_mut(orig) {
                        r.state = StepState::Compensated;
                    }
                } else if self
                    .flow(run_id)
                    .is_some_and(|f| f.step(sid).is_some_and(|s| s.compensate.is_some()))
                {
                    // It finished after the run began to fail: undo it too.
                    self.runs
                        .get_mut(run_id)
                        .expect("live")
                        .undo
                        .push(sid.to_string());
                }
                self.next_undo(run_id, out);
            }
            _ => {}
        }
    }
}

/// Room a run's record and its commands need besides the input, bytes.
const RUN_OVERHEAD: usize = 8 * 1024;

/// End `run` as `state` at `now` (epoch ms).
pub(super) fn finish(run: &mut RunRecord, state: RunState, now: u64) {
    run.state = state;
    run.finished = Some(rfc3339(now));
    run.duration_ms = Some(now.saturating_sub(run.created_ms));
}

/// Why flow step `s` of `run` is skipped, or `None` if it runs: it runs if
/// its input was not skipped and its condition holds.
fn skip_reason(run: &RunRecord, s: &FlowStep) -> Option<String> {
    if s.input != INPUT && run.steps[&s.input].state == StepState::Skipped {
        return Some(format!("its input `{}` was skipped", s.input));
    }
    let c = s.when.as_ref()?;
    match run.steps.get(&c.step) {
        Some(r) if r.state == StepState::Completed => {
            let output = r.output.as_ref().map(|raw| serde_json::from_str(raw.get()));
            let data = output.and_then(Result::ok).unwrap_or(Value::Null);
            (!c.holds(&data)).then(|| c.explain(&data))
        }
        _ => Some(format!(
            "`{}` is false: `{}` did not complete",
            c.text.trim(),
            c.step
        )),
    }
}
