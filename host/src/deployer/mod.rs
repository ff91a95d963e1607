//! Deploying: the effects of [`crate::deploy`]'s decisions on a running
//! host.
//!
//! The [`Deployer`] holds the deployments this host has loaded (the
//! current one, which takes new work, and every one a run in flight is
//! pinned to) and each step's workers. A deploy (at the host's start, over
//! the API, on SIGHUP, from `troupe run --watch`) reads the app's files,
//! loads what changed, asks the ledger, records the deployment in the
//! broker and only then switches, at message boundaries: each worker picks
//! the version for a delivery as it takes it (`choreo::Versions`), so an
//! invocation in flight finishes on the instance it started on, and
//! nothing is handled twice because of the switch. A refused deploy, or
//! one that fails before its record is written, changes nothing.
//!
//! On NATS every host of the app sees a recorded deployment
//! (`watch.rs`): it loads it from its own files (the component store, or
//! the app's files where they are the same) and switches; a host that
//! cannot says so in `/readyz` and takes no work until it can.

mod ledger;
mod read;
pub mod store;
mod switch;
mod watch;

pub use watch::fingerprint;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use serde::Serialize;

use crate::app::App;
use crate::broker::{Broker, BrokerError, BrokerUrl};
use crate::choreo::Wiring;
use crate::deploy::ledger::Refusal;
use crate::deploy::{Decision, Deployment, Ledger, Origin, Proposal};
use crate::orchestrator::{FlowSets, Orchestrator};
use crate::runtime::Runtime;
use crate::runtime::step::LoadedStep;
use crate::stats::{Stats, StepStats};
use ledger::{read_ledger, read_ledger_from};
use store::Store;

/// Why a deploy did not happen. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The app's files do not make an app (a manifest, a build, a flow).
    #[error("{0}")]
    Invalid(String),
    #[error("the app's wiring is broken (see `troupe check`):\n  {}", .0.join("\n  "))]
    Wiring(Vec<String>),
    /// The gate refused it.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// What it needs is not on this host.
    #[error("{0}")]
    Missing(String),
    /// A step or a flow could not be built or loaded.
    #[error(transparent)]
    Load(Box<crate::loader::LoadError>),
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
}

/// What is asked of a deploy.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `start`, `api`, `signal`, `watch`.
    pub how: String,
    /// Return to this deployment (`troupe deploy --to N`).
    pub to: Option<u64>,
    /// Record what the gate finds instead of refusing.
    pub allow_breaking: bool,
    /// Decide, record nothing, switch nothing.
    pub dry_run: bool,
}

/// What a deploy did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The deployment now current (or, dry, the one it would record).
    pub deployment: Deployment,
    /// Whether it is a new deployment (`false`: the files are the current
    /// deployment's, nothing was recorded).
    pub recorded: bool,
    pub dry_run: bool,
    /// What changed from the deployment before, one line each.
    pub changes: Vec<String>,
}

/// A deployment loaded on this host.
pub(crate) struct Held {
    pub steps: BTreeMap<String, Arc<LoadedStep>>,
    /// Its manifest (each step's configuration).
    pub app: App,
    /// The manifest's digest.
    pub manifest: String,
}

struct State {
    ledger: Ledger,
    /// The deployment new work goes to (0: none yet).
    current: u64,
    loaded: BTreeMap<u64, Held>,
    /// Deployments runs are pinned to: as the driving orchestrator of this
    /// host says, and as the app's state row says (other hosts').
    pins_here: BTreeSet<u64>,
    pins_row: BTreeSet<u64>,
    flows: FlowSets,
    /// Why this host cannot serve the current deployment, if it cannot.
    unready: Option<String>,
}

