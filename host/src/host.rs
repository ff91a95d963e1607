//! A running app: steps loaded, broker open, workers wired.
//!
//! [`load_steps`] turns an app's step table into loaded steps (building
//! plugin sources, compiling components in parallel through the artifact
//! cache, reading contracts). [`describe_steps`] gives only their
//! contracts, from the contract cache when it can, instantiating no guest
//! it has described before (`check`, `docs`, `graph`, `publish`). [`Host::start`] opens the broker, subscribes
//! each step to what it consumes, starts the workers, and only then lets
//! the broker take events queued from outside, so nothing is routed before
//! every step is listening.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::app::{App, Source};
use crate::broker::{Broker, BrokerError};
use crate::builder::{self, BuildError};
use crate::contract::{StepContract, StepView};
use crate::deployer::{DeployError, Deployer};
use crate::flow::Flow;
use crate::orchestrator::{InputCheck, Orchestrator};
use crate::runtime::cache::ArtifactCache;
use crate::runtime::contracts::ContractCache;
use crate::runtime::step::LoadedStep;
use crate::runtime::{Runtime, RuntimeError};
use crate::shutdown::Tasks;
use crate::stats::Stats;

/// Why an app could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("step `{step}`: {error}")]
    Build { step: String, error: BuildError },
    #[error("step `{step}`: {error}")]
    Load { step: String, error: RuntimeError },
    #[error("secrets: {0}")]
    Secrets(String),
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
    #[error("cannot start worker threads: {0}")]
    Threads(std::io::Error),
    #[error(transparent)]
    Flow(#[from] crate::flow::FlowError),
    #[error("the app's wiring is broken (see `troupe check`):\n  {}", .0.join("\n  "))]
    Wiring(Vec<String>),
    #[error(transparent)]
    Deploy(DeployError),
}

/// Read and check the app's flows (`APP/flows/*.toml`) against its steps.
pub fn load_flows(app: &App, steps: &[impl StepView]) -> Result<Vec<Flow>, HostError> {
    let contracts: HashMap<String, &StepContract> = steps
        .iter()
        .map(|s| (s.name().to_string(), s.contract()))
        .collect();
    Ok(Flow::load_dir(&app.dir.join(FLOWS_DIR), &contracts)?)
}

/// How long shutdown lets steps finish the message in hand before it cuts
/// them short.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The folder of an app's flow files.
pub const FLOWS_DIR: &str = "flows";

/// The component of each step of `app`, built if its sources changed
/// since its last build (`builder::prepare`).
pub(crate) fn components(app: &App) -> Result<Vec<(String, PathBuf)>, HostError> {
    let mut items = Vec::new();
    for (name, cfg) in &app.steps {
        let path = match cfg.source() {
            Source::Component(p) => p,
            Source::Plugin(dir) => {
                builder::prepare(&dir)
                    .map_err(|error| HostError::Build {
                        step: name.clone(),
                        error,
                    })?
                    .component
            }
        };
        items.push((name.clone(), path));
    }
    Ok(items)
}

/// For each step of `app`, whether its component imports
/// `wasi:http/outgoing-handler` (read from the component, built if its
/// sources changed, not compiled).
pub fn http_imports(app: &App) -> Result<BTreeMap<String, bool>, HostError> {
    let mut out = BTreeMap::new();
    for (name, path) in components(app)? {
        let bytes = std::fs::read(&path).map_err(|source| HostError::Load {
            step: name.clone(),
            error: RuntimeError::Read { path, source },
        })?;
        let imports = crate::runtime::outbound::imports_http(&bytes).unwrap_or(false);
        out.insert(name, imports);
    }
    Ok(out)
}

/// Build, compile and load `items` (step name, component) of `app`; each
/// contract is remembered in the contract cache.
pub(crate) fn load(
    rt: &Runtime,
    app: &App,
    items: &[(String, PathBuf)],
) -> Result<Vec<LoadedStep>, HostError> {
    let cache_dir = app.state_dir().join("cache");
    let cache = ArtifactCache::new(rt.engine(), &cache_dir);
    let contracts = ContractCache::new(&cache_dir);
    let secrets = app.secrets().map_err(HostError::Secrets)?;
    let loaded = cache.load_all(rt.engine(), items);
    let mut steps = Vec::new();
    for ((name, path), component) in items.iter().zip(loaded) {
        let component = component.map_err(|error| HostError::Load {
            step: name.clone(),
            error,
        })?;
        let cfg = &app.steps[name];
        let mut step = LoadedStep::load(rt, name, &component.component, cfg.sandbox(&secrets))
            .map_err(|error| HostError::Load {
                step: name.clone(),
                error,
            })?;
        step.choreography = cfg.choreography;
        step.digest = component.hash.clone();
        contracts.put(path, &component.hash, &step.contract);
        steps.push(step);
    }
    Ok(steps)
}

/// Build, compile and load every step of `app`.
pub fn load_steps(rt: &Runtime, app: &App) -> Result<Vec<Arc<LoadedStep>>, HostError> {
    let items = components(app)?;
    Ok(load(rt, app, &items)?.into_iter().map(Arc::new).collect())
}

/// A step known by its contract alone (see [`describe_steps`]).
pub struct Described {
    pub name: String,
    pub contract: StepContract,
    pub choreography: bool,
}

impl StepView for Described {
    fn name(&self) -> &str {
        &self.name
    }
    fn contract(&self) -> &StepContract {
        &self.contract
    }
    fn choreography(&self) -> bool {
        self.choreography
    }
}

/// The contract of every step of `app`: from the contract cache for a
/// component described before, else by loading the step (which fills the
/// cache). No guest runs for a step whose component is unchanged.
pub fn describe_steps(app: &App) -> Result<Vec<Described>, HostError> {
    let items = components(app)?;
    let cache = ContractCache::new(app.state_dir().join("cache"));
    let mut known = HashMap::new();
    let mut unknown = Vec::new();
    for (name, path) in &items {
        let compiled = cache
            .get(path)
            .and_then(|raw| StepContract::compile(raw).ok());
        match compiled {
            Some(c) => {
                known.insert(name.clone(), c);
            }
            None => unknown.push((name.clone(), path.clone())),
        }
    }
    if !unknown.is_empty() {
        let rt = Runtime::new()?;
        for step in load(&rt, app, &unknown)? {
            known.insert(step.sandbox.name.to_string(), step.contract);
        }
    }
    Ok(items
        .into_iter()
        .map(|(name, _)| Described {
            contract: known.remove(&name).expect("every step is described"),
            choreography: app.steps[&name].choreography,
            name,
        })
        .collect())
}

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
        let broker =
            crate::broker::open(&app.broker, &app.name, &app.state_dir(), &app.retention).await?;
        let deployer = Deployer::boot(&app, runtime.clone(), broker.clone(), opts.allow_breaking)
            .await
            .map_err(|e| match e {
                DeployError::Host(h) => *h,
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
                for s in flow.steps.iter().filter(|s| s.input == crate::flow::INPUT) {
                    if let crate::flow::Action::Command { step } = &s.action
                        && let Some(step) = steps.iter().find(|x| x.name() == step)
                    {
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
            )
            .await?;
            deployer.set_orchestrator(o.clone());
            Some(o)
        } else {
            None
        };
        deployer.start_workers().map_err(HostError::Threads)?;
        broker.ready().await?;
        deployer.follow(&mut tasks);
        let stats = deployer.stats();
        tracing::info!(app = %app.name, steps = stats.steps.len(), deployment = deployer.current(), "running");
        Ok(Host {
            app,
            orchestrator,
            broker,
            stats,
            deployer,
            tasks,
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
    }
}
