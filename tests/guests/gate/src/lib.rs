//! Stands in for shipping in orchestration tests: consumes
//! `payment.charged` and emits `order.shipped`, or fails as the customer's
//! name asks: `mallory` is rejected, `flaky` needs three attempts, `slow`
//! never answers in time (it spins until the deadline stops it), `gateway`
//! always asks for a retry with a message that says "timed out" (a failure
//! that is not a timeout, whatever its text).
use serde_json::json;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "gate".into(),
            version: "1.0.0".into(),
            description: "Ships, or fails on purpose".into(),
            consumes: vec![event_type(
                "payment.charged",
                "1.0.0",
                "Paid",
                json!({"type": "object", "required": ["order_id", "customer"]}),
            )],
            produces: vec![event_type("order.shipped", "1.0.0", "Shipped", json!({"type": "object", "required": ["order_id"]}))],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let v: serde_json::Value = event.json()?;
        let customer = v["customer"].as_str().unwrap_or("");
        match customer {
            "mallory" => return Err(StepError::Reject("mallory may not have it".into())),
            "flaky" if event.attempt < 3 => return Err(StepError::Retry(format!("carrier busy (attempt {})", event.attempt))),
            "gateway" => return Err(StepError::Retry("gateway timed out".into())),
            "slow" => loop {
                std::hint::black_box(&v);
            },
            _ => {}
        }
        let shipped = json!({"order_id": v["order_id"], "customer": customer, "carrier": "gate", "tracking": format!("T-{}", event.attempt)});
        Ok(vec![Emit::json("order.shipped", &shipped)])
    }
}

export!(Step);
