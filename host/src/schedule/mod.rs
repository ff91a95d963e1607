//! Schedules: `[schedules.NAME]` in `troupe.toml` starts a run of a flow
//! at each tick of a cron pattern or an interval.
//!
//! The decisions are `plan.rs` (pure, tested by property); this module
//! carries them out. One task per host ([`spawn`]) acts only while the
//! host drives the app's flows (holds the orchestrator lease): it reads
//! each schedule's stored state (`schedule/NAME`, which only it writes)
//! and what an operator said of it (`schedule-paused/NAME`, which only the
//! API writes), decides, starts the tick's run through the orchestrator
//! with an idempotency key that names the schedule and the tick, then
//! writes the state. **Each tick starts one run across every host and every
//! restart**: a host that dies between the start and the write decides the
//! same tick again, and its key names the run already started (within
//! [`crate::orchestrator::IDEMPOTENCY_WINDOW`], a day: a schedule's state
//! is written long before).

pub mod config;
pub mod plan;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, oneshot, watch};

pub use config::{CatchUp, Overlap, Schedule, When, is_schedule_name};
use plan::{Decision, Pause, TickState};

use crate::broker::{Broker, BrokerError, Commit};
use crate::clock::{now_ms, rfc3339};
use crate::orchestrator::{Orchestrator, StartError};

/// The state row of schedule `name`.
pub fn state_row(name: &str) -> String {
    format!("schedule/{name}")
}

/// The row of what an operator said of schedule `name`.
pub fn pause_row(name: &str) -> String {
    format!("schedule-paused/{name}")
}

/// The most the task sleeps before it reads the rows again (a pause or a
/// resume through another host's API is seen within it).
const POLL: Duration = Duration::from_secs(2);
/// The wait before a tick whose run could not be started for now (the
/// orchestrator busy or standing by, the store failing) is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The app's schedules, and the task that ticks them.
#[derive(Clone)]
pub struct Schedules {
    /// The current deployment's schedules (a deploy replaces them).
    list: Arc<watch::Sender<Arc<Vec<Schedule>>>>,
    orchestrator: Orchestrator,
    broker: Arc<dyn Broker>,
    /// Wakes the task (a pause or a resume through this host).
    nudge: Arc<Notify>,
}

/// A schedule as `GET /v1/schedules` shows it.
#[derive(Debug, Serialize)]
pub struct ScheduleView {
    pub name: String,
    pub flow: String,
    /// `cron "..."` or `every 10s`.
    pub when: String,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    pub input: serde_json::Value,
    pub paused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_tick: Option<String>,
    /// When a host first ticked it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
    pub started: u64,
    pub skipped: u64,
    pub missed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The next ticks (none while paused).
    pub next: Vec<String>,
}

/// Why an operator's ask of a schedule failed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("no schedule named {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
}

/// Start ticking `list` on `tasks` (an empty list too: a deploy may bring
/// schedules).
pub fn spawn(
    list: Vec<Schedule>,
    orchestrator: Orchestrator,
    broker: Arc<dyn Broker>,
    tasks: &mut crate::shutdown::Tasks,
) -> Schedules {
    let s = Schedules {
        list: Arc::new(watch::Sender::new(Arc::new(list))),
        orchestrator,
        broker,
        nudge: Arc::new(Notify::new()),
    };
    let (task, stop) = (s.clone(), tasks.shutdown());
    tasks.spawn("schedules", task.run(stop));
    s
}

impl Schedules {
    /// A deploy: tick `list` from now on. (A schedule that stays keeps
    /// its stored state: its ticks go on where they were.)
    pub fn set(&self, list: Vec<Schedule>) {
        self.list.send_replace(Arc::new(list));
        self.nudge.notify_one();
    }

    fn all(&self) -> Arc<Vec<Schedule>> {
        self.list.borrow().clone()
    }

