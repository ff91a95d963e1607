//! `line-pick`: picks one line of an order from the warehouse shelves.
//!
//! The `pack` flow sends it one command per line of a validated order (a
//! for-each step, `docs/flows.md`). It takes the line alone (`order.line`:
//! a SKU, a quantity and a price) and says which bin the units came from
//! (`line.picked`). A line of the "fragile" SKU is rejected: the flow's
//! `tolerate_failures` decides whether the order goes on without it.

use serde::{Deserialize, Serialize};
use serde_json::json;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

#[derive(Deserialize)]
struct Line {
    sku: String,
    qty: u32,
}

#[derive(Serialize)]
struct Picked {
    sku: String,
    qty: u32,
    bin: String,
}

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "line-pick".into(),
            version: "1.0.0".into(),
            description: "Picks one line of an order from the shelves".into(),
            consumes: vec![event_type(
                "order.line",
                "1.0.0",
                "One line of an order: a SKU, how many, at what price",
                json!({
                    "type": "object",
                    "required": ["sku", "qty"],
                    "properties": {
                        "sku": {"type": "string", "minLength": 1},
                        "qty": {"type": "integer", "minimum": 0},
                        "price_cents": {"type": "integer", "minimum": 0}
                    }
                }),
            )],
            produces: vec![event_type(
                "line.picked",
                "1.0.0",
                "The units of a line are off the shelf",
                json!({
                    "type": "object",
                    "required": ["sku", "qty", "bin"],
                    "properties": {
                        "sku": {"type": "string"},
                        "qty": {"type": "integer", "minimum": 0},
                        "bin": {"type": "string"}
                    }
                }),
            )],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let line: Line = event.json()?;
        if line.sku == "fragile" {
            return Err(StepError::Reject(format!(
                "sku {}: fragile goods are packed by hand",
                line.sku
            )));
        }
        // The bin a SKU lives in: aisle by its first letter, shelf by length.
        let aisle = line.sku.chars().next().unwrap_or('x').to_ascii_uppercase();
        let bin = format!("{aisle}-{:02}", line.sku.len());
        Ok(vec![Emit::json(
            "line.picked",
            &Picked {
                sku: line.sku,
                qty: line.qty,
                bin,
            },
        )])
    }
}

export!(Step);
