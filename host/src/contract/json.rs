//! A contract as JSON: what `describe` returned, written where a contract
//! is kept apart from its component (the contract cache, a deployment's
//! record), and read back.

use serde_json::{Value, json};

use super::StepContract;
use crate::world::{Contract, EventContract};

/// A compiled contract as what `describe` returned, in JSON.
pub fn to_json(c: &StepContract) -> Value {
    let list = |l: &[std::sync::Arc<super::EventType>]| -> Vec<Value> {
        l.iter()
            .map(|t| {
                json!({"kind": t.kind, "version": t.version, "description": t.description,
                       "schema": t.schema.to_string()})
            })
            .collect()
    };
    json!({
        "name": c.name, "version": c.version, "description": c.description,
        "deterministic": c.deterministic,
        "consumes": list(&c.consumes), "produces": list(&c.produces),
    })
}

/// The contract [`to_json`] wrote, as a step declares it (to compile
/// again); `None` if `v` is not one.
pub fn from_json(v: &Value) -> Option<Contract> {
    let s = |v: &Value, k: &str| v.get(k)?.as_str().map(str::to_string);
    let list = |k: &str| -> Option<Vec<EventContract>> {
        v.get(k)?
            .as_array()?
            .iter()
            .map(|t| {
                Some(EventContract {
                    kind: s(t, "kind")?,
                    version: s(t, "version")?,
                    description: s(t, "description")?,
                    schema: s(t, "schema")?,
                })
            })
            .collect()
    };
    Some(Contract {
        name: s(v, "name")?,
        version: s(v, "version")?,
        description: s(v, "description")?,
        deterministic: v.get("deterministic")?.as_bool()?,
        consumes: list("consumes")?,
        produces: list("produces")?,
    })
}
