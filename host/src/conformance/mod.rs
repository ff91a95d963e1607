//! The conformance kit (`troupe conformance COMPONENT.wasm`): does a
//! component honour the `troupe:step` world, before it meets anyone else's
//! steps?
//!
//! The component is loaded in the same sandbox `troupe run` uses, with the
//! default limits and no grants, and put through these checks, in order
//! (each [`Rule`] has a case that breaks it under `tests/conformance/`):
//!
//! | rule | passes when |
//! |---|---|
//! | `imports` | everything the component imports is provided by the host (WASI p2, `troupe:step/host`) |
//! | `world` | it is a component exporting `describe` and `handle` of `troupe:step` |
//! | `contract` | `describe` returns a well-formed contract (names, semver, valid JSON Schemas) that consumes something |
//! | `samples` | for each consumed type, data generated from its schema is handled without a trap |
//! | `emits-declared` | every event emitted is of a type declared in `produces` |
//! | `emits-valid` | every event emitted is valid against its declared schema |
//! | `rejects-malformed` | data that is not JSON is answered with `reject`, not a trap or a retry |
//! | `limits` | nothing above ran past the default limits (time, memory, output) |
//! | `deterministic` | when the step declares itself deterministic, the same event twice gives the same output |
//!
//! A rule that cannot be run because an earlier one failed is reported as
//! skipped, and so is a consumed type whose schema the sample generator
//! cannot satisfy.

mod samples;

use std::path::Path;

use serde::Serialize;

use crate::contract::{DataFormat, Violation};
use crate::event::{Event, JSON};
use crate::protocol::FailureClass;
use crate::runtime::cache::ArtifactCache;
use crate::runtime::config::SandboxConfig;
use crate::runtime::step::{Failure, LoadedStep};
use crate::runtime::{Runtime, RuntimeError};
use crate::world::Emit;

pub use samples::sample;

/// One rule of the kit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    Imports,
    World,
    Contract,
    Samples,
    EmitsDeclared,
    EmitsValid,
    RejectsMalformed,
    Limits,
    Deterministic,
}

impl Rule {
    pub const ALL: [Rule; 9] = [
        Rule::Imports,
        Rule::World,
        Rule::Contract,
        Rule::Samples,
        Rule::EmitsDeclared,
        Rule::EmitsValid,
        Rule::RejectsMalformed,
        Rule::Limits,
        Rule::Deterministic,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Rule::Imports => "imports",
            Rule::World => "world",
            Rule::Contract => "contract",
            Rule::Samples => "samples",
            Rule::EmitsDeclared => "emits-declared",
            Rule::EmitsValid => "emits-valid",
            Rule::RejectsMalformed => "rejects-malformed",
            Rule::Limits => "limits",
            Rule::Deterministic => "deterministic",
        }
    }

    pub fn parse(s: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.id() == s)
    }
}

/// The verdict of one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub rule: Rule,
    pub verdict: Verdict,
    pub detail: String,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub component: String,
    pub step: Option<String>,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.verdict != Verdict::Fail)
    }

    /// The rules that failed.
    pub fn failed(&self) -> Vec<Rule> {
        self.checks
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .map(|c| c.rule)
            .collect()
    }

    fn set(&mut self, rule: Rule, verdict: Verdict, detail: impl Into<String>) {
        self.checks.push(Check {
            rule,
            verdict,
            detail: detail.into(),
        });
    }

    fn skip_rest(&mut self, from: Rule, why: &str) {
        for r in Rule::ALL.into_iter().filter(|r| *r >= from) {
            self.set(r, Verdict::Skip, why);
        }
    }
}

/// The configuration a component is checked under: the defaults of
/// `troupe.toml`, fresh instances, nothing granted.
fn default_config() -> SandboxConfig {
    SandboxConfig::default()
}

