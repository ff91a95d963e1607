//! For-each steps: one command per element of an array in an earlier
//! output (`for_each = "ID.field"`), at most `max_parallel` at once; the
//! step's output is the array of their outputs, in the input's order. Up
//! to `tolerate_failures` elements may fail (their place in the output is
//! `null`) before the step fails.

use std::collections::HashMap;

use serde_json::Value;

use super::file::{StepFile, TolerateFile};
use super::order::output_schema;
use super::path::{FieldPath, resolve, types_of};
use super::{Action, FlowStep};
use crate::contract::StepContract;

/// The default `max_parallel`.
pub const DEFAULT_MAX_PARALLEL: u32 = 10;
/// The largest `max_parallel`.
pub const MAX_PARALLEL: u32 = 10_000;

/// How a for-each step sends its elements.
#[derive(Debug, Clone, PartialEq)]
pub struct Fan {
    /// The array.
    pub over: FieldPath,
    /// Elements in flight at once.
    pub max_parallel: u32,
    pub tolerate: Tolerance,
    /// `element_type`, as written.
    pub element_type: Option<String>,
    /// The event type each element's command outputs (its step's first
    /// produced type), if it outputs one.
    pub output: Option<String>,
}

/// How many elements may fail before the step fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    Count(u32),
    /// A percentage of the elements.
    Percent(u32),
}

impl Tolerance {
    /// Whether `failed` failures of `total` elements are tolerated.
    pub fn allows(self, failed: u32, total: u32) -> bool {
        match self {
            Tolerance::Count(n) => failed <= n,
            Tolerance::Percent(p) => u64::from(failed) * 100 <= u64::from(p) * u64::from(total),
        }
    }
}

/// The fan-out of step `id`, if it has `for_each`; the other for-each
/// fields without it are an error.
pub(super) fn parse(id: &str, s: &StepFile, action: &Action) -> Result<Option<Fan>, String> {
    let Some(path) = &s.for_each else {
        let stray = [
            ("max_parallel", s.max_parallel.is_some()),
            ("tolerate_failures", s.tolerate_failures.is_some()),
            ("element_type", s.element_type.is_some()),
        ];
        return match stray.iter().find(|(_, given)| *given) {
            Some((field, _)) => Err(format!(
                "step {id:?}: `{field}` is for a for-each step; give `for_each` too"
            )),
            None => Ok(None),
        };
    };
    if !matches!(action, Action::Command { .. }) {
        return Err(format!(
            "step {id:?}: `for_each` sends one command per element: it needs `step`"
        ));
    }
    if s.input.is_some() {
        return Err(format!(
            "step {id:?}: a for-each step's input is each element of `for_each`; it takes no \
             `input`"
        ));
    }
    let over = FieldPath::parse(path).map_err(|e| format!("step {id:?}: `for_each`: {e}"))?;
    let max_parallel = s.max_parallel.unwrap_or(DEFAULT_MAX_PARALLEL);
    if !(1..=MAX_PARALLEL).contains(&max_parallel) {
        return Err(format!(
            "step {id:?}: `max_parallel` must be 1 to {MAX_PARALLEL} (it is {max_parallel})"
        ));
    }
    let tolerate = match &s.tolerate_failures {
        None => Tolerance::Count(0),
        Some(TolerateFile::Count(n)) => Tolerance::Count(*n),
        Some(TolerateFile::Share(text)) => text
            .strip_suffix('%')
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|p| *p <= 100)
            .map(Tolerance::Percent)
            .ok_or_else(|| {
                format!(
                    "step {id:?}: `tolerate_failures` is a count (3) or a percentage (\"10%\", \
                     0 to 100), not {text:?}"
                )
            })?,
    };
    Ok(Some(Fan {
        over,
        max_parallel,
        tolerate,
        element_type: s.element_type.clone(),
        output: None,
    }))
}

