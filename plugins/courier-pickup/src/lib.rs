//! `courier-pickup`: the first hop of the choreographed delivery cascade,
//! which the hybrid order flow hands work to. Consumes
//! `delivery.requested`, emits `parcel.picked-up`.

use serde_json::{Value, json};
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

fn parcel() -> Value {
    json!({"type": "object", "required": ["order_id", "customer", "tracking"],
           "properties": {"order_id": {"type": "string"}, "customer": {"type": "string"},
                          "tracking": {"type": "string"}}})
}

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "courier-pickup".into(),
            version: "1.0.0".into(),
            description: "Picks up a parcel".into(),
            consumes: vec![event_type(
                "delivery.requested",
                "1.0.0",
                "Please deliver this parcel",
                parcel(),
            )],
            produces: vec![event_type(
                "parcel.picked-up",
                "1.0.0",
                "The courier has the parcel",
                parcel(),
            )],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let p: Value = event.json()?;
        let Some(order_id) = p["order_id"].as_str() else {
            return Err(StepError::Reject("data lacks order_id".into()));
        };
        let out =
            json!({"order_id": order_id, "customer": p["customer"], "tracking": p["tracking"]});
        Ok(vec![Emit::json("parcel.picked-up", &out).about(order_id)])
    }
}

export!(Step);