/// The steps' workers.
#[derive(Default)]
struct Wired {
    wirings: BTreeMap<String, Arc<Wiring>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Workers run (new steps' start at once).
    started: bool,
}

/// The deployments of a running host, and its steps' workers.
pub struct Deployer {
    dir: PathBuf,
    app_name: String,
    broker_url: BrokerUrl,
    broker: Arc<dyn Broker>,
    runtime: Arc<Runtime>,
    store: Store,
    /// This host, as deployments it records name it.
    holder: String,
    handle: tokio::runtime::Handle,
    /// One deploy at a time on this host.
    turn: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    /// The current deployment's steps: what the door checks events from
    /// outside against.
    door: RwLock<Arc<Vec<Arc<LoadedStep>>>>,
    orchestrator: OnceLock<Orchestrator>,
    /// The schedules this host ticks, told of every deploy's.
    schedules: OnceLock<crate::schedule::Schedules>,
    wired: Mutex<Wired>,
    /// Each step's counters (a step added by a deploy too).
    stats: Mutex<BTreeMap<String, Arc<StepStats>>>,
    this: std::sync::Weak<Deployer>,
    /// Where the workers' spans go.
    telemetry: crate::telemetry::Telemetry,
}

impl Deployer {
    /// Deploy the app's files as the host starts: record them as a new
    /// deployment unless they are the current one (through the gate), load
    /// the deployments runs are pinned to, and subscribe every step. The
    /// workers start with [`Self::start_workers`].
    pub async fn boot(
        app: &App,
        runtime: Arc<Runtime>,
        broker: Arc<dyn Broker>,
        allow_breaking: bool,
        telemetry: crate::telemetry::Telemetry,
    ) -> Result<Arc<Deployer>, DeployError> {
        let d = Arc::new_cyclic(|this| Deployer {
            dir: app.dir.clone(),
            app_name: app.name.clone(),
            broker_url: app.broker.clone(),
            store: Store::new(&app.state_dir()),
            holder: host_name(),
            handle: tokio::runtime::Handle::current(),
            turn: tokio::sync::Mutex::new(()),
            state: Mutex::new(State {
                ledger: Ledger::default(),
                current: 0,
                loaded: BTreeMap::new(),
                pins_here: BTreeSet::new(),
                pins_row: BTreeSet::new(),
                flows: FlowSets::default(),
                unready: None,
            }),
            door: RwLock::default(),
            orchestrator: OnceLock::new(),
            schedules: OnceLock::new(),
            wired: Mutex::default(),
            stats: Mutex::default(),
            this: this.clone(),
            runtime,
            broker,
            telemetry,
        });
        let request = Request {
            how: "start".into(),
            allow_breaking,
            ..Request::default()
        };
        let outcome = d.deploy(request).await?;
        let n = outcome.deployment.number;
        if outcome.recorded {
            tracing::info!(deployment = n, "deployed: {}", summary(&outcome.changes));
        } else {
            tracing::info!(deployment = n, "the app's files are deployment {n}");
        }
        // Runs in flight pinned to earlier deployments: load those too.
        let pins = d.read_pins_row().await?;
        d.state.lock().expect("deployer lock").pins_row = pins.clone();
        for k in pins.into_iter().filter(|k| *k != n) {
            if let Err(e) = d.ensure_loaded(k).await {
                tracing::error!(deployment = k, "runs are pinned to it, but {e}");
            }
        }
        Ok(d)
    }

    /// Start every step's workers (after the orchestrator is up, before
    /// the broker takes input).
    pub fn start_workers(&self) -> std::io::Result<()> {
        let mut w = self.wired.lock().expect("wired lock");
        w.started = true;
        let wirings: Vec<Arc<Wiring>> = w.wirings.values().cloned().collect();
        for wiring in wirings {
            w.workers.extend(wiring.spawn()?);
        }
        Ok(())
    }

    /// The schedules this host ticks: each deploy's replace them.
    pub fn set_schedules(&self, s: crate::schedule::Schedules) {
        let _ = self.schedules.set(s);
    }

    /// The orchestrator this host runs, told of every deploy from now on.
    pub fn set_orchestrator(&self, o: Orchestrator) {
        let _ = self.orchestrator.set(o);
    }

    /// The flows of every recorded deployment, new runs on the current's.
    pub fn flow_sets(&self) -> FlowSets {
        self.state.lock().expect("deployer lock").flows.clone()
    }

    /// The current deployment's steps.
    pub fn door(&self) -> Arc<Vec<Arc<LoadedStep>>> {
        self.door.read().expect("door lock").clone()
    }

    /// The deployment new work goes to.
    pub fn current(&self) -> u64 {
        self.state.lock().expect("deployer lock").current
    }

    /// The deployments held on this host.
    pub fn loaded(&self) -> Vec<u64> {
        let st = self.state.lock().expect("deployer lock");
        st.loaded.keys().copied().collect()
    }

    /// Why this host cannot serve the app's current deployment, if so.
    pub fn unready(&self) -> Option<String> {
        self.state.lock().expect("deployer lock").unready.clone()
    }