/// Type for-each step `s` (a command to `contract`) once what it depends
/// on is typed (`done`): the event type of each element's command (the
/// one its step consumes, or `element_type` among several), checked
/// against what the array's schema says of its elements where both say.
pub(super) fn element_kind(
    s: &FlowStep,
    fan: &Fan,
    contract: &StepContract,
    done: &[FlowStep],
    contracts: &HashMap<String, &StepContract>,
    input_kind: &str,
) -> Result<String, String> {
    let id = &s.id;
    let consumed = contract.consumed_kinds();
    let kind = match (fan.element_type.as_deref(), consumed.as_slice()) {
        (Some(k), _) if consumed.iter().any(|c| c == k) => k.to_string(),
        (Some(k), _) => {
            return Err(format!(
                "step {id:?}: `element_type` {k:?} is not a type step {:?} consumes ({})",
                contract.name,
                consumed.join(", ")
            ));
        }
        (None, [one]) => one.clone(),
        (None, _) => {
            return Err(format!(
                "step {id:?}: step {:?} consumes {}: say which type each element is with \
                 `element_type`",
                contract.name,
                consumed.join(", ")
            ));
        }
    };
    let at = |e: String| format!("step {id:?}: `for_each`: {e}");
    let Some(schema) =
        output_schema(&fan.over.step, done, contracts, Some(input_kind)).map_err(at)?
    else {
        return Ok(kind);
    };
    let Some(array) = fan.over.schema_in(&schema).map_err(at)? else {
        return Ok(kind);
    };
    let types = types_of(array);
    if !types.is_empty() && !types.contains(&"array") {
        return Err(at(format!(
            "`{}` is {}, not an array",
            fan.over.text,
            types.join(" or ")
        )));
    }
    let (Some(items), Some(t)) = (
        array.get("items"),
        contract.consumes.iter().find(|t| t.kind == kind),
    ) else {
        return Ok(kind);
    };
    fits(resolve(&schema, items), &t.schema)
        .map_err(|e| at(format!("its elements are not {kind}: {e}")))?;
    Ok(kind)
}

/// What the schemas `items` (of the array's elements) and `consumed` (of
/// the command's type) say of their values, compared where both say it:
/// their types meet, and a field the command requires is one an element
/// may have.
fn fits(items: &Value, consumed: &Value) -> Result<(), String> {
    let (have, want) = (types_of(items), types_of(consumed));
    if !have.is_empty() && !want.is_empty() && !have.iter().any(|t| want.contains(t)) {
        return Err(format!(
            "an element is {}, and the command must be {}",
            have.join(" or "),
            want.join(" or ")
        ));
    }
    let (Some(props), Some(required)) = (
        items.get("properties").and_then(Value::as_object),
        consumed.get("required").and_then(Value::as_array),
    ) else {
        return Ok(());
    };
    let closed = items.get("additionalProperties") == Some(&Value::Bool(false));
    let missing: Vec<&str> = required
        .iter()
        .filter_map(Value::as_str)
        .filter(|f| !props.contains_key(*f))
        .collect();
    if closed && !missing.is_empty() {
        return Err(format!(
            "the command requires {}, which an element never has",
            missing.join(", ")
        ));
    }
    let required_by_items: Vec<&str> = items
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let unsaid: Vec<&str> = missing
        .into_iter()
        .filter(|f| !required_by_items.contains(f))
        .collect();
    if !unsaid.is_empty() && !props.is_empty() {
        return Err(format!(
            "the command requires {}, which the elements' schema does not declare",
            unsaid.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Tolerance, fits};

    #[test]
    fn tolerance_counts_or_shares_the_failures() {
        assert!(Tolerance::Count(0).allows(0, 10));
        assert!(!Tolerance::Count(0).allows(1, 10));
        assert!(Tolerance::Count(2).allows(2, 3));
        assert!(Tolerance::Percent(10).allows(1, 10));
        assert!(!Tolerance::Percent(10).allows(2, 10));
        assert!(!Tolerance::Percent(10).allows(1, 9));
        assert!(Tolerance::Percent(100).allows(7, 7));
    }

    #[test]
    fn elements_must_fit_the_commands_type_where_both_schemas_say() {
        let line = json!({"type": "object", "properties": {"sku": {}, "qty": {}}});
        let command = json!({"type": "object", "required": ["sku", "qty"]});
        assert_eq!(fits(&line, &command), Ok(()));
        assert_eq!(fits(&json!({}), &command), Ok(()));
        let e = fits(&json!({"type": "string"}), &command).unwrap_err();
        assert!(e.contains("string") && e.contains("object"), "{e}");
        let e = fits(
            &json!({"type": "object", "properties": {"sku": {}}}),
            &command,
        )
        .unwrap_err();
        assert!(e.contains("qty"), "{e}");
    }
}
