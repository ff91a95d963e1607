//! Child flow steps: `flow = "other"` starts a run of another flow of the
//! app with the step's input, and completes with that run's output (the
//! output of the step the child flow's `output` names, by default its one
//! last step).
//!
//! A caller is typed by what its callees take and give, so an app's flows
//! are read callees first ([`Flow::parse_all`]); flows that call each other
//! in a cycle would start runs without end, and are refused.

use std::collections::HashMap;
use std::path::PathBuf;

use super::file::{FlowFile, StepFile};
use super::order::topo_order;
use super::{Action, Flow, FlowError, FlowStep, line_of};
use crate::contract::StepContract;

/// Time a child step waits beyond its child flow's own `timeout_ms` by
/// default (the child's end reaches the parent through the broker), ms.
pub const CHILD_GRACE_MS: u64 = 5_000;

/// One flow file of an app: its name, path and text.
pub struct FlowText {
    pub name: String,
    pub path: PathBuf,
    pub text: String,
}

impl Flow {
    /// Check every flow of an app, callees before their callers.
    pub fn parse_all(
        files: &[FlowText],
        contracts: &HashMap<String, &StepContract>,
    ) -> Result<Vec<Flow>, FlowError> {
        let by_name: HashMap<&str, &FlowText> =
            files.iter().map(|f| (f.name.as_str(), f)).collect();
        // Who calls whom: each file's child steps, checked to name a flow.
        let mut calls: HashMap<String, Vec<String>> = HashMap::new();
        for f in files {
            let file = super::read_file(&f.path, &f.text)?;
            let mut callees = Vec::new();
            for (id, spanned) in &file.steps {
                let Some(callee) = &spanned.get_ref().flow else {
                    continue;
                };
                let name = callee.get_ref();
                if !by_name.contains_key(name.as_str()) {
                    let mut known: Vec<&str> = by_name.keys().copied().collect();
                    known.sort();
                    return Err(FlowError {
                        path: f.path.clone(),
                        line: line_of(&f.text, callee.span().start),
                        message: format!(
                            "step {id:?}: the app has no flow {name:?} (it has: {})",
                            known.join(", ")
                        ),
                    });
                }
                callees.push(name.clone());
            }
            calls.insert(f.name.clone(), callees);
        }
        let order = topo_order(&calls).map_err(|cycle| {
            let f = by_name[cycle[0].as_str()];
            FlowError {
                path: f.path.clone(),
                line: 1,
                message: format!(
                    "flows call each other in a cycle ({}): each run would start another \
                     without end",
                    cycle.join(" -> ")
                ),
            }
        })?;
        let mut done: HashMap<String, Flow> = HashMap::new();
        for name in order {
            let f = by_name[name.as_str()];
            let flow = Flow::parse_with(&f.name, &f.path, &f.text, contracts, &done)?;
            done.insert(name, flow);
        }
        // In the order given.
        Ok(files
            .iter()
            .map(|f| done.remove(&f.name).expect("every flow was read"))
            .collect())
    }

    /// The flow step whose output is a run's output, if the flow has one.
    pub fn output_step(&self) -> Option<&FlowStep> {
        self.output.as_deref().and_then(|id| self.step(id))
    }
}

/// The action of child step `id` (`flow = "NAME"`), with the fields it
/// cannot take refused.
pub(super) fn action(id: &str, s: &StepFile, callee: &str) -> Result<Action, String> {
    let others = [
        ("step", s.step.is_some()),
        ("publish", s.publish.is_some()),
        ("await", s.wait_for.is_some()),
        ("fail_on", s.fail_on.is_some()),
        ("queue_timeout_ms", s.queue_timeout_ms.is_some()),
        ("for_each", s.for_each.is_some()),
        ("sleep_ms", s.sleep_ms.is_some()),
        ("until", s.until.is_some()),
    ];
    if let Some((field, _)) = others.iter().find(|(_, given)| *given) {
        return Err(format!(
            "step {id:?}: a child flow step (`flow`) takes no `{field}`; it takes `input`, \
             `after`, `when`, `timeout_ms` and `retry`"
        ));
    }
    if s.compensate.is_some() {
        return Err(format!(
            "step {id:?}: a child flow step is undone by its child run's own compensations; \
             it takes no `compensate`"
        ));
    }
    Ok(Action::Child {
        flow: callee.to_string(),
    })
}

/// Type child step `s` by its callee: its input (of type `upstream`, from
/// `describe`) must be the callee's input type; its output is the
/// callee's output; its timeout, when not given, the callee's plus
/// [`CHILD_GRACE_MS`].
pub(super) fn wire(
    s: &mut FlowStep,
    callee: &Flow,
    upstream: Option<String>,
    describe: impl Fn() -> String,
) -> Result<(), String> {
    if upstream.as_deref() != Some(callee.input.as_str()) {
        return Err(format!(
            "step {:?}: its input ({}) is not what flow {:?} takes ({})",
            s.id,
            describe(),
            callee.name,
            callee.input
        ));
    }
    if callee.output.is_none() {
        return Err(format!(
            "step {:?}: flow {:?} has several last steps: give it `output = \"ID\"` (at the \
             top of its file) to say which step's output is its run's output",
            s.id, callee.name
        ));
    }
    s.input_kind = callee.input.clone();
    s.output_kind = callee.output_step().and_then(|o| o.output_kind.clone());
    if s.timeout_ms == 0 {
        s.timeout_ms = callee.timeout_ms.saturating_add(CHILD_GRACE_MS);
    }
    Ok(())
}

/// The step whose output is a run's output: `output` (at `line`) if the
/// file gives it, else the one step nothing comes after; `None` if there
/// are several.
pub(super) fn output_of(
    file: &FlowFile,
    text: &str,
    steps: &[FlowStep],
) -> Result<Option<String>, (usize, String)> {
    if let Some(o) = &file.output {
        let id = o.get_ref();
        if steps.iter().all(|s| &s.id != id) {
            return Err((
                line_of(text, o.span().start),
                format!("`output` {id:?} is not a step of this flow"),
            ));
        }
        return Ok(Some(id.clone()));
    }
    let last: Vec<&FlowStep> = steps
        .iter()
        .filter(|s| steps.iter().all(|x| !x.after.contains(&s.id)))
        .collect();
    Ok(match last.as_slice() {
        [one] => Some(one.id.clone()),
        _ => None,
    })
}