/// Run every rule against the component at `path`, compiling through the
/// artifact cache in `cache_dir`.
pub fn check(rt: &Runtime, path: &Path, cache_dir: &Path) -> Result<Report, RuntimeError> {
    let mut report = Report {
        component: path.display().to_string(),
        step: None,
        checks: Vec::new(),
    };
    let loaded = match ArtifactCache::new(rt.engine(), cache_dir).load(rt.engine(), path) {
        Ok(l) => l,
        Err(e @ RuntimeError::Read { .. }) => return Err(e),
        Err(e) => {
            report.set(Rule::Imports, Verdict::Skip, "not a component");
            report.set(Rule::World, Verdict::Fail, e.to_string());
            report.skip_rest(Rule::Contract, "not a component");
            return Ok(report);
        }
    };
    let imports: Vec<String> = loaded
        .component
        .component_type()
        .imports(rt.engine())
        .map(|(name, _)| name.to_string())
        .collect();
    // Log lines name the step by its file, as they would in an app.
    let label = path.file_stem().map_or_else(
        || "conformance".into(),
        |s| s.to_string_lossy().into_owned(),
    );
    let step = match LoadedStep::load(rt, &label, &loaded.component, default_config()) {
        Ok(s) => s,
        Err(RuntimeError::Link { error, .. }) => {
            report.set(Rule::Imports, Verdict::Fail, format!("{error:#}"));
            report.skip_rest(Rule::World, "the component cannot be linked");
            return Ok(report);
        }
        Err(e) => {
            report.set(Rule::Imports, Verdict::Pass, imports_detail(&imports));
            match e {
                RuntimeError::World { error, .. } => {
                    report.set(Rule::World, Verdict::Fail, format!("{error:#}"));
                    report.skip_rest(Rule::Contract, "not a step");
                }
                other => {
                    let why = match other {
                        RuntimeError::Contract { error, .. } => error.to_string(),
                        RuntimeError::Describe { error, .. } => format!("describe failed: {error}"),
                        e => e.to_string(),
                    };
                    report.set(Rule::World, Verdict::Pass, "exports describe and handle");
                    report.set(Rule::Contract, Verdict::Fail, why);
                    report.skip_rest(Rule::Samples, "no usable contract");
                }
            }
            return Ok(report);
        }
    };
    report.set(Rule::Imports, Verdict::Pass, imports_detail(&imports));
    report.set(Rule::World, Verdict::Pass, "exports describe and handle");
    let c = &step.contract;
    report.step = Some(c.name.clone());
    if c.consumes.is_empty() {
        report.set(
            Rule::Contract,
            Verdict::Fail,
            "consumes no event type: the host would never deliver to it",
        );
        report.skip_rest(Rule::Samples, "no consumed type");
        return Ok(report);
    }
    report.set(
        Rule::Contract,
        Verdict::Pass,
        format!(
            "{} {}: consumes {}; produces {}",
            c.name,
            c.version,
            kinds(&c.consumes),
            if c.produces.is_empty() {
                "nothing".into()
            } else {
                kinds(&c.produces)
            }
        ),
    );
    run_behaviour(&step, &mut report);
    Ok(report)
}

fn kinds(types: &[std::sync::Arc<crate::contract::EventType>]) -> String {
    types
        .iter()
        .map(|t| format!("{}@{}", t.kind, t.version))
        .collect::<Vec<_>>()
        .join(", ")
}

fn imports_detail(imports: &[String]) -> String {
    if imports.is_empty() {
        "imports nothing".into()
    } else {
        format!("{} imports, all provided", imports.len())
    }
}

/// What one call gave.
type Outcome = Result<Vec<Emit>, Failure>;

