//! What a flow file's steps must hold together: an order in which every
//! step comes after what it needs (no cycle), and conditions that look
//! into outputs whose schemas say what they compare.

use std::collections::HashMap;

use super::{Action, Condition, FlowStep, INPUT};
use crate::contract::StepContract;

/// Check condition `c` against the schema of the output it looks into (that
/// of flow step `c.step`, already among `done`).
pub(super) fn check_condition(
    c: &Condition,
    done: &[FlowStep],
    contracts: &HashMap<String, &StepContract>,
) -> Result<(), String> {
    let Some(from) = done.iter().find(|x| x.id == c.step) else {
        return Ok(());
    };
    if let Action::Signal { schema, .. } = &from.action {
        return c.check(&schema.schema);
    }
    let Some(kind) = &from.output_kind else {
        return Ok(());
    };
    // A command's output is its step's first produced type; a hybrid
    // step's, the awaited type as whichever step of the app produces it.
    let produced = match &from.action {
        Action::Command { step } => contracts[step].produced(kind),
        Action::Hybrid { .. } | Action::Signal { .. } => {
            contracts.values().find_map(|k| k.produced(kind))
        }
    };
    let Some(t) = produced else {
        return Ok(());
    };
    if let crate::contract::DataFormat::Other { media_type, .. } = &t.format {
        return Err(format!(
            "the output of {:?} ({kind}) is {media_type}, not JSON: a condition cannot look into its fields",
            c.step
        ));
    }
    c.check(&t.schema)
}

pub(super) fn describe_source(input: &str, steps: &[FlowStep], input_kind: &str) -> String {
    if input == INPUT {
        return format!("the run's input, {input_kind}");
    }
    match steps
        .iter()
        .find(|s| s.id == input)
        .and_then(|s| s.output_kind.clone())
    {
        Some(k) => format!("the output of {input:?}, {k}"),
        None => format!("the output of {input:?}, which emits nothing"),
    }
}

/// Ids in dependency order, or a cycle.
pub(super) fn topo_order(steps: &HashMap<String, FlowStep>) -> Result<Vec<String>, Vec<String>> {
    fn visit(
        id: &str,
        steps: &HashMap<String, FlowStep>,
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
        for dep in &steps[id].after {
            visit(dep, steps, state, stack, out)?;
        }
        stack.pop();
        state.insert(id.to_string(), 2);
        out.push(id.to_string());
        Ok(())
    }
    let mut ids: Vec<&String> = steps.keys().collect();
    ids.sort();
    let (mut state, mut out) = (HashMap::new(), Vec::new());
    for id in ids {
        visit(id, steps, &mut state, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}
