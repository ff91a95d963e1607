//! What a deploy loads: the app's files as they are now (a candidate), or
//! a recorded deployment again (a rollback, a run pinned to it after a
//! restart, a deployment another host recorded).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use super::{DeployError, Deployer, Held};
use crate::app::App;
use crate::contract::StepContract;
use crate::deploy::{Content, Deployment, FlowVersion, StepVersion, sha256};
use crate::flow::{Flow, FlowText};
use crate::loader::{FLOWS_DIR, LoadError, components, load};
use crate::runtime::RuntimeError;
use crate::runtime::step::LoadedStep;

/// The app's files, loaded: what a deploy of them would record and run.
pub(super) struct Candidate {
    pub content: Content,
    pub held: Held,
    /// Each component's bytes by digest, and the manifest's text, for the
    /// store once the deployment is recorded.
    pub components: BTreeMap<String, Vec<u8>>,
    pub manifest: String,
}

impl Deployer {
    /// The app in `dir` as the running host would have it (its broker is
    /// the host's, whatever the file says now).
    fn app_at(&self, dir: &Path, manifest: &str) -> Result<App, DeployError> {
        let mut app = App::parse(dir, &dir.join(crate::app::MANIFEST), manifest)
            .map_err(|e| DeployError::Invalid(e.to_string()))?;
        app.broker = self.broker_url.clone();
        Ok(app)
    }

    /// Read and load the app's files: build changed plugins, load each
    /// step (a step already held with the same component and manifest is
    /// reused, not loaded again), check the wiring and the flows.
    pub(super) fn read_candidate(&self) -> Result<Candidate, DeployError> {
        let path = self.dir.join(crate::app::MANIFEST);
        let manifest = std::fs::read_to_string(&path)
            .map_err(|e| DeployError::Invalid(format!("{}: {e}", path.display())))?;
        let app = self.app_at(&self.dir, &manifest)?;
        let manifest_digest = sha256(manifest.as_bytes());
        let items = components(&app).map_err(|e| DeployError::Load(Box::new(e)))?;
        let mut bytes = BTreeMap::new();
        let mut digests = BTreeMap::new();
        for (name, p) in &items {
            let b = std::fs::read(p).map_err(|source| {
                DeployError::Load(Box::new(LoadError::Load {
                    step: name.clone(),
                    error: RuntimeError::Read {
                        path: p.clone(),
                        source,
                    },
                }))
            })?;
            let d = sha256(&b);
            digests.insert(name.clone(), d.clone());
            bytes.insert(d, b);
        }
        let mut steps = BTreeMap::new();
        let mut to_load = Vec::new();
        for (name, p) in &items {
            match self.held_step(name, &digests[name], &manifest_digest) {
                Some(s) => {
                    steps.insert(name.clone(), s);
                }
                None => to_load.push((name.clone(), p.clone())),
            }
        }
        for s in load(&self.runtime, &app, &to_load).map_err(|e| DeployError::Load(Box::new(e)))? {
            steps.insert(s.sandbox.name.to_string(), Arc::new(s));
        }
        let held = Held {
            steps,
            app,
            manifest: manifest_digest.clone(),
        };
        let broken: Vec<String> =
            crate::check::check(&held.steps.values().cloned().collect::<Vec<_>>())
                .into_iter()
                .filter(|f| f.severity == crate::check::Severity::Error)
                .map(|f| f.message)
                .collect();
        if !broken.is_empty() {
            return Err(DeployError::Wiring(broken));
        }
        let flows = read_flows(&self.dir)?;
        let contracts: HashMap<String, &StepContract> = held
            .steps
            .iter()
            .map(|(n, s)| (n.clone(), &s.contract))
            .collect();
        let parsed = Flow::parse_all(&texts(&self.dir, &flows), &contracts)
            .map_err(|e| DeployError::Load(Box::new(LoadError::Flow(e))))?;
        crate::loader::check_schedules(&held.app, &parsed, &contracts)
            .map_err(|e| DeployError::Load(Box::new(e)))?;
        let content = Content {
            manifest: manifest_digest,
            steps: held
                .steps
                .iter()
                .map(|(n, s)| {
                    let v = StepVersion {
                        component: s.digest.clone(),
                        contract: crate::contract::json::to_json(&s.contract),
                        choreography: s.choreography,
                    };
                    (n.clone(), v)
                })
                .collect(),
            flows,
            policy: held.app.deploy.clone(),
        };
        Ok(Candidate {
            content,
            held,
            components: bytes,
            manifest,
        })
    }

