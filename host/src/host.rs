//! A running app: steps loaded, broker open, workers wired.
//!
//! [`Host::start`] opens the broker, deploys the app's files (loaded
//! through `crate::loader`, which this module re-exports), subscribes each
//! step to what it consumes, starts the workers, and only then lets the
//! broker take events queued from outside, so nothing is routed before
//! every step is listening.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::broker::{Broker, BrokerError};
use crate::contract::StepView;
use crate::deployer::{DeployError, Deployer};
use crate::flow::Flow;
pub use crate::loader::{
    Described, FLOWS_DIR, LoadError, describe_steps, http_imports, load_flows, load_steps,
};
use crate::orchestrator::{InputCheck, Orchestrator};
use crate::runtime::step::LoadedStep;
use crate::runtime::{Runtime, RuntimeError};
use crate::shutdown::Tasks;
use crate::stats::Stats;
use crate::telemetry::Telemetry;

/// Why an app could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A step or a flow could not be built or loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
    #[error("cannot start worker threads: {0}")]
    Threads(std::io::Error),
    #[error("the app's wiring is broken (see `troupe check`):\n  {}", .0.join("\n  "))]
    Wiring(Vec<String>),
    #[error(transparent)]
    Deploy(DeployError),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
}

/// How long shutdown lets steps finish the message in hand before it cuts
/// them short.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running app.
pub struct Host {
    pub app: App,
    /// Runs flows; `None` when the app had no flows when it started.
    pub orchestrator: Option<Orchestrator>,
    pub broker: Arc<dyn Broker>,
    pub stats: Arc<Stats>,
    /// Its deployments, and its steps' workers.
    pub deployer: Arc<Deployer>,
    /// The host's tasks (the orchestrator's, the HTTP server's), stopped
    /// and awaited by [`Host::shutdown`].
    pub tasks: Tasks,
    /// Where spans and metrics are exported (if anywhere).
    pub telemetry: Telemetry,
    /// The app's schedules (ticked while this host drives the flows).
    pub schedules: Option<crate::schedule::Schedules>,
    _runtime: Arc<Runtime>,
}

/// How a host starts.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Deploy the app's files even where the gate finds changed contracts
    /// that are not passive (`troupe run --allow-breaking`); what it found
    /// is recorded with the deployment.
    pub allow_breaking: bool,
}

impl Host {
    /// Load `app` and start it on the broker `app.broker` names (the
    /// embedded one in its state folder by default). Must be called within
    /// a multi-threaded tokio runtime.
    pub async fn start(app: App) -> Result<Host, HostError> {
        Self::start_with(app, Options::default()).await
    }

