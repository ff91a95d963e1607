//! `payment-charge`: charges the customer for a validated order.
//!
//! The other branch of the `order.validated` fan-out. Emits
//! `payment.charged`, which starts shipping.

use serde::{Deserialize, Serialize};
use serde_json::json;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

#[derive(Deserialize)]
struct Validated {
    order_id: String,
    customer: String,
    total_cents: u64,
}

#[derive(Serialize)]
struct Charged {
    order_id: String,
    customer: String,
    amount_cents: u64,
    payment_id: String,
}

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "payment-charge".into(),
            version: "1.0.0".into(),
            description: "Charges the customer for a validated order".into(),
            consumes: vec![event_type(
                "order.validated",
                "1.0.0",
                "An order passed validation and has a total",
                json!({
                    "type": "object",
                    "required": ["order_id", "customer", "total_cents"],
                    "properties": {
                        "order_id": {"type": "string"},
                        "customer": {"type": "string"},
                        "total_cents": {"type": "integer", "minimum": 0}
                    }
                }),
            )],
            produces: vec![event_type(
                "payment.charged",
                "1.0.0",
                "The customer paid for an order",
                json!({
                    "type": "object",
                    "required": ["order_id", "customer", "amount_cents", "payment_id"],
                    "properties": {
                        "order_id": {"type": "string"},
                        "customer": {"type": "string"},
                        "amount_cents": {"type": "integer", "minimum": 0},
                        "payment_id": {"type": "string"}
                    }
                }),
            )],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let order: Validated = event.json()?;
        Ok(vec![
            Emit::json(
                "payment.charged",
                &Charged {
                    payment_id: format!("pay-{}", order.order_id),
                    order_id: order.order_id.clone(),
                    customer: order.customer,
                    amount_cents: order.total_cents,
                },
            )
            .about(order.order_id),
        ])
    }
}

export!(Step);