    async fn run(self, mut stop: crate::shutdown::Shutdown) {
        loop {
            let mut wake = now_ms() + POLL.as_millis() as u64;
            if self.orchestrator.standing().driving {
                for s in self.all().iter() {
                    match self.tick(s).await {
                        Ok(Some(next)) => wake = wake.min(next),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(schedule = %s.name, "cannot tick the schedule (tried again shortly): {e}");
                            wake = wake.min(now_ms() + RETRY.as_millis() as u64);
                        }
                    }
                }
            }
            let sleep = Duration::from_millis(wake.saturating_sub(now_ms()));
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.nudge.notified() => {}
                _ = stop.recv() => return,
            }
        }
    }

    /// Decide for `s` now and carry it out; when to look again.
    async fn tick(&self, s: &Schedule) -> Result<Option<u64>, BrokerError> {
        let state: TickState = self.read(&state_row(&s.name)).await?;
        let pause: Pause = self.read(&pause_row(&s.name)).await?;
        let active = match &state.last_run {
            Some(run) => self
                .orchestrator
                .status(run)
                .await?
                .is_some_and(|r| !r.state.is_final()),
            None => false,
        };
        let now = now_ms();
        let p = plan::plan(s, &state, &pause, now, active);
        let mut next_state = p.state;
        match p.decision {
            Decision::Start { tick, key } => {
                match self
                    .orchestrator
                    .start(&s.flow, s.input.clone(), Some(&key))
                    .await
                {
                    Ok((run, fresh)) => {
                        tracing::info!(schedule = %s.name, tick = %rfc3339(tick), run = %run, fresh, "scheduled run started");
                        next_state.started += u64::from(fresh);
                        next_state.last_run = Some(run);
                        next_state.last_error = None;
                    }
                    // Not now: the same tick is decided again shortly.
                    Err(
                        e @ (StartError::Busy { .. }
                        | StartError::Stopped
                        | StartError::Standby
                        | StartError::Broker(_)),
                    ) => {
                        tracing::warn!(schedule = %s.name, tick = %rfc3339(tick), "cannot start the tick's run yet: {e}");
                        return Ok(Some(now + RETRY.as_millis() as u64));
                    }
                    // Never (a deploy removed the flow, or changed its
                    // input's contract): said, and the tick passed.
                    Err(e) => {
                        tracing::error!(schedule = %s.name, tick = %rfc3339(tick), "the tick's run cannot start: {e}");
                        next_state.last_error = Some(e.to_string());
                    }
                }
            }
            Decision::Skip { tick } => {
                tracing::info!(schedule = %s.name, tick = %rfc3339(tick), last_run = ?state.last_run, "tick skipped: the last run still runs (overlap = \"skip\")");
            }
            Decision::Idle => {}
        }
        if next_state != state {
            let value = serde_json::to_vec(&next_state).expect("a schedule's state serialises");
            self.write(&state_row(&s.name), value).await?;
        }
        Ok(p.next)
    }

    async fn read<T: serde::de::DeserializeOwned + Default>(
        &self,
        row: &str,
    ) -> Result<T, BrokerError> {
        Ok(self
            .broker
            .state_get(row)
            .await?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default())
    }

    async fn write(&self, row: &str, value: Vec<u8>) -> Result<(), BrokerError> {
        let (tx, rx) = oneshot::channel();
        let commit = Commit {
            state: vec![(row.to_string(), Some(value))],
            ..Commit::default()
        };
        self.broker.commit_then(
            commit,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.map_err(|_| BrokerError::Closed)?
    }

    fn find(&self, name: &str) -> Result<Schedule, ScheduleError> {
        self.all()
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| ScheduleError::NotFound(name.to_string()))
    }

    /// Every schedule, with what is stored of it and its next ticks.
    pub async fn list(&self) -> Result<Vec<ScheduleView>, BrokerError> {
        let mut out = Vec::new();
        for s in self.all().iter() {
            let state: TickState = self.read(&state_row(&s.name)).await?;
            let pause: Pause = self.read(&pause_row(&s.name)).await?;
            let mut next = Vec::new();
            if !pause.paused {
                let mut t = state
                    .last_tick_ms
                    .or(state.seen_ms)
                    .unwrap_or(0)
                    .max(now_ms());
                for _ in 0..3 {
                    match s.when.next_after(t) {
                        Some(n) => {
                            next.push(rfc3339(n));
                            t = n;
                        }
                        None => break,
                    }
                }
            }
            out.push(ScheduleView {
                name: s.name.clone(),
                flow: s.flow.clone(),
                when: s.when.describe(),
                overlap: s.overlap,
                catch_up: s.catch_up,
                input: s.input.clone(),
                paused: pause.paused,
                paused_by: pause.paused.then(|| pause.by.clone()).flatten(),
                paused_reason: pause.paused.then(|| pause.reason.clone()).flatten(),
                last_tick: state.last_tick_ms.map(rfc3339),
                since: state.seen_ms.map(rfc3339),
                last_run: state.last_run,
                started: state.started,
                skipped: state.skipped,
                missed: state.missed,
                last_error: state.last_error,
                next,
            });
        }
        Ok(out)
    }

    /// Pause (`paused`) or resume schedule `name`, as `by` asks, for
    /// `reason`. A resumed schedule does not catch up the ticks of its
    /// pause.
    pub async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        by: &str,
        reason: Option<String>,
    ) -> Result<(), ScheduleError> {
        self.find(name)?;
        let pause = Pause {
            paused,
            at_ms: now_ms(),
            by: Some(by.to_string()),
            reason,
        };
        let value = serde_json::to_vec(&pause).expect("a pause serialises");
        self.write(&pause_row(name), value).await?;
        self.nudge.notify_one();
        Ok(())
    }

    /// Start a run of schedule `name` now, outside its ticks (paused or
    /// not): its run's id. `key` makes it idempotent (the same key, the
    /// same run).
    pub async fn trigger(&self, name: &str, key: &str) -> Result<String, ScheduleError> {
        let s = self.find(name)?;
        let key = format!("schedule:{name}:trigger:{key}");
        let (run, _) = self
            .orchestrator
            .start(&s.flow, s.input.clone(), Some(&key))
            .await?;
        Ok(run)
    }
}