    /// Start `app` as `opts` say: open the broker, deploy the app's files
    /// (a new deployment if they changed, through the gate), load the
    /// deployments runs are pinned to, subscribe every step, start the
    /// orchestrator and the workers, and only then let the broker take
    /// input from outside.
    pub async fn start_with(app: App, opts: Options) -> Result<Host, HostError> {
        let runtime = Arc::new(Runtime::new()?);
        let telemetry = match app
            .telemetry
            .resolve(&app.name, |k| std::env::var(k).ok())
            .map_err(crate::telemetry::TelemetryError::new)?
        {
            Some(settings) => Telemetry::start(settings)?,
            None => Telemetry::off(),
        };
        let broker =
            crate::broker::open(&app.broker, &app.name, &app.state_dir(), &app.retention).await?;
        let deployer = Deployer::boot(
            &app,
            runtime.clone(),
            broker.clone(),
            opts.allow_breaking,
            telemetry.clone(),
        )
        .await
        .map_err(|e| match e {
            DeployError::Load(l) => HostError::Load(*l),
            DeployError::Wiring(w) => HostError::Wiring(w),
            other => HostError::Deploy(other),
        })?;
        let mut tasks = Tasks::default();
        let flows = deployer.flow_sets();
        let any_flows = flows.by_deployment.values().any(|f| !f.is_empty());
        let orchestrator = if any_flows {
            // Weak: the deployer holds the orchestrator.
            let door = Arc::downgrade(&deployer);
            let check: InputCheck = Arc::new(move |flow: &Flow, input: &serde_json::Value| {
                let steps = door.upgrade().map(|d| d.door()).unwrap_or_default();
                for name in flow.input_takers() {
                    if let Some(step) = steps.iter().find(|x| x.name() == name) {
                        step.contract
                            .check_input_value(&flow.input, input)
                            .map_err(|v| v.to_string())?;
                    }
                }
                Ok(())
            });
            let o = Orchestrator::spawn(
                broker.clone(),
                flows,
                check,
                &app.name,
                &app.orchestrator,
                &mut tasks,
                telemetry.clone(),
            )
            .await?;
            deployer.set_orchestrator(o.clone());
            Some(o)
        } else {
            None
        };
        let schedules = orchestrator.as_ref().map(|o| {
            let s = crate::schedule::spawn(
                app.schedules.clone(),
                o.clone(),
                broker.clone(),
                &mut tasks,
            );
            deployer.set_schedules(s.clone());
            s
        });
        deployer.start_workers().map_err(HostError::Threads)?;
        broker.ready().await?;
        deployer.follow(&mut tasks);
        let stats = deployer.stats();
        let (observed, runs) = (Arc::downgrade(&deployer), orchestrator.clone());
        telemetry.observe(move || crate::telemetry::Observed {
            steps: observed
                .upgrade()
                .map(|d| d.stats().snapshot())
                .unwrap_or_default(),
            runs_active: runs.as_ref().map(|o| o.load().active() as u64),
        });
        tracing::info!(app = %app.name, steps = stats.steps.len(), deployment = deployer.current(), "running");
        Ok(Host {
            app,
            orchestrator,
            broker,
            stats,
            deployer,
            tasks,
            telemetry,
            schedules,
            _runtime: runtime,
        })
    }

    /// The steps of the current deployment.
    pub fn steps(&self) -> Vec<Arc<LoadedStep>> {
        self.deployer.door().to_vec()
    }

    /// What the HTTP API of this host serves, with bearer `token`.
    pub fn api_state(&self, token: &str) -> crate::api::ApiState {
        crate::api::ApiState {
            broker: self.broker.clone(),
            orchestrator: self.orchestrator.clone(),
            deployer: self.deployer.clone(),
            stats: self.stats.clone(),
            app: self.app.name.clone(),
            token: token.into(),
            telemetry: self.telemetry.clone(),
            schedules: self.schedules.clone(),
        }
    }

    /// Wait until no delivery has been unsettled for `quiet` in a row.
    pub async fn wait_idle(&self, quiet: Duration) -> Result<(), BrokerError> {
        let tick = Duration::from_millis(20);
        let mut idle_for = Duration::ZERO;
        while idle_for < quiet {
            tokio::time::sleep(tick).await;
            // A damaged store does no more work: waiting would never end.
            if let Some(d) = self.broker.health().damaged {
                return Err(BrokerError::Damaged(d));
            }
            if self.broker.backlog().await? == 0 {
                idle_for += tick;
            } else {
                idle_for = Duration::ZERO;
            }
        }
        Ok(())
    }

    /// Stop the host's tasks (the HTTP server finishes the requests in
    /// hand and takes no more; the orchestrator stops between transitions)
    /// and wait for them; then stop taking deliveries, let the workers
    /// finish the message in hand for up to [`SHUTDOWN_GRACE`], cut short
    /// any guest still running or waiting (its delivery is left unsettled,
    /// to be delivered again), and wait for every broker call the workers
    /// made. Everything is then settled, or left for redelivery.
    pub async fn shutdown(mut self) {
        self.tasks.stop(SHUTDOWN_GRACE).await;
        self.broker.close().await;
        self.deployer
            .stop_workers(SHUTDOWN_GRACE, &self._runtime)
            .await;
        // What the workers' last deliveries made, exported before the
        // process ends (within the exporters' own bound).
        let telemetry = self.telemetry.clone();
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    }
}
