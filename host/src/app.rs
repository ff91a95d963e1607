//! `troupe.toml`: the app manifest.
//!
//! An app is a directory with a `troupe.toml` that names the steps to load
//! (a compiled component, or a plugin source directory that Troupe builds),
//! and for each step its instance policy, concurrency, limits, retry budget
//! and grants. Everything is checked when the file is read: unknown keys,
//! missing files and impossible limits are errors that name the step and
//! the key. The full reference is `docs/troupe-toml.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::broker::BrokerUrl;
use crate::broker::retention::{Retention, RetentionTable};
use crate::contract::is_step_name;
pub use crate::orchestrator::{MAX_ACTIVE_RUNS, OrchestratorConfig};
pub use crate::retry::RetryPolicy;
pub use crate::runtime::config::{
    DirGrant, Grants, HttpGrantSpec, HttpLimits, Instances, Limits, MAX_EMITS, MAX_EVENT_BYTES,
    RECYCLE_AFTER, SandboxConfig,
};
use crate::runtime::outbound::secrets::Template;
pub use crate::runtime::outbound::secrets::{SecretSource, Secrets};

/// The manifest's file name inside an app directory.
pub const MANIFEST: &str = "troupe.toml";
/// The app's state folder (broker data, artifact cache) inside the app.
pub const STATE_DIR: &str = ".troupe";

/// Why an app could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: step `{step}`: {message}")]
    Step {
        path: PathBuf,
        step: String,
        message: String,
    },
}

/// A loaded, checked `troupe.toml`.
#[derive(Debug, Clone)]
pub struct App {
    /// The app directory.
    pub dir: PathBuf,
    /// The app's name (the `name` key, or the directory's name).
    pub name: String,
    /// Steps, in the order of their names.
    pub steps: BTreeMap<String, StepConfig>,
    /// The broker: `[broker] url`, unless `--broker` or `TROUPE_BROKER`
    /// says otherwise; embedded by default.
    pub broker: BrokerUrl,
    /// The `[orchestrator]` table.
    pub orchestrator: OrchestratorConfig,
    /// The `[secrets]` table: where each secret's value comes from.
    pub secrets: BTreeMap<String, SecretSource>,
    /// The `[retention]` table: how long the broker keeps what it no
    /// longer needs.
    pub retention: Retention,
    /// The `[deploy]` table: each event type's compatibility mode.
    pub deploy: crate::deploy::Policy,
    /// The `[telemetry]` table: where spans and metrics are exported.
    pub telemetry: crate::telemetry::config::Telemetry,
    /// The `[schedules.NAME]` tables, in the order of their names.
    pub schedules: Vec<crate::schedule::Schedule>,
    /// Where compiled components are kept: `TROUPE_CACHE_DIR` if set,
    /// else `.troupe/cache` (see [`CACHE_DIR_VAR`]).
    pub cache_dir: PathBuf,
}

/// The environment variable naming a directory of compiled components
/// that several apps (or several checkouts of one, in CI) share. Artifacts
/// are named by the component's SHA-256 and the engine's settings, and
/// written whole, so apps and hosts sharing the directory never load
/// another's code by mistake; the directory must be writable by Troupe
/// alone, as an app's `.troupe` is.
pub const CACHE_DIR_VAR: &str = "TROUPE_CACHE_DIR";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    name: Option<String>,
    #[serde(default)]
    steps: BTreeMap<String, StepConfig>,
    broker: Option<BrokerSection>,
    #[serde(default)]
    orchestrator: OrchestratorConfig,
    #[serde(default)]
    secrets: BTreeMap<String, SecretSource>,
    #[serde(default)]
    retention: RetentionTable,
    #[serde(default)]
    deploy: crate::deploy::Policy,
    #[serde(default)]
    telemetry: crate::telemetry::config::TelemetryTable,
    #[serde(default)]
    schedules: BTreeMap<String, crate::schedule::config::ScheduleTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BrokerSection {
    url: String,
}

/// Where a step's component comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A compiled component file.
    Component(PathBuf),
    /// A plugin source directory, built with `troupe build`.
    Plugin(PathBuf),
}

