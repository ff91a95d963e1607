//! Flow files: orchestration definitions, one TOML file per flow under the
//! app's `flows/` folder.
//!
//! A flow is a graph of flow steps. Each flow step either sends a command to
//! a step of the app (`step = "NAME"`) or hands work to the choreography and
//! waits for it (`publish` + `await`: a hybrid step). A flow step's input is
//! the run's input (`input = "input"`) or the output of an earlier flow step
//! (`input = "ID"`); `after` adds dependencies (a join); `when` runs it only
//! if a condition on an earlier output holds; `compensate` names the step
//! that undoes it if a later step fails for good. The full reference is
//! `docs/flows.md`.
//!
//! [`Flow::parse`] validates a flow against the app's contracts: unknown
//! steps, inputs whose event type the step does not consume, conditions on
//! steps that do not run before, and cycles are errors that name the file
//! and the line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::contract::{StepContract, is_kind};
use crate::retry::RetryPolicy;

mod child;
mod condition;
mod fan;
mod file;
mod order;
mod path;
pub mod signal;
mod sleep;
mod step;

pub use child::{CHILD_GRACE_MS, FlowText};
pub use condition::{Condition, Op};
pub use fan::{Fan, Tolerance};
use file::FlowFile;
use order::{check_condition, describe_source, topo_order};
pub use path::FieldPath;
pub use signal::SignalSchema;
pub use sleep::Wake;

/// The flow input pseudo-step.
pub const INPUT: &str = "input";

/// Why a flow file is refused.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct FlowError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

/// What a flow step does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a command to this step of the app and take its reply.
    Command { step: String },
    /// Publish an event of type `kind` into the choreography, then wait for
    /// an event of type `done` (or `failed`) with the run's correlation id.
    Hybrid {
        kind: String,
        done: String,
        failed: Option<String>,
    },
    /// Wait for signal `name` to the run (`POST
    /// /v1/runs/{id}/signals/{name}`); its data, checked against `schema`,
    /// is the step's output.
    Signal { name: String, schema: SignalSchema },
    /// Wait for time to pass (`sleep_ms`) or until a time (`until`); sends
    /// nothing, outputs nothing.
    Sleep(Wake),
    /// Start a run of flow `flow` of the app with the step's input, and
    /// take that run's output.
    Child { flow: String },
}

/// A compensation: run `step` with the output of `input` (default: the
/// compensated step's own output).
#[derive(Debug, Clone, PartialEq)]
pub struct Compensation {
    pub step: String,
    pub input: String,
}

/// One checked flow step.
#[derive(Debug, Clone)]
pub struct FlowStep {
    pub id: String,
    pub action: Action,
    /// `input` or the id of the flow step whose output is the input.
    pub input: String,
    /// Every flow step that must be settled first (input, `after`, `when`).
    pub after: Vec<String>,
    pub when: Option<Condition>,
    /// The line of `when` (of the step when it has none).
    pub when_line: usize,
    /// How long a command may run once a worker starts it (a hybrid
    /// step: until its awaited event).
    pub timeout_ms: u64,
    /// How long a command may wait for a worker to start it (0 for a
    /// hybrid step, which sends no command).
    pub queue_timeout_ms: u64,
    pub retry: RetryPolicy,
    pub compensate: Option<Compensation>,
    /// `for_each`: one command per element of an array, not one command.
    pub fan: Option<Fan>,
    /// The event type this flow step outputs (what the next steps get).
    pub output_kind: Option<String>,
    /// The event type of the command it sends (its input).
    pub input_kind: String,
    pub line: usize,
}

/// A checked flow.
#[derive(Debug, Clone)]
pub struct Flow {
    pub name: String,
    pub path: PathBuf,
    /// The event type of a run's input.
    pub input: String,
    pub timeout_ms: u64,
    /// Flow steps in an order where every step comes after its dependencies.
    pub steps: Vec<FlowStep>,
    /// The flow step whose output is a run's output (`output`, else the
    /// one last step; `None` when there are several).
    pub output: Option<String>,
}

/// The default time a flow step may take, ms.
pub const DEFAULT_STEP_TIMEOUT_MS: u64 = 10_000;
/// The default time a command may wait in the queue before a worker
/// starts it, ms.
pub const DEFAULT_QUEUE_TIMEOUT_MS: u64 = 30_000;
/// The default time a run may take, ms.
pub const DEFAULT_RUN_TIMEOUT_MS: u64 = 60_000;
/// The longest any `timeout_ms` may be: ten years, ms.
pub const MAX_TIMEOUT_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// `Err` naming `field` if `ms` is longer than [`MAX_TIMEOUT_MS`].
fn within_max(field: &str, ms: Option<u64>) -> Result<(), String> {
    match ms {
        Some(ms) if ms > MAX_TIMEOUT_MS => Err(format!(
            "`{field}` is {ms} ms, more than the longest a flow may wait ({MAX_TIMEOUT_MS} ms, ten years)"
        )),
        _ => Ok(()),
    }
}

