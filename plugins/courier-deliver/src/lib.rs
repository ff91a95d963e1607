//! `courier-deliver`: the last hop of the choreographed delivery cascade.
//! Consumes `parcel.picked-up`, emits `order.delivered` (what the hybrid
//! order flow waits for), or `delivery.failed` when nobody can sign.

use serde_json::{Value, json};
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        let parcel = json!({"type": "object", "required": ["order_id", "customer", "tracking"],
                            "properties": {"order_id": {"type": "string"}, "customer": {"type": "string"},
                                           "tracking": {"type": "string"}}});
        let outcome = json!({"type": "object", "required": ["order_id", "tracking"],
                             "properties": {"order_id": {"type": "string"}, "tracking": {"type": "string"},
                                            "signed_by": {"type": "string"}, "reason": {"type": "string"}}});
        Contract {
            name: "courier-deliver".into(),
            version: "1.0.0".into(),
            description: "Delivers a parcel".into(),
            consumes: vec![event_type(
                "parcel.picked-up",
                "1.0.0",
                "The courier has the parcel",
                parcel,
            )],
            produces: vec![
                event_type(
                    "order.delivered",
                    "1.0.0",
                    "The customer has the parcel",
                    outcome.clone(),
                ),
                event_type(
                    "delivery.failed",
                    "1.0.0",
                    "The parcel could not be delivered",
                    outcome,
                ),
            ],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let p: Value = event.json()?;
        let (Some(order_id), Some(tracking)) = (p["order_id"].as_str(), p["tracking"].as_str())
        else {
            return Err(StepError::Reject("data lacks order_id or tracking".into()));
        };
        let customer = p["customer"].as_str().unwrap_or("");
        let out = if customer.is_empty() || customer == "nobody" {
            Emit::json(
                "delivery.failed",
                &json!({"order_id": order_id, "tracking": tracking, "reason": "nobody to sign"}),
            )
        } else {
            Emit::json(
                "order.delivered",
                &json!({"order_id": order_id, "tracking": tracking, "signed_by": customer}),
            )
        };
        Ok(vec![out.about(order_id)])
    }
}

export!(Step);
