//! Signal steps: a flow step that waits for a signal sent to its run
//! (`await = { signal = "approve", schema = {...} }`; `POST
//! /v1/runs/{id}/signals/approve`). The signal's data is checked against
//! the schema the flow declares for it, and becomes the step's output.

use std::sync::Arc;

use std::collections::HashMap;

use serde_json::Value;

use super::Action;
use super::file::{SignalFile, StepFile};

/// A signal's name: what `await = { signal = ... }` and the API's path say.
pub fn is_signal_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_lowercase())
        && s.len() <= 64
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

/// The schema a flow declares for a signal's data, compiled.
#[derive(Clone)]
pub struct SignalSchema {
    /// As the flow wrote it (`{}`: any JSON).
    pub schema: Value,
    validator: Arc<jsonschema::Validator>,
}

impl SignalSchema {
    pub fn compile(schema: Value) -> Result<SignalSchema, String> {
        let validator = crate::contract::compile_schema(&schema)?;
        Ok(SignalSchema {
            schema,
            validator: Arc::new(validator),
        })
    }

    /// Whether `data` is what the flow declared: the first few problems,
    /// each with where in the data, if not.
    pub fn check(&self, data: &Value) -> Result<(), String> {
        crate::contract::check_schema(&self.validator, data)
    }
}

impl std::fmt::Debug for SignalSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignalSchema({})", self.schema)
    }
}

impl PartialEq for SignalSchema {
    fn eq(&self, other: &Self) -> bool {
        self.schema == other.schema
    }
}

/// The output type a signal step's record shows: `troupe.signal.NAME`.
pub fn output_type(name: &str) -> String {
    format!("troupe.signal.{name}")
}

/// The action of signal step `id` (`await = { signal = ... }`), checked;
/// `signals` is the names awaited so far (one step per name).
pub(super) fn signal_step(
    id: &str,
    s: &StepFile,
    sig: &SignalFile,
    signals: &mut HashMap<String, String>,
) -> Result<Action, String> {
    let name = &sig.signal;
    if !is_signal_name(name) {
        return Err(format!(
            "step {id:?}: {name:?} is not a signal name (1 to 64 lowercase letters, digits, \
             `-` and `_`, starting with a letter)"
        ));
    }
    if let Some(other) = signals.insert(name.clone(), id.to_string()) {
        return Err(format!(
            "step {id:?}: step {other:?} awaits signal {name:?} too; a signal goes to one step"
        ));
    }
    if s.input.is_some() || s.fail_on.is_some() || s.compensate.is_some() {
        return Err(format!(
            "step {id:?}: a signal step takes no `input`, `fail_on` or `compensate` (it sends \
             nothing; use `after` to order it)"
        ));
    }
    let schema = match &sig.schema {
        None => serde_json::json!({}),
        Some(t) => serde_json::to_value(t).map_err(|e| format!("step {id:?}: `schema`: {e}"))?,
    };
    let schema = SignalSchema::compile(schema)
        .map_err(|e| format!("step {id:?}: the schema of signal {name:?}: {e}"))?;
    Ok(Action::Signal {
        name: name.clone(),
        schema,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_schema_says_where_the_data_breaks_it() {
        let s = SignalSchema::compile(serde_json::json!({
            "type": "object", "required": ["approved"],
            "properties": {"approved": {"type": "boolean"}}
        }))
        .unwrap();
        assert!(s.check(&serde_json::json!({"approved": true})).is_ok());
        let e = s
            .check(&serde_json::json!({"approved": "yes"}))
            .unwrap_err();
        assert!(e.contains("/approved"), "{e}");
        assert!(SignalSchema::compile(serde_json::json!({"type": 5})).is_err());
        assert!(is_signal_name("approve") && is_signal_name("ok_2"));
        assert!(!is_signal_name("Approve") && !is_signal_name("") && !is_signal_name("a.b"));
    }
}
