//! `payment-refund`: pays a charge back. The compensation of
//! `payment-charge` in the orchestrated order flow.

use serde_json::{Value, json};
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "payment-refund".into(),
            version: "1.0.0".into(),
            description: "Refunds a charge".into(),
            consumes: vec![event_type(
                "payment.charged",
                "1.0.0",
                "The customer paid for an order",
                json!({"type": "object", "required": ["order_id", "amount_cents", "payment_id"],
                       "properties": {"order_id": {"type": "string"}, "amount_cents": {"type": "integer"},
                                      "payment_id": {"type": "string"}}}),
            )],
            produces: vec![event_type(
                "payment.refunded",
                "1.0.0",
                "A charge was paid back",
                json!({"type": "object", "required": ["order_id", "amount_cents", "payment_id"],
                       "properties": {"order_id": {"type": "string"}, "amount_cents": {"type": "integer"},
                                      "payment_id": {"type": "string"}}}),
            )],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let c: Value = event.json()?;
        let Some(order_id) = c["order_id"].as_str() else {
            return Err(StepError::Reject("data lacks order_id".into()));
        };
        let refund = json!({"order_id": order_id, "amount_cents": c["amount_cents"], "payment_id": c["payment_id"]});
        Ok(vec![
            Emit::json("payment.refunded", &refund).about(order_id),
        ])
    }
}

export!(Step);