/// One `[steps.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// A compiled component, relative to the app directory.
    pub component: Option<PathBuf>,
    /// A plugin source directory, relative to the app directory.
    pub plugin: Option<PathBuf>,
    #[serde(default)]
    pub instances: Instances,
    /// With `instances = "reuse"`: messages an instance handles before it
    /// is replaced by a new one (default [`RECYCLE_AFTER`]).
    pub recycle_after: Option<u32>,
    /// Messages handled at once (default: the number of CPUs).
    pub concurrency: Option<usize>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub grants: Grants,
    /// Subscribe the step to the event types it consumes (default). With
    /// `false` it takes orchestration commands only (e.g. a compensation).
    #[serde(default = "yes")]
    pub choreography: bool,
}

fn yes() -> bool {
    true
}

impl App {
    /// Read and check `DIR/troupe.toml`.
    pub fn load(dir: &Path) -> Result<App, AppError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|source| AppError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(dir, &path, &text)
    }

    pub(crate) fn parse(dir: &Path, path: &Path, text: &str) -> Result<App, AppError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| AppError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let name = manifest.name.unwrap_or_else(|| {
            std::fs::canonicalize(dir)
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "app".to_string())
        });
        if manifest.steps.is_empty() {
            return Err(AppError::Parse {
                path: path.to_path_buf(),
                message: "no steps: add a `[steps.NAME]` table with a `component` or `plugin`"
                    .into(),
            });
        }
        let mut steps = BTreeMap::new();
        for (step, mut cfg) in manifest.steps {
            let bad = |message: String| AppError::Step {
                path: path.to_path_buf(),
                step: step.clone(),
                message,
            };
            if !is_step_name(&step) {
                return Err(bad(
                    "a step name is lower-case letters, digits and `-`, starting with a letter"
                        .into(),
                ));
            }
            cfg.validate().map_err(bad)?;
            for g in &cfg.grants.http {
                for value in g.headers.values() {
                    let t = Template::parse(value)
                        .map_err(|e| bad(format!("grants.http {:?}: header value {e}", g.url)))?;
                    if let Some(n) = t.secrets().find(|n| !manifest.secrets.contains_key(*n)) {
                        return Err(bad(format!(
                            "grants.http {:?}: secret {n} is not in [secrets]",
                            g.url
                        )));
                    }
                }
            }
            cfg.component = cfg.component.map(|p| dir.join(p));
            cfg.plugin = cfg.plugin.map(|p| dir.join(p));
            for d in &mut cfg.grants.dirs {
                d.host = dir.join(&d.host);
            }
            steps.insert(step, cfg);
        }
        // A step's own bucket is named after it: a shared bucket of that
        // name would be that step's, open to whoever is granted it.
        for (step, cfg) in &steps {
            if let Some(b) = cfg
                .grants
                .kv
                .iter()
                .find(|b| steps.contains_key(b.as_str()))
            {
                return Err(AppError::Step {
                    path: path.to_path_buf(),
                    step: step.clone(),
                    message: format!(
                        "grants.kv: {b:?} is the name of step `{b}`, whose own bucket it is; \
                         no other step may be granted it (name shared buckets apart from steps)"
                    ),
                });
            }
        }
        let broker = match manifest.broker {
            None => BrokerUrl::Embedded,
            Some(b) => b.url.parse().map_err(|message| AppError::Parse {
                path: path.to_path_buf(),
                message: format!("[broker] url: {message}"),
            })?,
        };
        let orchestrator = manifest.orchestrator;
        if !(1..=MAX_ACTIVE_RUNS).contains(&orchestrator.max_active_runs) {
            return Err(AppError::Parse {
                path: path.to_path_buf(),
                message: format!(
                    "[orchestrator] max_active_runs must be between 1 and {MAX_ACTIVE_RUNS}"
                ),
            });
        }
        if orchestrator.park_after_ms < crate::orchestrator::MIN_PARK_AFTER_MS {
            return Err(AppError::Parse {
                path: path.to_path_buf(),
                message: format!(
                    "[orchestrator] park_after_ms must be at least {}",
                    crate::orchestrator::MIN_PARK_AFTER_MS
                ),
            });
        }
        let retention = manifest
            .retention
            .check()
            .map_err(|message| AppError::Parse {
                path: path.to_path_buf(),
                message,
            })?;
        manifest.deploy.check().map_err(|message| AppError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        let telemetry = manifest.telemetry.check().map_err(|m| AppError::Parse {
            path: path.to_path_buf(),
            message: format!("[telemetry] {m}"),
        })?;
        let schedules = crate::schedule::config::check(manifest.schedules).map_err(|message| {
            AppError::Parse {
                path: path.to_path_buf(),
                message,
            }
        })?;
        Ok(App {
            schedules,
            dir: dir.to_path_buf(),
            name,
            steps,
            broker,
            orchestrator,
            secrets: manifest.secrets,
            retention,
            deploy: manifest.deploy,
            telemetry,
            cache_dir: std::env::var_os(CACHE_DIR_VAR)
                .filter(|d| !d.is_empty())
                .map_or_else(|| dir.join(STATE_DIR).join("cache"), PathBuf::from),
        })
    }

    /// The app's state folder, `DIR/.troupe`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(STATE_DIR)
    }

    /// The values of the secrets the steps' grants use (only those: a
    /// secret nothing uses need not be set). The error names the secret
    /// and where its value should have come from.
    pub fn secrets(&self) -> Result<Secrets, String> {
        let used: std::collections::BTreeSet<String> = self
            .steps
            .values()
            .flat_map(|s| &s.grants.http)
            .flat_map(|g| g.headers.values())
            .filter_map(|v| Template::parse(v).ok())
            .flat_map(|t| t.secrets().map(str::to_string).collect::<Vec<_>>())
            .collect();
        let sources = self
            .secrets
            .iter()
            .filter(|(n, _)| used.contains(*n))
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        Secrets::resolve(&sources, &self.dir)
    }
}

