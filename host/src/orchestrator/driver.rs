//! The task that drives every active run: starts, replies, timers, and
//! resuming after a crash. Each transition ends in one [`Driver::commit`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::run::{RunRecord, RunState, StepRecord, StepState, key};
use super::{ATTEMPT, COMPLETED, FAILED, FLOW_STEP, InputCheck, Msg, RUN, StartError, now_ms};
use crate::app::RetryPolicy;
use crate::broker::{Broker, BrokerError, Commit, Consumer, Delivery};
use crate::event::{CORRELATION_ID, Event, TARGET, derived_id, now_rfc3339};
use crate::flow::{Action, Flow, FlowStep, INPUT};

/// A timer: (when, run, flow step or "" for the run's own deadline).
pub(super) type Timer = Reverse<(u64, String, String)>;

pub(super) struct Driver {
    pub(super) finished: tokio::sync::broadcast::Sender<(String, RunState)>,
    pub(super) broker: Arc<dyn Broker>,
    pub(super) flows: Arc<HashMap<String, Arc<Flow>>>,
    pub(super) runs: HashMap<String, RunRecord>,
    pub(super) timers: BinaryHeap<Timer>,
    pub(super) check_input: InputCheck,
    pub(super) source: String,
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
        mut rx: mpsc::Receiver<Msg>,
        consumer: Arc<dyn Consumer>,
        mut lost: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let next = self.timers.peek().map(|Reverse((at, _, _))| *at);
            let sleep = async {
                match next {
                    Some(at) => {
                        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Start { flow, input, reply }) => self.start(flow, input, reply),
                    None => return,
                },
                d = consumer.next() => match d {
                    Some(d) => self.on_delivery(d),
                    None => return,
                },
                _ = sleep => self.on_timers(),
                _ = lost.changed() => if *lost.borrow() {
                    return;
                },
            }
        }
    }

    /// Re-send the commands of every dispatched step and re-arm timers.
    pub(super) fn resume(&mut self) {
        let ids: Vec<String> = self.runs.keys().cloned().collect();
        for id in ids {
            let mut out = Out::default();
            let run = self.runs.get(&id).expect("listed");
            self.timers
                .push(Reverse((run.deadline_ms, id.clone(), String::new())));
            let steps: Vec<(String, StepRecord)> = run
                .steps
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (sid, rec) in steps {
                if let Some(at) = rec.deadline_ms
                    && matches!(rec.state, StepState::Dispatched | StepState::Backoff)
                {
                    self.timers.push(Reverse((at, id.clone(), sid.clone())));
                }
                if rec.state == StepState::Dispatched
                    && let Some(e) = self.command(&id, &sid, rec.attempts)
                {
                    out.events.push(e);
                }
            }
            tracing::info!(run = %id, resent = out.events.len(), "resuming run");
            self.commit(None, &id, out, None);
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
        let id = Uuid::now_v7().to_string();
        let now = now_ms();
        let run = RunRecord {
            id: id.clone(),
            flow: flow.clone(),
            state: RunState::Running,
            input,
            created: now_rfc3339(),
            updated: now_rfc3339(),
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
        self.timers
            .push(Reverse((run.deadline_ms, id.clone(), String::new())));
        self.runs.insert(id.clone(), run);
        let mut out = Out::default();
        self.advance(&id, &mut out);
        let rid = id.clone();
        self.commit(
            None,
            &id,
            out,
            Some(Box::new(move |r: Result<(), BrokerError>| {
                let _ = reply.send(r.map(|()| rid).map_err(StartError::from));
            })),
        );
    }

    /// Persist the run (and send `out`), acking `ack`.
    pub(super) fn commit(
        &mut self,
        ack: Option<Delivery>,
        id: &str,
        out: Out,
        then: Option<crate::broker::Then>,
    ) {
        let mut state = Vec::new();
        if let Some(run) = self.runs.get_mut(id) {
            run.updated = now_rfc3339();
            state.push((
                key(id),
                Some(serde_json::to_vec(run).expect("a run serialises")),
            ));
            if run.state.is_final() {
                tracing::debug!(run = %id, flow = %run.flow, state = ?run.state, "run finished");
                let _ = self.finished.send((id.to_string(), run.state));
                self.runs.remove(id);
            }
        }
        let commit = Commit {
            ack,
            events: out.events,
            state,
        };
        self.broker.commit_then(
            commit,
            then.unwrap_or_else(|| {
                Box::new(|r| {
                    if let Err(e) = r {
                        tracing::error!(
                            "orchestrator commit failed (the run resumes on restart): {e}"
                        );
                    }
                })
            }),
        );
    }

    /// The flow of a run (an `Arc`: cheap to hold while the run changes).
    pub(super) fn flow(&self, run: &str) -> Option<Arc<Flow>> {
        self.runs
            .get(run)
            .and_then(|r| self.flows.get(&r.flow))
            .cloned()
    }

    /// The command (or hybrid event) of attempt `attempt` of `sid`.
    fn command(&self, run_id: &str, sid: &str, attempt: u32) -> Option<Event> {
        let run = self.runs.get(run_id)?;
        let flow = self.flows.get(&run.flow)?;
        let (input_from, kind, target) = match sid.strip_suffix("~undo") {
            Some(orig) => {
                let c = flow.step(orig)?.compensate.clone()?;
                let kind = if c.input == INPUT {
                    flow.input.clone()
                } else {
                    run.steps.get(&c.input)?.output_type.clone()?
                };
                (c.input, kind, Some(c.step))
            }
            None => {
                let s = flow.step(sid)?;
                let target = match &s.action {
                    Action::Command { step } => Some(step.clone()),
                    Action::Hybrid { .. } => None,
                };
                (s.input.clone(), s.input_kind.clone(), target)
            }
        };
        let data = if input_from == INPUT {
            serde_json::to_vec(&run.input).expect("JSON")
        } else {
            match &run.steps.get(&input_from)?.output {
                Some(raw) => raw.get().as_bytes().to_vec(),
                None => b"null".to_vec(),
            }
        };
        let mut e = Event::new(&kind, &self.source, data);
        e.id = derived_id(run_id, &format!("{sid}/{attempt}"));
        e.subject = Some(run_id.to_string());
        e.extensions
            .insert(CORRELATION_ID.into(), run_id.to_string());
        e.extensions.insert(RUN.into(), run_id.to_string());
        e.extensions.insert(FLOW_STEP.into(), sid.to_string());
        e.extensions.insert(ATTEMPT.into(), attempt.to_string());
        if let Some(t) = target {
            e.extensions.insert(TARGET.into(), t);
        }
        Some(e)
    }

    pub(super) fn dispatch(&mut self, run_id: &str, sid: &str, out: &mut Out) {
        let timeout = self.timeout_of(run_id, sid);
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        let rec = run.steps.entry(sid.to_string()).or_default();
        rec.attempts += 1;
        rec.state = StepState::Dispatched;
        let now = now_ms();
        if rec.started.is_none() {
            rec.started = Some(now_rfc3339());
            rec.started_ms = now;
        }
        rec.deadline_ms = Some(now + timeout);
        let attempt = rec.attempts;
        self.timers.push(Reverse((
            now + timeout,
            run_id.to_string(),
            sid.to_string(),
        )));
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
                if !self.should_run(run, s) {
                    let rec = self
                        .runs
                        .get_mut(run_id)
                        .expect("live")
                        .steps
                        .get_mut(&s.id)
                        .expect("step");
                    rec.state = StepState::Skipped;
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
        let run = self.runs.get_mut(run_id).expect("live");
        let done = run
            .steps
            .values()
            .all(|r| matches!(r.state, StepState::Completed | StepState::Skipped));
        if done {
            finish(run, RunState::Completed);
        }
    }

    /// A step runs if its input was not skipped and its condition holds.
    fn should_run(&self, run: &RunRecord, s: &FlowStep) -> bool {
        if s.input != INPUT && run.steps[&s.input].state == StepState::Skipped {
            return false;
        }
        match &s.when {
            None => true,
            Some(c) => match run.steps.get(&c.step) {
                Some(r) if r.state == StepState::Completed => {
                    let output = r.output.as_ref().map(|raw| serde_json::from_str(raw.get()));
                    c.holds(&output.and_then(Result::ok).unwrap_or(Value::Null))
                }
                _ => false,
            },
        }
    }

    fn on_delivery(&mut self, d: Delivery) {
        let e = &d.event;
        let run_id = e
            .extensions
            .get(RUN)
            .cloned()
            .unwrap_or_else(|| e.correlation_id().to_string());
        if !self.runs.contains_key(&run_id) {
            // A reply for a finished run (a late answer or a duplicate), or
            // an awaited event type from a cascade that is not a run: ack.
            self.commit(Some(d), "", Out::default(), None);
            return;
        }
        let mut out = Out::default();
        match e.kind.as_str() {
            COMPLETED | FAILED => {
                let sid = e.extensions.get(FLOW_STEP).cloned().unwrap_or_default();
                let current = self.runs[&run_id]
                    .steps
                    .get(&sid)
                    .and_then(|r| r.command_id.clone());
                if current.as_deref() == e.causation_id()
                    && self.runs[&run_id].steps[&sid].state == StepState::Dispatched
                {
                    if e.kind == COMPLETED {
                        let output = serde_json::from_slice::<Completed>(&e.data)
                            .ok()
                            .and_then(|c| c.outputs.into_iter().next())
                            .map(|o| (o.kind, o.data.unwrap_or_else(null)));
                        self.step_done(&run_id, &sid, output, &mut out);
                    } else {
                        let data: Value = serde_json::from_slice(&e.data).unwrap_or(Value::Null);
                        let retryable = data["retryable"].as_bool().unwrap_or(false);
                        let msg = format!(
                            "{}: {}",
                            data["class"].as_str().unwrap_or("failed"),
                            data["message"].as_str().unwrap_or("")
                        );
                        self.step_failed(&run_id, &sid, msg, retryable, &mut out);
                    }
                }
            }
            kind => {
                // An awaited choreography event for a hybrid step.
                let flow = self.flow(&run_id);
                let waiting = flow.iter().flat_map(|f| f.steps.iter()).find(|s| {
                    matches!(&s.action, Action::Hybrid { done, failed, .. } if done == kind || failed.as_deref() == Some(kind))
                        && self.runs[&run_id].steps[&s.id].state == StepState::Dispatched
                });
                if let Some(s) = waiting.cloned() {
                    let Action::Hybrid { done, .. } = &s.action else {
                        unreachable!()
                    };
                    if kind == done {
                        let data = serde_json::from_slice::<Box<RawValue>>(&e.data)
                            .ok()
                            .filter(|_| e.is_json())
                            .unwrap_or_else(null);
                        self.step_done(&run_id, &s.id, Some((e.kind.clone(), data)), &mut out);
                    } else {
                        let msg = format!("{kind}: {}", String::from_utf8_lossy(&e.data));
                        self.step_failed(&run_id, &s.id, msg, false, &mut out);
                    }
                }
            }
        }
        self.commit(Some(d), &run_id, out, None);
    }

    /// `output`: the type and data of the step's (first) output event.
    fn step_done(
        &mut self,
        run_id: &str,
        sid: &str,
        output: Option<(String, Box<RawValue>)>,
        out: &mut Out,
    ) {
        let run = self.runs.get_mut(run_id).expect("live");
        run.completions += 1;
        let seq = run.completions;
        let rec = run.steps.get_mut(sid).expect("step");
        let now = now_ms();
        rec.state = StepState::Completed;
        rec.finished = Some(now_rfc3339());
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

/// What a step's completed reply carries (see
/// [`super::completed_reply`]): its outputs as CloudEvents JSON, of which
/// the type and the data are kept (data without JSON parsing).
#[derive(serde::Deserialize)]
struct Completed {
    outputs: Vec<Output>,
}

#[derive(serde::Deserialize)]
struct Output {
    #[serde(rename = "type")]
    kind: String,
    /// Absent for binary data (`data_base64`).
    data: Option<Box<RawValue>>,
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is JSON")
}

pub(super) fn finish(run: &mut RunRecord, state: RunState) {
    run.state = state;
    let now = now_ms();
    run.finished = Some(now_rfc3339());
    run.duration_ms = Some(now.saturating_sub(run.created_ms));
}
