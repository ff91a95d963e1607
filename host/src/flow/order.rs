//! What a flow file's steps must hold together: an order in which every
//! step comes after what it needs (no cycle), and conditions that look
//! into outputs whose schemas say what they compare.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{Action, Condition, FlowStep, INPUT};
use crate::contract::StepContract;

/// Check condition `c` against the schema of the output it looks into (that
/// of flow step `c.step`, already among `done`).
pub(super) fn check_condition(
    c: &Condition,
    done: &[FlowStep],
    contracts: &HashMap<String, &StepContract>,
) -> Result<(), String> {
    match output_schema(&c.step, done, contracts, None)? {
        Some(schema) => c.check(&schema),
        None => Ok(()),
    }
}

/// The JSON Schema of what a path starting at `id` looks into: the output
/// of flow step `id` (among `done`), or with `id` = `input`, the run's
/// input (of type `input_kind`, as the app's steps declare it). `None`
/// when no schema says (a step that outputs nothing declared). `Err` when
/// the output is not JSON, so has no fields to look into.
pub(super) fn output_schema(
    id: &str,
    done: &[FlowStep],
    contracts: &HashMap<String, &StepContract>,
    input_kind: Option<&str>,
) -> Result<Option<Value>, String> {
    let (kind, t) = if id == INPUT {
        let Some(kind) = input_kind else {
            return Ok(None);
        };
        let t = contracts
            .values()
            .find_map(|c| c.consumes.iter().find(|t| t.kind == kind).cloned());
        (kind.to_string(), t)
    } else {
        let Some(from) = done.iter().find(|x| x.id == id) else {
            return Ok(None);
        };
        match &from.action {
            Action::Signal { schema, .. } => return Ok(Some(schema.schema.clone())),
            // A for-each step's output: the array of its step's outputs.
            Action::Command { step } if from.fan.is_some() => {
                let items = from
                    .fan
                    .as_ref()
                    .and_then(|f| f.output.as_ref())
                    .and_then(|k| contracts[step].produced(k))
                    .map_or(json!({}), |t| t.schema.clone());
                return Ok(Some(json!({"type": "array", "items": items})));
            }
            _ => {}
        }
        let Some(kind) = &from.output_kind else {
            return Ok(None);
        };
        // A command's output is its step's first produced type; a hybrid
        // step's, the awaited type as whichever step of the app produces it.
        let t = match &from.action {
            Action::Command { step } => contracts[step].produced(kind).cloned(),
            _ => contracts.values().find_map(|k| k.produced(kind).cloned()),
        };
        (kind.clone(), t)
    };
    let Some(t) = t else {
        return Ok(None);
    };
    if let crate::contract::DataFormat::Other { media_type, .. } = &t.format {
        return Err(format!(
            "the output of {id:?} ({kind}) is {media_type}, not JSON: nothing can look into its fields",
        ));
    }
    Ok(Some(t.schema.clone()))
}

pub(super) fn describe_source(input: &str, steps: &[FlowStep], input_kind: &str) -> String {
    if input == INPUT {
        return format!("the run's input, {input_kind}");
    }
    let from = steps.iter().find(|s| s.id == input);
    match from.map(|s| (&s.action, s.fan.is_some(), &s.output_kind)) {
        Some((Action::Sleep(_), _, _)) => format!(
            "{input:?}, a sleep step, which outputs nothing (to wait for it, put it in `after`)"
        ),
        Some((_, true, _)) => format!(
            "the output of {input:?}, the array of its elements' outputs, which a step takes \
             one by one (`for_each = \"{input}\"`), not whole"
        ),
        Some((_, _, Some(k))) => format!("the output of {input:?}, {k}"),
        _ => format!("the output of {input:?}, which emits nothing"),
    }
}

/// Ids in dependency order (`deps`: each id's dependencies), or a cycle.
pub(super) fn topo_order(deps: &HashMap<String, Vec<String>>) -> Result<Vec<String>, Vec<String>> {
    fn visit(
        id: &str,
        steps: &HashMap<String, Vec<String>>,
        state: &mut HashMap<String, u8>,
        stack: &mut Vec<String>,
        out: &mut Vec<String>,
    ) -> Result<(), Vec<String>> {
        match state.get(id) {
            Some(2) => return Ok(()),
            Some(1) => {
                let start = stack.iter().position(|s| s == id).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(id.to_string());
                return Err(cycle);
            }
            _ => {}
        }
        state.insert(id.to_string(), 1);
        stack.push(id.to_string());
        for dep in &steps[id] {
            visit(dep, steps, state, stack, out)?;
        }
        stack.pop();
        state.insert(id.to_string(), 2);
        out.push(id.to_string());
        Ok(())
    }
    let mut ids: Vec<&String> = deps.keys().collect();
    ids.sort();
    let (mut state, mut out) = (HashMap::new(), Vec::new());
    for id in ids {
        visit(id, deps, &mut state, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}