    /// A step this host holds already: same name, component and manifest.
    fn held_step(&self, name: &str, digest: &str, manifest: &str) -> Option<Arc<LoadedStep>> {
        let state = self.state.lock().expect("deployer lock");
        state
            .loaded
            .values()
            .filter(|h| h.manifest == manifest)
            .find_map(|h| h.steps.get(name).filter(|s| s.digest == digest).cloned())
    }

    /// Load recorded deployment `d` on this host: its manifest and each
    /// component from the store (or the app's files, where they are the
    /// same), steps already held reused.
    pub(super) fn load_recorded(&self, d: &Deployment) -> Result<Held, DeployError> {
        let missing = |what: String| {
            DeployError::Missing(format!(
                "deployment {}: {what} is not on this host (deploy it here, or copy the app's \
                 files as they were deployed)",
                d.number
            ))
        };
        let manifest = match self.store.manifest(&d.content.manifest) {
            Some(m) => m,
            None => {
                let now = std::fs::read_to_string(self.dir.join(crate::app::MANIFEST))
                    .unwrap_or_default();
                if sha256(now.as_bytes()) != d.content.manifest {
                    return Err(missing(format!(
                        "troupe.toml {}",
                        crate::deploy::short(&d.content.manifest)
                    )));
                }
                let _ = self.store.put_manifest(&d.content.manifest, &now);
                now
            }
        };
        let app = self.app_at(&self.dir, &manifest)?;
        let mut steps = BTreeMap::new();
        let mut to_load = Vec::new();
        let mut found_here: Option<BTreeMap<String, std::path::PathBuf>> = None;
        for (name, v) in &d.content.steps {
            if let Some(s) = self.held_step(name, &v.component, &d.content.manifest) {
                steps.insert(name.clone(), s);
                continue;
            }
            if !app.steps.contains_key(name) {
                return Err(missing(format!("the configuration of step `{name}`")));
            }
            let path = match self.store.component(&v.component) {
                Some(p) => p,
                None => {
                    // The app's files as they are now may hold it.
                    let here = found_here.get_or_insert_with(|| self.components_here(&app));
                    match here.get(&v.component) {
                        Some(p) => {
                            // Kept: the app's files may change before it is
                            // needed again (a restart, a rollback).
                            if let Ok(bytes) = std::fs::read(p) {
                                let _ = self.store.put_component(&v.component, &bytes);
                            }
                            p.clone()
                        }
                        None => {
                            return Err(missing(format!(
                                "the component of step `{name}` (sha256 {})",
                                crate::deploy::short(&v.component)
                            )));
                        }
                    }
                }
            };
            to_load.push((name.clone(), path));
        }
        for s in load(&self.runtime, &app, &to_load).map_err(|e| DeployError::Load(Box::new(e)))? {
            steps.insert(s.sandbox.name.to_string(), Arc::new(s));
        }
        Ok(Held {
            steps,
            app,
            manifest: d.content.manifest.clone(),
        })
    }

    /// The components of the app's files as they are now, by digest.
    fn components_here(&self, app: &App) -> BTreeMap<String, std::path::PathBuf> {
        let Ok(items) = components(app) else {
            return BTreeMap::new();
        };
        items
            .into_iter()
            .filter_map(|(_, p)| Some((sha256(&std::fs::read(&p).ok()?), p)))
            .collect()
    }
}

/// The app's flow files, by name, as text.
fn read_flows(dir: &Path) -> Result<BTreeMap<String, FlowVersion>, DeployError> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir.join(FLOWS_DIR)) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let name = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&p)
            .map_err(|e| DeployError::Invalid(format!("{}: {e}", p.display())))?;
        out.insert(name, FlowVersion::new(text));
    }
    Ok(out)
}

/// The flows of recorded deployment `d`, parsed against its contracts.
pub(super) fn flows_of(d: &Deployment, dir: &Path) -> Result<Vec<Flow>, String> {
    let contracts = d.contracts().map_err(|(s, e)| format!("step `{s}`: {e}"))?;
    let by_name: HashMap<String, &StepContract> =
        contracts.iter().map(|(n, c)| (n.clone(), c)).collect();
    Flow::parse_all(&texts(dir, &d.content.flows), &by_name).map_err(|e| e.to_string())
}

/// Flow files as [`Flow::parse_all`] reads them, from their recorded text.
fn texts(dir: &Path, flows: &BTreeMap<String, FlowVersion>) -> Vec<FlowText> {
    flows
        .iter()
        .map(|(name, f)| FlowText {
            name: name.clone(),
            path: dir.join(FLOWS_DIR).join(format!("{name}.toml")),
            text: f.text.clone(),
        })
        .collect()
}
