//! `line-return`: puts the units of a picked line back on their shelf.
//!
//! The compensation of the `pack` flow's for-each `pick` step
//! (`docs/flows.md`): when a run that packed an order fails later on (the
//! `order` flow's fulfilment is declined, say), each line that was picked
//! is returned, with the output its pick produced (`line.picked`: the SKU,
//! how many, and the bin they came from).

use serde::{Deserialize, Serialize};
use serde_json::json;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

#[derive(Deserialize, Serialize)]
struct Line {
    sku: String,
    qty: u32,
    bin: String,
}

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        let line = json!({
            "type": "object",
            "required": ["sku", "qty", "bin"],
            "properties": {
                "sku": {"type": "string"},
                "qty": {"type": "integer", "minimum": 0},
                "bin": {"type": "string"}
            }
        });
        Contract {
            name: "line-return".into(),
            version: "1.0.0".into(),
            description: "Puts the units of a picked line back on the shelf".into(),
            consumes: vec![event_type(
                "line.picked",
                "1.0.0",
                "The units of a line are off the shelf",
                line.clone(),
            )],
            produces: vec![event_type(
                "line.returned",
                "1.0.0",
                "The units of a picked line are back in their bin",
                line,
            )],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let line: Line = event.json()?;
        Ok(vec![Emit::json("line.returned", &line)])
    }
}

export!(Step);