/// A flow file's TOML, read into its shapes (not yet checked).
fn read_file(path: &Path, text: &str) -> Result<FlowFile, FlowError> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(text, s.start));
        let source = text
            .lines()
            .nth(line.saturating_sub(1))
            .unwrap_or("")
            .trim();
        let message = if source.is_empty() {
            e.message().to_string()
        } else {
            format!("{} (in `{source}`)", e.message())
        };
        FlowError {
            path: path.to_path_buf(),
            line,
            message,
        }
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

impl Flow {
    /// Every `*.toml` in `dir`, checked against the contracts of `steps`.
    pub fn load_dir(
        dir: &Path,
        steps: &HashMap<String, &StepContract>,
    ) -> Result<Vec<Flow>, FlowError> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(Vec::new());
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        let mut files = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| FlowError {
                path: path.clone(),
                line: 0,
                message: e.to_string(),
            })?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push(FlowText { name, path, text });
        }
        Flow::parse_all(&files, steps)
    }

    /// Check a flow given as text, on its own (a child flow step in it
    /// names a flow it does not know: [`Flow::parse_all`] reads an app's).
    pub fn parse(
        name: &str,
        path: &Path,
        text: &str,
        contracts: &HashMap<String, &StepContract>,
    ) -> Result<Flow, FlowError> {
        Flow::parse_with(name, path, text, contracts, &HashMap::new())
    }

    /// Check a flow given as text; `flows` are those its child steps may
    /// call, already checked.
    fn parse_with(
        name: &str,
        path: &Path,
        text: &str,
        contracts: &HashMap<String, &StepContract>,
        flows: &HashMap<String, Flow>,
    ) -> Result<Flow, FlowError> {
        let err = |line: usize, message: String| FlowError {
            path: path.to_path_buf(),
            line,
            message,
        };
        let file = read_file(path, text)?;
        let input_line = line_of(text, file.input.span().start);
        let input_kind = file.input.get_ref().clone();
        if !is_kind(&input_kind) {
            return Err(err(
                input_line,
                format!("`input` {input_kind:?} is not an event type"),
            ));
        }
        within_max("timeout_ms", file.timeout_ms).map_err(|m| err(1, m))?;
        if file.steps.is_empty() {
            return Err(err(
                1,
                "a flow needs at least one `[steps.ID]` table".into(),
            ));
        }
        let mut out: HashMap<String, FlowStep> = HashMap::new();
        // Signal names awaited, by the step that awaits each.
        let mut signals: HashMap<String, String> = HashMap::new();
        for (id, spanned) in &file.steps {
            let line = line_of(text, spanned.span().start);
            let step = step::read(id, spanned.get_ref(), line, text, contracts, &mut signals)
                .map_err(|(line, m)| err(line, m))?;
            out.insert(id.clone(), step);
        }
        // Every reference names a flow step.
        for s in out.values() {
            for a in &s.after {
                if !out.contains_key(a) {
                    return Err(err(
                        s.line,
                        format!(
                            "step {:?} depends on {a:?}, which is not a step of this flow",
                            s.id
                        ),
                    ));
                }
            }
            if let Some(c) = &s.compensate {
                if !contracts.contains_key(&c.step) {
                    return Err(err(
                        s.line,
                        format!(
                            "step {:?}: compensation step {:?} is not a step of the app",
                            s.id, c.step
                        ),
                    ));
                }
                if c.input != INPUT && !out.contains_key(&c.input) {
                    return Err(err(
                        s.line,
                        format!(
                            "step {:?}: compensation input {:?} is not a step of this flow",
                            s.id, c.input
                        ),
                    ));
                }
            }
        }
        let deps: HashMap<String, Vec<String>> = out
            .iter()
            .map(|(id, s)| (id.clone(), s.after.clone()))
            .collect();
        let order = topo_order(&deps).map_err(|cycle| {
            let line = out[&cycle[0]].line;
            err(
                line,
                format!("the flow has a cycle: {}", cycle.join(" -> ")),
            )
        })?;
        // Wire the types, in dependency order.
        let mut steps: Vec<FlowStep> = Vec::new();
        for id in order {
            let mut s = out.remove(&id).expect("ordered ids exist");
            let upstream = if s.input == INPUT {
                Some(input_kind.clone())
            } else {
                steps
                    .iter()
                    .find(|x| x.id == s.input)
                    .and_then(|x| x.output_kind.clone())
            };
            match &s.action {
                Action::Command { step } if s.fan.is_some() => {
                    let c = contracts[step];
                    let fan = s.fan.as_ref().expect("matched");
                    let kind = fan::element_kind(&s, fan, c, &steps, contracts, &input_kind)
                        .map_err(|m| err(s.line, m))?;
                    s.input_kind = kind;
                    let output = c.produces.first().map(|t| t.kind.clone());
                    if let Some(fan) = &mut s.fan {
                        fan.output = output;
                    }
                }
                Action::Command { step } => {
                    let c = contracts[step];
                    let Some(kind) = upstream.filter(|k| c.consumed_kinds().contains(k)) else {
                        return Err(err(
                            s.line,
                            format!(
                                "step {:?}: its input ({}) is not an event type step {step:?} consumes ({})",
                                s.id,
                                describe_source(&s.input, &steps, &input_kind),
                                c.consumed_kinds().join(", ")
                            ),
                        ));
                    };
                    s.input_kind = kind;
                    s.output_kind = c.produces.first().map(|t| t.kind.clone());
                }
                Action::Hybrid { kind, done, failed } => {
                    for k in [Some(kind), Some(done), failed.as_ref()]
                        .into_iter()
                        .flatten()
                    {
                        if !is_kind(k) {
                            return Err(err(
                                s.line,
                                format!("step {:?}: {k:?} is not an event type", s.id),
                            ));
                        }
                    }
                    s.input_kind = kind.clone();
                    s.output_kind = Some(done.clone());
                }
                Action::Child { flow } => {
                    let Some(callee) = flows.get(flow) else {
                        return Err(err(
                            s.line,
                            format!(
                                "step {:?}: flow {flow:?} is not known here (a flow's child \
                                 steps are checked with the app's other flows)",
                                s.id
                            ),
                        ));
                    };
                    let describe = || describe_source(&s.input, &steps, &input_kind);
                    let described = describe();
                    child::wire(&mut s, callee, upstream, || described.clone())
                        .map_err(|m| err(s.line, m))?;
                }
                // Its output is the signal's data: for `when`, not an
                // event another step takes as its input.
                Action::Signal { .. } => {}
                Action::Sleep(wake) => {
                    let timeout = file.timeout_ms.unwrap_or(DEFAULT_RUN_TIMEOUT_MS);
                    sleep::check(&s, wake, timeout, &steps, contracts, &input_kind)
                        .map_err(|m| err(s.line, m))?;
                }
            }
            if let Some(c) = &s.when {
                check_condition(c, &steps, contracts)
                    .map_err(|m| err(s.when_line, format!("step {:?}: `when`: {m}", s.id)))?;
            }
            if let Some(c) = &s.compensate {
                let kind = if c.input == INPUT {
                    Some(input_kind.clone())
                } else if c.input == s.id {
                    // A for-each step's elements are undone one by one.
                    match &s.fan {
                        Some(f) => f.output.clone(),
                        None => s.output_kind.clone(),
                    }
                } else {
                    steps
                        .iter()
                        .find(|x| x.id == c.input)
                        .and_then(|x| x.output_kind.clone())
                };
                let consumes = contracts[&c.step].consumed_kinds();
                if !kind.as_ref().is_some_and(|k| consumes.contains(k)) {
                    return Err(err(
                        s.line,
                        format!(
                            "step {:?}: compensation step {:?} consumes {}, but its input is {}",
                            s.id,
                            c.step,
                            consumes.join(", "),
                            kind.unwrap_or_else(|| "nothing".into())
                        ),
                    ));
                }
            }
            steps.push(s);
        }
        let output = child::output_of(&file, text, &steps).map_err(|(l, m)| err(l, m))?;
        Ok(Flow {
            name: name.to_string(),
            path: path.to_path_buf(),
            input: input_kind,
            timeout_ms: file.timeout_ms.unwrap_or(DEFAULT_RUN_TIMEOUT_MS),
            steps,
            output,
        })
    }

    /// The flow step `id`.
    pub fn step(&self, id: &str) -> Option<&FlowStep> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// The steps of the app whose commands take the run's input whole:
    /// what a run's input must be valid for.
    pub fn input_takers(&self) -> impl Iterator<Item = &str> {
        self.steps.iter().filter_map(|s| match &s.action {
            Action::Command { step } if s.input == INPUT && s.fan.is_none() => Some(step.as_str()),
            _ => None,
        })
    }

    /// The step that awaits signal `name`, and the signal's schema.
    pub fn signal(&self, name: &str) -> Option<(&FlowStep, &SignalSchema)> {
        self.steps.iter().find_map(|s| match &s.action {
            Action::Signal { name: n, schema } if n == name => Some((s, schema)),
            _ => None,
        })
    }

    /// The names of the signals its steps await.
    pub fn signals(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Signal { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }
}