    /// The steps' counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::new(Stats {
            steps: self.stats.lock().expect("stats lock").clone(),
        })
    }

    /// Every deployment recorded, oldest first (read from the broker).
    pub async fn list(&self) -> Result<Vec<Deployment>, BrokerError> {
        let all = read_ledger(&*self.broker).await?;
        Ok(all.all().cloned().collect())
    }

    /// Deploy (see the module's documentation): what it did, or why not.
    pub async fn deploy(&self, r: Request) -> Result<Outcome, DeployError> {
        let _turn = self.turn.lock().await;
        // A number another host took first: read the ledger again and
        // decide again.
        for _ in 0..8 {
            let known = self.state.lock().expect("deployer lock").ledger.clone();
            let ledger = read_ledger_from(&*self.broker, &known).await?;
            self.state.lock().expect("deployer lock").ledger = ledger.clone();
            let (proposal, held) = match r.to {
                Some(n) => {
                    let Some(d) = ledger.get(n).cloned() else {
                        return Err(DeployError::Refused(Refusal::Unknown(n)));
                    };
                    (Proposal::Rollback(n), self.blocking_load(d).await?)
                }
                None => {
                    let c = self.blocking_candidate().await?;
                    for (digest, bytes) in &c.components {
                        self.store.put_component(digest, bytes).map_err(|e| {
                            DeployError::Invalid(format!("cannot keep a component: {e}"))
                        })?;
                    }
                    self.store
                        .put_manifest(&c.content.manifest, &c.manifest)
                        .map_err(|e| {
                            DeployError::Invalid(format!("cannot keep troupe.toml: {e}"))
                        })?;
                    // A host started on the files of an earlier deployment
                    // (a rolling restart before its files were updated)
                    // does not take the app back: it serves the current
                    // deployment, or nothing until it can.
                    if r.how == "start"
                        && let Some(cur) = ledger.current().filter(|d| d.content != c.content)
                        && let Some(mine) = ledger.all().rev().find(|d| d.content == c.content)
                    {
                        return self.adopt(cur.clone(), mine.clone(), c.held).await;
                    }
                    (Proposal::Content(c.content), c.held)
                }
            };
            let origin = Origin {
                how: r.how.clone(),
                host: self.holder.clone(),
            };
            let before = ledger.current().map(|d| d.content.clone());
            let changes = |d: &Deployment| match &before {
                Some(b) => d.content.changes_from(b),
                None => vec!["first deployment".to_string()],
            };
            match ledger.propose(proposal, origin, r.allow_breaking, crate::clock::now_ms()) {
                Decision::Refused(why) => return Err(DeployError::Refused(why)),
                Decision::Unchanged(n) => {
                    let d = ledger.get(n).expect("the current deployment").clone();
                    if self.current() != n {
                        // The host's start: the files are the current deployment.
                        self.switch(&d, held).await?;
                    }
                    return Ok(Outcome {
                        deployment: d,
                        recorded: false,
                        dry_run: r.dry_run,
                        changes: Vec::new(),
                    });
                }
                Decision::Record(d) => {
                    let changes = changes(&d);
                    if r.dry_run {
                        return Ok(Outcome {
                            deployment: d,
                            recorded: false,
                            dry_run: true,
                            changes,
                        });
                    }
                    if !self.record(&d).await? {
                        continue;
                    }
                    self.switch(&d, held).await?;
                    return Ok(Outcome {
                        deployment: d,
                        recorded: true,
                        dry_run: false,
                        changes,
                    });
                }
            }
        }
        Err(DeployError::Broker(BrokerError::Store(
            "other hosts kept recording deployments first".into(),
        )))
    }

    /// The app's files, loaded (on the blocking pool: it builds and
    /// instantiates).
    async fn blocking_candidate(&self) -> Result<read::Candidate, DeployError> {
        let me = self.me();
        tokio::task::spawn_blocking(move || me.read_candidate())
            .await
            .map_err(|e| DeployError::Invalid(format!("loading panicked: {e}")))?
    }

    /// Recorded deployment `d`, loaded (on the blocking pool).
    async fn blocking_load(&self, d: Deployment) -> Result<Held, DeployError> {
        let me = self.me();
        tokio::task::spawn_blocking(move || me.load_recorded(&d))
            .await
            .map_err(|e| DeployError::Invalid(format!("loading panicked: {e}")))?
    }

    /// Load deployment `k` if it is not held (a run is pinned to it).
    pub(crate) async fn ensure_loaded(&self, k: u64) -> Result<(), DeployError> {
        if self
            .state
            .lock()
            .expect("deployer lock")
            .loaded
            .contains_key(&k)
        {
            return Ok(());
        }
        let mut d = self
            .state
            .lock()
            .expect("deployer lock")
            .ledger
            .get(k)
            .cloned();
        if d.is_none() {
            let known = self.state.lock().expect("deployer lock").ledger.clone();
            let ledger = read_ledger_from(&*self.broker, &known).await?;
            d = ledger.get(k).cloned();
            self.state.lock().expect("deployer lock").ledger = ledger;
        }
        let Some(d) = d else {
            return Err(DeployError::Refused(Refusal::Unknown(k)));
        };
        let held = self.blocking_load(d).await?;
        self.hold(k, held);
        Ok(())
    }

    /// An `Arc` of this deployer (it is only ever made in one).
    fn me(&self) -> Arc<Deployer> {
        self.this.upgrade().expect("the deployer is alive")
    }
}

/// This host as a deployment's origin: the machine's name and the
/// process.
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{name} pid {}", std::process::id())
}

/// The changes of a deploy, for a log line.
pub fn summary(changes: &[String]) -> String {
    if changes.is_empty() {
        "no change".into()
    } else {
        changes.join("; ")
    }
}