fn run_behaviour(step: &LoadedStep, report: &mut Report) {
    let c = &step.contract;
    let mut traps = Vec::new();
    let mut limits = Vec::new();
    let mut undeclared = Vec::new();
    let mut invalid = Vec::new();
    let mut samples_run = Vec::new();
    let mut unsatisfiable = Vec::new();
    let mut nondeterministic = Vec::new();
    let mut malformed_ok = Vec::new();
    let mut malformed_bad = Vec::new();

    // Traps and limits met while handling valid samples.
    let note =
        |kind: &str, outcome: &Outcome, traps: &mut Vec<String>, limits: &mut Vec<String>| {
            if let Err(Failure::Failed(f)) = outcome {
                match f.class {
                    FailureClass::Trap => traps.push(format!("{kind}: {}", f.message)),
                    FailureClass::Limit | FailureClass::Timeout => {
                        limits.push(format!("{kind}: {}", f.message))
                    }
                    _ => {}
                }
            }
        };

    for t in &c.consumes {
        let data = sample(&t.schema);
        let event = |bytes: Vec<u8>| {
            let mut e = Event::new(&t.kind, "troupe://conformance", bytes);
            e.schema = Some(t.urn.clone());
            e.subject = Some("conformance".into());
            e
        };
        // A sample that passes the step's own input gate: JSON, or for a
        // type of another media type the string the schema describes (its
        // bytes, or what its base64 holds).
        let input = match (&t.format, &data) {
            (DataFormat::Other { media_type, base64 }, serde_json::Value::String(text)) => {
                use base64::Engine as _;
                let bytes = if *base64 {
                    base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .unwrap_or_default()
                } else {
                    text.clone().into_bytes()
                };
                let mut e = event(bytes);
                e.content_type = media_type.clone();
                e
            }
            _ => event(serde_json::to_vec(&data).expect("JSON")),
        };
        if c.check_input(&input).is_err() {
            unsatisfiable.push(t.kind.clone());
        } else {
            let first = step.handle(&input, 1);
            note(&t.kind, &first, &mut traps, &mut limits);
            if let Ok(emits) = &first {
                for e in emits {
                    let ct = e.content_type.clone().unwrap_or_else(|| JSON.to_string());
                    match c.check_output(&e.kind, e.subject.as_deref(), &ct, &e.data) {
                        Ok(_) => {}
                        Err(Violation::Undeclared(k)) => {
                            undeclared.push(format!("{} -> {k}", t.kind))
                        }
                        Err(v) => invalid.push(v.to_string()),
                    }
                }
            }
            if c.deterministic {
                let second = step.handle(&input, 1);
                note(&t.kind, &second, &mut traps, &mut limits);
                if !same(&first, &second) {
                    nondeterministic.push(t.kind.clone());
                }
            }
            samples_run.push(t.kind.clone());
        }
        // Data the host's gate would stop; the step must still not trap:
        // not JSON, or for a text type, not UTF-8 (any bytes are some
        // base64, so a binary type has no such data).
        let junk = match &t.format {
            DataFormat::Json => event(b"\x00 this is not JSON {".to_vec()),
            DataFormat::Other { base64: false, .. } => event(b"\xff\xfe not UTF-8".to_vec()),
            DataFormat::Other { base64: true, .. } => continue,
        };
        match step.handle(&junk, 1) {
            Err(f) if f.class() == Some(FailureClass::Rejected) => {
                malformed_ok.push(t.kind.clone())
            }
            Err(f) => malformed_bad.push(format!("{}: {f}", t.kind)),
            Ok(_) => malformed_bad.push(format!("{}: accepted and emitted events", t.kind)),
        }
    }

    let unsat = if unsatisfiable.is_empty() {
        String::new()
    } else {
        format!(
            " (no sample could be generated for {})",
            unsatisfiable.join(", ")
        )
    };
    if samples_run.is_empty() {
        report.set(
            Rule::Samples,
            Verdict::Skip,
            format!("nothing to run{unsat}"),
        );
    } else if !traps.is_empty() {
        report.set(Rule::Samples, Verdict::Fail, traps.join("; "));
    } else {
        report.set(
            Rule::Samples,
            Verdict::Pass,
            format!("handled samples of {}{unsat}", samples_run.join(", ")),
        );
    }
    let judge = |problems: &[String], ok: &str| {
        if samples_run.is_empty() {
            (Verdict::Skip, "no sample was handled".to_string())
        } else if problems.is_empty() {
            (Verdict::Pass, ok.to_string())
        } else {
            (Verdict::Fail, problems.join("; "))
        }
    };
    let (v, d) = judge(&undeclared, "every emitted type is declared");
    report.set(Rule::EmitsDeclared, v, d);
    let (v, d) = judge(&invalid, "every emitted event follows its schema");
    report.set(Rule::EmitsValid, v, d);
    if malformed_bad.is_empty() {
        report.set(
            Rule::RejectsMalformed,
            Verdict::Pass,
            "non-JSON data is rejected",
        );
    } else {
        report.set(
            Rule::RejectsMalformed,
            Verdict::Fail,
            malformed_bad.join("; "),
        );
    }
    if limits.is_empty() {
        report.set(
            Rule::Limits,
            Verdict::Pass,
            "within 64 MiB, 1000 ms and 100 events per message",
        );
    } else {
        report.set(Rule::Limits, Verdict::Fail, limits.join("; "));
    }
    if !c.deterministic {
        report.set(
            Rule::Deterministic,
            Verdict::Skip,
            "the step does not declare itself deterministic",
        );
    } else if samples_run.is_empty() {
        report.set(Rule::Deterministic, Verdict::Skip, "no sample was handled");
    } else if nondeterministic.is_empty() {
        report.set(
            Rule::Deterministic,
            Verdict::Pass,
            "the same event twice gave the same output",
        );
    } else {
        report.set(
            Rule::Deterministic,
            Verdict::Fail,
            format!(
                "declares itself deterministic, but the same {} gave different output",
                nondeterministic.join(", ")
            ),
        );
    }
}

/// Same output: same types, subjects and data (or the same kind of error).
fn same(a: &Outcome, b: &Outcome) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(p, q)| p.kind == q.kind && p.subject == q.subject && p.data == q.data)
        }
        (Err(x), Err(y)) => std::mem::discriminant(x) == std::mem::discriminant(y),
        _ => false,
    }
}
