//! An app's steps: built (plugin sources whose sources changed), compiled
//! in parallel through the artifact cache, loaded with their contracts, or
//! only described (from the contract cache when it can, instantiating no
//! guest it has described before: `check`, `docs`, `graph`, `publish`);
//! and its flows, checked against them. The host and the deployer load
//! through here.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use crate::app::{App, Source};
use crate::builder::{self, BuildError};
use crate::contract::{StepContract, StepView};
use crate::flow::Flow;
use crate::runtime::cache::ArtifactCache;
use crate::runtime::contracts::ContractCache;
use crate::runtime::step::LoadedStep;
use crate::runtime::{Runtime, RuntimeError};

/// Why an app's steps or flows could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("step `{step}`: {error}")]
    Build { step: String, error: BuildError },
    #[error("step `{step}`: {error}")]
    Load { step: String, error: RuntimeError },
    #[error("secrets: {0}")]
    Secrets(String),
    #[error(transparent)]
    Flow(#[from] crate::flow::FlowError),
    #[error("{path}: [schedules.{schedule}] {message}")]
    Schedule {
        path: PathBuf,
        schedule: String,
        message: String,
    },
}

/// Read and check the app's flows (`APP/flows/*.toml`) against its steps,
/// and its schedules against them.
pub fn load_flows(app: &App, steps: &[impl StepView]) -> Result<Vec<Flow>, LoadError> {
    let contracts: HashMap<String, &StepContract> = steps
        .iter()
        .map(|s| (s.name().to_string(), s.contract()))
        .collect();
    let flows = Flow::load_dir(&app.dir.join(FLOWS_DIR), &contracts)?;
    check_schedules(app, &flows, &contracts)?;
    Ok(flows)
}

/// Each schedule of `app` names one of `flows`, and its input is one the
/// flow's first steps take.
pub(crate) fn check_schedules(
    app: &App,
    flows: &[Flow],
    contracts: &HashMap<String, &StepContract>,
) -> Result<(), LoadError> {
    for s in &app.schedules {
        let bad = |message: String| LoadError::Schedule {
            path: app.dir.join(crate::app::MANIFEST),
            schedule: s.name.clone(),
            message,
        };
        let Some(f) = flows.iter().find(|f| f.name == s.flow) else {
            let mut names: Vec<&str> = flows.iter().map(|f| f.name.as_str()).collect();
            names.sort();
            return Err(bad(format!(
                "flow {:?}: the app has no such flow (it has: {})",
                s.flow,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )));
        };
        for step in f.input_takers() {
            if let Some(c) = contracts.get(step) {
                c.check_input_value(&f.input, &s.input).map_err(|v| {
                    bad(format!(
                        "input: not a valid {} for step {step}: {v}",
                        f.input
                    ))
                })?;
            }
        }
    }
    Ok(())
}

/// The folder of an app's flow files.
pub const FLOWS_DIR: &str = "flows";

/// The component of each step of `app`, built if its sources changed
/// since its last build (`builder::prepare`).
pub(crate) fn components(app: &App) -> Result<Vec<(String, PathBuf)>, LoadError> {
    let mut items = Vec::new();
    for (name, cfg) in &app.steps {
        let path = match cfg.source() {
            Source::Component(p) => p,
            Source::Plugin(dir) => {
                builder::prepare(&dir)
                    .map_err(|error| LoadError::Build {
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
pub fn http_imports(app: &App) -> Result<BTreeMap<String, bool>, LoadError> {
    let mut out = BTreeMap::new();
    for (name, path) in components(app)? {
        let bytes = std::fs::read(&path).map_err(|source| LoadError::Load {
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
) -> Result<Vec<LoadedStep>, LoadError> {
    let cache = ArtifactCache::new(rt.engine(), &app.cache_dir);
    let contracts = ContractCache::new(app.state_dir().join("cache"));
    let secrets = app.secrets().map_err(LoadError::Secrets)?;
    let loaded = cache.load_all(rt.engine(), items);
    let mut steps = Vec::new();
    for ((name, path), component) in items.iter().zip(loaded) {
        let component = component.map_err(|error| LoadError::Load {
            step: name.clone(),
            error,
        })?;
        let cfg = &app.steps[name];
        let mut step = LoadedStep::load(rt, name, &component.component, cfg.sandbox(&secrets))
            .map_err(|error| LoadError::Load {
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
pub fn load_steps(rt: &Runtime, app: &App) -> Result<Vec<Arc<LoadedStep>>, LoadError> {
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
pub fn describe_steps(app: &App) -> Result<Vec<Described>, LoadError> {
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
