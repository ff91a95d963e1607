//! What an operator does to runs through [`Orchestrator`]: find them (the
//! broker's run index), cancel one, redrive one. Cancel and redrive are
//! checked here against the run's status (a clear refusal, at once), then
//! sent as a control event through the broker (`control.rs`), which the
//! host driving the flows carries out; the answer waits a moment to say
//! how it went.

use std::time::Duration;

use super::control::{self, Ask, Control};
use super::run::{RunRecord, RunState, SignalState, StepState};
use super::{Orchestrator, now_ms};
use crate::broker::BrokerError;
use crate::broker::runs::{RunCount, RunPage, RunQuery};

/// How long a cancel or a redrive waits to see its effect before it
/// answers that it was asked (and is on its way).
const SETTLE_WAIT: Duration = Duration::from_secs(3);

/// The most bytes of data (as JSON) a signal carries.
pub const MAX_SIGNAL_BYTES: usize = 64 * 1024;

/// Why a run could not be controlled.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no run {0:?}")]
    NotFound(String),
    /// It is in a state that does not allow it: the run as it is, and why.
    #[error("{why}")]
    Conflict { run: Box<RunRecord>, why: String },
    /// What was sent breaks what the flow declares (a signal's schema).
    #[error("{0}")]
    Invalid(String),
    /// What was sent is larger than a run may keep.
    #[error("{0}")]
    TooLarge(String),
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
}

/// What became of a control: the run as it stands, and whether it is done
/// (`false`: asked, and on its way).
pub struct Controlled {
    pub run: RunRecord,
    pub done: bool,
}

impl Orchestrator {
    /// A page of runs, newest first, from the broker's run index.
    pub async fn list(&self, q: &RunQuery) -> Result<RunPage, BrokerError> {
        self.broker.runs_list(q).await
    }

    /// How many runs of each flow are in each state.
    pub async fn counts(&self) -> Result<Vec<RunCount>, BrokerError> {
        self.broker.runs_counts().await
    }

    /// Cancel run `id`. Idempotent: a run cancelled already is answered as
    /// it is. A run that ended otherwise, or that failed and is being
    /// compensated, is a conflict.
    pub async fn cancel(&self, id: &str, ask: Ask) -> Result<Controlled, ControlError> {
        let run = self.found(id).await?;
        match run.state {
            RunState::Cancelled => return Ok(Controlled { run, done: true }),
            RunState::Compensating if run.cancelled.is_some() => {
                return Ok(Controlled { run, done: false });
            }
            RunState::Compensating => {
                let why = format!(
                    "the run failed and is being compensated ({}); it ends by itself",
                    run.error.as_deref().unwrap_or("no error recorded")
                );
                return Err(conflict(run, why));
            }
            s if s.is_final() => {
                let why = format!("the run already ended: {}", state_name(s));
                return Err(conflict(run, why));
            }
            _ => {}
        }
        self.send(id, Control::Cancel(ask)).await?;
        let run = self
            .wait(id, |r| r.state.is_final() || r.cancelled.is_some())
            .await?;
        match run.state {
            RunState::Cancelled => Ok(Controlled { run, done: true }),
            s if s.is_final() => {
                let why = format!(
                    "the run ended {} before the cancel reached it",
                    state_name(s)
                );
                Err(conflict(run, why))
            }
            _ => Ok(Controlled { run, done: false }),
        }
    }

    /// Run failed or timed-out run `id` again from the steps that failed,
    /// on the current deployment ([`super::machine::redrivable`] says when
    /// it cannot be).
    pub async fn redrive(&self, id: &str, ask: Ask) -> Result<Controlled, ControlError> {
        let run = self.found(id).await?;
        let checked = super::machine::redrivable(&run, &self.flows.borrow());
        if let Err(why) = checked {
            let why = format!("the run cannot be redriven: {why}");
            return Err(conflict(run, why));
        }
        let before = run.redrives.len();
        self.send(id, Control::Redrive(ask)).await?;
        let run = self.wait(id, |r| r.redrives.len() > before).await?;
        let done = run.redrives.len() > before;
        Ok(Controlled { run, done })
    }

