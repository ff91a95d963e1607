//! `inventory-reserve`: reserves stock for a validated order.
//!
//! One of the two steps `order.validated` fans out to (the other is
//! `payment-charge`). Emits `inventory.reserved`. A line for a SKU that is
//! out of stock is a transient failure (stock may arrive): the step asks for
//! a retry, and the host redelivers with backoff.

use serde::{Deserialize, Serialize};
use serde_json::json;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

#[derive(Deserialize)]
struct Validated {
    order_id: String,
    lines: Vec<Line>,
}

#[derive(Deserialize)]
struct Line {
    sku: String,
    qty: u32,
}

#[derive(Serialize)]
struct Reserved {
    order_id: String,
    reservation: String,
    units: u32,
}

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "inventory-reserve".into(),
            version: "1.0.0".into(),
            description: "Reserves stock for a validated order".into(),
            consumes: vec![event_type(
                "order.validated",
                "1.0.0",
                "An order passed validation and has a total",
                json!({
                    "type": "object",
                    "required": ["order_id", "lines"],
                    "properties": {
                        "order_id": {"type": "string"},
                        "lines": {"type": "array", "items": {
                            "type": "object",
                            "required": ["sku", "qty"],
                            "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}
                        }}
                    }
                }),
            )],
            produces: vec![event_type(
                "inventory.reserved",
                "1.0.0",
                "Stock is held for an order",
                json!({
                    "type": "object",
                    "required": ["order_id", "reservation", "units"],
                    "properties": {
                        "order_id": {"type": "string"},
                        "reservation": {"type": "string"},
                        "units": {"type": "integer", "minimum": 1}
                    }
                }),
            )],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let order: Validated = event.json()?;
        // The demo's stand-in for a stock service that is briefly out: the
        // first two deliveries of an order for "backorder" fail transiently.
        if order.lines.iter().any(|l| l.sku == "backorder") && event.attempt < 3 {
            return Err(StepError::Retry(format!(
                "order {}: sku backorder not in stock yet (attempt {})",
                order.order_id, event.attempt
            )));
        }
        let units = order.lines.iter().map(|l| l.qty).sum();
        Ok(vec![
            Emit::json(
                "inventory.reserved",
                &Reserved {
                    reservation: format!("res-{}", order.order_id),
                    order_id: order.order_id.clone(),
                    units,
                },
            )
            .about(order.order_id),
        ])
    }
}

export!(Step);
