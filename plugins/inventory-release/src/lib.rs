//! `inventory-release`: gives back stock held for an order. The
//! compensation of `inventory-reserve` in the orchestrated order flow.

use serde_json::{Value, json};
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "inventory-release".into(),
            version: "1.0.0".into(),
            description: "Releases a stock reservation".into(),
            consumes: vec![event_type(
                "inventory.reserved",
                "1.0.0",
                "Stock is held for an order",
                json!({"type": "object", "required": ["order_id", "reservation"],
                       "properties": {"order_id": {"type": "string"}, "reservation": {"type": "string"}}}),
            )],
            produces: vec![event_type(
                "inventory.released",
                "1.0.0",
                "Held stock was given back",
                json!({"type": "object", "required": ["order_id", "reservation"],
                       "properties": {"order_id": {"type": "string"}, "reservation": {"type": "string"}}}),
            )],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let r: Value = event.json()?;
        let (Some(order_id), Some(reservation)) =
            (r["order_id"].as_str(), r["reservation"].as_str())
        else {
            return Err(StepError::Reject(
                "data lacks order_id or reservation".into(),
            ));
        };
        Ok(vec![
            Emit::json(
                "inventory.released",
                &json!({"order_id": order_id, "reservation": reservation}),
            )
            .about(order_id),
        ])
    }
}

export!(Step);
