//! A consumer whose contract does not fit its producer: it reads
//! `payment.charged` but requires `express_code`, which `payment-charge`
//! never sends. `troupe check` and `troupe run` must refuse the wiring.
use serde_json::json;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "strict".into(),
            version: "1.0.0".into(),
            description: "Wants more than it gets".into(),
            consumes: vec![event_type(
                "payment.charged",
                "1.0.0",
                "Paid",
                json!({"type": "object", "required": ["order_id", "express_code"],
                       "properties": {"order_id": {"type": "string"}, "express_code": {"type": "string"}}}),
            )],
            produces: vec![],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let _: serde_json::Value = event.json()?;
        Ok(vec![])
    }
}

export!(Step);