impl StepConfig {
    /// What the step's sandbox is built from, with the app's `secrets`.
    pub fn sandbox(&self, secrets: &Secrets) -> SandboxConfig {
        SandboxConfig {
            instances: self.instances,
            recycle_after: self.recycle_after.unwrap_or(RECYCLE_AFTER),
            limits: self.limits.clone(),
            grants: self.grants.clone(),
            secrets: secrets.clone(),
        }
    }

    /// Where the component comes from.
    pub fn source(&self) -> Source {
        match (&self.component, &self.plugin) {
            (Some(c), _) => Source::Component(c.clone()),
            (None, Some(p)) => Source::Plugin(p.clone()),
            (None, None) => unreachable!("validate() requires one of them"),
        }
    }

    /// Messages handled at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    fn validate(&self) -> Result<(), String> {
        match (&self.component, &self.plugin) {
            (Some(_), Some(_)) => return Err("set `component` or `plugin`, not both".into()),
            (None, None) => {
                return Err(
                    "set `component` (a .wasm file) or `plugin` (a source directory)".into(),
                );
            }
            _ => {}
        }
        let l = &self.limits;
        if l.memory_mb == 0 || l.memory_mb > crate::runtime::MAX_MEMORY_MB {
            return Err(format!(
                "limits.memory_mb must be between 1 and {}",
                crate::runtime::MAX_MEMORY_MB
            ));
        }
        if l.timeout_ms == 0 || l.timeout_ms > 600_000 {
            return Err("limits.timeout_ms must be between 1 and 600000".into());
        }
        if l.max_emits == 0 || l.max_emits > MAX_EMITS {
            return Err(format!(
                "limits.max_emits must be between 1 and {MAX_EMITS}"
            ));
        }
        if l.max_event_bytes == 0 || l.max_event_bytes > MAX_EVENT_BYTES {
            return Err(format!(
                "limits.max_event_bytes must be between 1 and {MAX_EVENT_BYTES}"
            ));
        }
        if l.log_lines_per_second == 0 || l.log_lines_per_second > 100_000 {
            return Err("limits.log_lines_per_second must be between 1 and 100000".into());
        }
        match (self.instances, self.recycle_after) {
            (Instances::Fresh, Some(_)) => {
                return Err(
                    "recycle_after applies to reused instances only: set instances = \"reuse\" \
                     or remove it"
                        .into(),
                );
            }
            (_, Some(0)) => return Err("recycle_after must be at least 1".into()),
            _ => {}
        }
        if self.concurrency == Some(0) || self.concurrency.is_some_and(|c| c > 256) {
            return Err("concurrency must be between 1 and 256".into());
        }
        if self.retry.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1 (1 means no retry)".into());
        }
        l.http.check()?;
        l.kv.check()?;
        for b in &self.grants.kv {
            if !crate::kv::valid_bucket(b) {
                return Err(format!(
                    "grants.kv: {b:?} is not a bucket name (1 to 64 lowercase letters, digits, \
                     `-` and `_`, starting with a letter or digit)"
                ));
            }
        }
        for g in &self.grants.http {
            crate::runtime::outbound::grant::HttpGrant::parse(g)?;
        }
        for d in &self.grants.dirs {
            if !d.guest.starts_with('/') {
                return Err(format!(
                    "grants.dirs: guest path {:?} must be absolute",
                    d.guest
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<App, AppError> {
        App::parse(Path::new("/app"), Path::new("/app/troupe.toml"), text)
    }

    #[test]
    fn a_minimal_app_gets_the_documented_defaults() {
        let app = parse("[steps.echo]\ncomponent = \"echo.wasm\"\n").unwrap();
        let s = &app.steps["echo"];
        assert_eq!(s.source(), Source::Component("/app/echo.wasm".into()));
        assert_eq!(s.instances, Instances::Fresh);
        assert_eq!(s.limits.memory_mb, 64);
        assert_eq!(s.retry.max_attempts, 5);
        assert!(s.grants.dirs.is_empty() && s.grants.env.is_empty() && !s.grants.stderr);
        assert_eq!(app.orchestrator.max_active_runs, 10_000);
    }

    #[test]
    fn mistakes_are_reported_with_the_step_and_key() {
        let e = |t: &str| parse(t).unwrap_err().to_string();
        assert!(
            e("[steps.a]\ncomponent = \"x\"\nlimits = { memroy_mb = 3 }\n").contains("memroy_mb")
        );
        assert!(e("[steps.a]\n").contains("step `a`: set `component`"));
        for bad in [
            "max_emits = 0",
            "max_emits = 10001",
            "max_event_bytes = 16777217",
            "log_lines_per_second = 0",
        ] {
            let key = bad.split(' ').next().unwrap();
            let m = e(&format!(
                "[steps.a]\ncomponent = \"x\"\nlimits = {{ {bad} }}\n"
            ));
            assert!(
                m.contains(&format!("limits.{key} must be between")),
                "{bad}: {m}"
            );
        }
        assert!(e("[steps.a]\ncomponent = \"x\"\nplugin = \"y\"\n").contains("not both"));
        assert!(e("[steps.A]\ncomponent = \"x\"\n").contains("lower-case"));
        assert!(e("[steps.a\n").contains("troupe.toml"));
        assert!(e("name = \"x\"\n").contains("no steps"));
        assert!(
            e("[steps.a]\ncomponent = \"x\"\nretry = { max_attempts = 0 }\n")
                .contains("max_attempts")
        );
        let app = "[steps.a]\ncomponent = \"x\"\n[orchestrator]\n";
        assert!(e(&format!("{app}max_active_runs = 0\n")).contains("max_active_runs must be"));
        assert!(e(&format!("{app}max_runs = 5\n")).contains("max_runs"));
        let ok = parse(&format!("{app}max_active_runs = 5\n")).unwrap();
        assert_eq!(ok.orchestrator.max_active_runs, 5);
    }

    #[test]
    fn a_step_cannot_be_granted_another_steps_own_bucket() {
        let two = "[steps.b]\ncomponent = \"x\"\n[steps.c]\ncomponent = \"x\"\n";
        let e = parse(&format!("{two}grants.kv = [\"b\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("step `c`") && e.contains("whose own bucket it is"),
            "{e}"
        );
        assert!(parse(&format!("{two}grants.kv = [\"stock\"]\n")).is_ok());
    }

    #[test]
    fn recycle_after_is_for_reused_instances() {
        let e = |t: &str| parse(t).unwrap_err().to_string();
        let step = "[steps.a]\ncomponent = \"x\"\n";
        assert!(e(&format!("{step}recycle_after = 5\n")).contains("reused instances only"));
        assert!(
            e(&format!("{step}instances = \"reuse\"\nrecycle_after = 0\n"))
                .contains("recycle_after must be at least 1")
        );
        let sandbox = |t: &str| parse(t).unwrap().steps["a"].sandbox(&Secrets::default());
        let set = sandbox(&format!("{step}instances = \"reuse\"\nrecycle_after = 5\n"));
        assert_eq!(set.recycle_after, 5);
        let unset = sandbox(&format!("{step}instances = \"reuse\"\n"));
        assert_eq!(unset.recycle_after, RECYCLE_AFTER);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 9,
            backoff_ms: 100,
            max_backoff_ms: 1000,
        };
        let ms: Vec<u128> = (1..=6).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
    }
}