    /// Send signal `name` with `data` to run `id`, for the step that
    /// awaits it (now, or once the run reaches it). Refused at once when
    /// nothing will wait for it, or the data breaks the schema the flow
    /// declares for it.
    pub async fn signal(
        &self,
        id: &str,
        name: &str,
        data: serde_json::Value,
        by: &str,
    ) -> Result<Controlled, ControlError> {
        let run = self.found(id).await?;
        if run.state.is_final() {
            let why = format!("the run already ended: {}", state_name(run.state));
            return Err(conflict(run, why));
        }
        let flow = self.flows.borrow().flow(run.deployment, &run.flow).cloned();
        let Some(flow) = flow else {
            let why = format!("this host does not hold the run's flow {:?}", run.flow);
            return Err(conflict(run, why));
        };
        let Some((step, schema)) = flow.signal(name) else {
            let awaited = flow.signals();
            let why = format!(
                "no step of flow {:?} awaits signal {name:?} ({})",
                flow.name,
                if awaited.is_empty() {
                    "it awaits none".to_string()
                } else {
                    format!("it awaits: {}", awaited.join(", "))
                }
            );
            return Err(conflict(run, why));
        };
        let step = step.id.clone();
        let kept = run
            .signals
            .iter()
            .any(|s| s.name == name && s.state == SignalState::Kept);
        match run.steps.get(&step).map(|r| r.state) {
            Some(StepState::Pending) if kept => {
                let why = format!("a signal {name:?} is already kept for step {step:?}");
                return Err(conflict(run, why));
            }
            Some(StepState::Pending | StepState::Dispatched) if run.state == RunState::Running => {}
            Some(StepState::Completed) => {
                let why = format!("step {step:?} already received signal {name:?}");
                return Err(conflict(run, why));
            }
            other => {
                let state = other.map_or("missing".to_string(), |s| {
                    serde_json::to_value(s)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                });
                let why = format!(
                    "step {step:?} will not wait for signal {name:?}: the step is {state}, the \
                     run {}",
                    state_name(run.state)
                );
                return Err(conflict(run, why));
            }
        }
        // Kept with the run (its record, and the step's output): bounded,
        // so a signal can never grow a record past what the broker stores.
        let size = serde_json::to_vec(&data).map_or(usize::MAX, |v| v.len());
        if size > MAX_SIGNAL_BYTES {
            return Err(ControlError::TooLarge(format!(
                "the data of signal {name:?} is {size} bytes; a signal carries at most \
                 {MAX_SIGNAL_BYTES}"
            )));
        }
        if let Err(e) = schema.check(&data) {
            return Err(ControlError::Invalid(format!(
                "the data of signal {name:?} breaks the schema flow {:?} declares for it: {e}",
                flow.name
            )));
        }
        let signal = control::Signal {
            name: name.to_string(),
            by: by.to_string(),
            data,
        };
        let event = self.send(id, Control::Signal(signal)).await?;
        let run = self
            .wait(id, |r| r.signals.iter().any(|s| s.event == event))
            .await?;
        let done = run.signals.iter().any(|s| s.event == event);
        Ok(Controlled { run, done })
    }

    async fn found(&self, id: &str) -> Result<RunRecord, ControlError> {
        self.status(id)
            .await?
            .ok_or_else(|| ControlError::NotFound(id.to_string()))
    }

    /// Send control `c` of run `id`, durably; the id of its event.
    async fn send(&self, id: &str, c: Control) -> Result<String, BrokerError> {
        let source = crate::event::source(&self.app, "api");
        let e = control::event(id, &source, &c);
        let sent = e.id.clone();
        self.broker.publish(vec![e]).await?;
        Ok(sent)
    }

    /// The run's status once `done` holds of it, or as it is after
    /// [`SETTLE_WAIT`].
    async fn wait(
        &self,
        id: &str,
        done: impl Fn(&RunRecord) -> bool,
    ) -> Result<RunRecord, ControlError> {
        let until = now_ms() + SETTLE_WAIT.as_millis() as u64;
        loop {
            let run = self.found(id).await?;
            if done(&run) || now_ms() >= until {
                return Ok(run);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn conflict(run: RunRecord, why: String) -> ControlError {
    ControlError::Conflict {
        run: Box::new(run),
        why,
    }
}

/// A state's name, as the API writes it.
pub fn state_name(s: RunState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
