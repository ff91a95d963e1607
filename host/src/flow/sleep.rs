//! Sleep steps: a flow step that waits for time to pass (`sleep_ms = N`)
//! or until a time an earlier output names (`until = "ID.field"`, an RFC
//! 3339 time). A sleeping run holds nothing but its timer: the
//! orchestrator parks it in the store and takes it up again when it wakes.

use std::collections::HashMap;

use serde_json::Value;

use super::file::StepFile;
use super::order::output_schema;
use super::path::{FieldPath, types_of};
use super::{Action, FlowStep};
use crate::contract::StepContract;

/// When a sleep step wakes.
#[derive(Debug, Clone, PartialEq)]
pub enum Wake {
    /// This many ms after the step is reached.
    After(u64),
    /// At the RFC 3339 time at this path (at once if it has passed).
    Until(FieldPath),
}

impl Wake {
    /// The epoch ms a step reached at `now` wakes at, given what the run
    /// holds (`value` follows a path into it): `Err` says why the time
    /// cannot be read.
    pub fn at(
        &self,
        now: u64,
        value: impl FnOnce(&FieldPath) -> Option<Value>,
    ) -> Result<u64, String> {
        match self {
            Wake::After(ms) => Ok(now.saturating_add(*ms)),
            Wake::Until(p) => match value(p) {
                Some(Value::String(t)) => crate::clock::epoch_ms(&t)
                    .ok_or_else(|| format!("`{}` is {t:?}, not an RFC 3339 time", p.text)),
                Some(other) => Err(format!(
                    "`{}` is {}, not an RFC 3339 time",
                    p.text,
                    crate::text::clean(&other.to_string(), 200)
                )),
                None => Err(format!("`{}` is missing", p.text)),
            },
        }
    }
}

/// The action of sleep step `id` (`sleep_ms` or `until`), checked: a sleep
/// takes `after` and `when`, and nothing a command or an await takes.
pub(super) fn action(id: &str, s: &StepFile) -> Result<Action, String> {
    let others = [
        ("step", s.step.is_some()),
        ("publish", s.publish.is_some()),
        ("await", s.wait_for.is_some()),
        ("fail_on", s.fail_on.is_some()),
        ("input", s.input.is_some()),
        ("timeout_ms", s.timeout_ms.is_some()),
        ("queue_timeout_ms", s.queue_timeout_ms.is_some()),
        ("retry", s.retry.is_some()),
        ("compensate", s.compensate.is_some()),
        ("for_each", s.for_each.is_some()),
        ("flow", s.flow.is_some()),
    ];
    if let Some((field, _)) = others.iter().find(|(_, given)| *given) {
        return Err(format!(
            "step {id:?}: a sleep step (`sleep_ms` or `until`) takes no `{field}`; it takes \
             `after` and `when` (to wait after a step, put the sleep in its `after`)"
        ));
    }
    match (s.sleep_ms, &s.until) {
        (Some(_), Some(_)) => Err(format!("step {id:?}: give `sleep_ms` or `until`, not both")),
        (Some(0), None) => Err(format!("step {id:?}: `sleep_ms` must be at least 1")),
        (Some(ms), None) => Ok(Action::Sleep(Wake::After(ms))),
        (None, Some(path)) => FieldPath::parse(path)
            .map(|p| Action::Sleep(Wake::Until(p)))
            .map_err(|e| format!("step {id:?}: `until`: {e}")),
        (None, None) => unreachable!("a sleep step has one of them"),
    }
}

/// Check sleep step `s` once what it depends on is typed (`done`): a
/// sleep fits in the flow's timeout, and `until` looks into a field that
/// may hold a time (a string; `format`, where declared, `date-time`).
pub(super) fn check(
    s: &FlowStep,
    wake: &Wake,
    flow_timeout_ms: u64,
    done: &[FlowStep],
    contracts: &HashMap<String, &StepContract>,
    input_kind: &str,
) -> Result<(), String> {
    let p = match wake {
        Wake::After(ms) if *ms >= flow_timeout_ms => {
            return Err(format!(
                "step {:?} sleeps {ms} ms, and the flow times out {flow_timeout_ms} ms after \
                 it starts (`timeout_ms` at the top of the file, which counts sleeps): the \
                 run would time out first",
                s.id
            ));
        }
        Wake::After(_) => return Ok(()),
        Wake::Until(p) => p,
    };
    let Some(schema) = output_schema(&p.step, done, contracts, Some(input_kind))
        .map_err(|e| format!("step {:?}: `until`: {e}", s.id))?
    else {
        return Ok(());
    };
    let Some(field) = p
        .schema_in(&schema)
        .map_err(|e| format!("step {:?}: `until`: {e}", s.id))?
    else {
        return Ok(());
    };
    let types = types_of(field);
    if !types.is_empty() && !types.contains(&"string") {
        return Err(format!(
            "step {:?}: `until`: `{}` is {}, not a string: it cannot hold an RFC 3339 time",
            s.id,
            p.text,
            types.join(" or ")
        ));
    }
    match field.get("format").and_then(Value::as_str) {
        Some(f) if f != "date-time" => Err(format!(
            "step {:?}: `until`: `{}` is a string of format {f:?}, not \"date-time\"",
            s.id, p.text
        )),
        _ => Ok(()),
    }
}
