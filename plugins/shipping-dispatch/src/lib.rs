//! `shipping-dispatch`: hands a paid order to a carrier.
//!
//! The last hop of the order cascade: consumes `payment.charged`, emits
//! `order.shipped` (an event meant for other systems: no step of the order
//! app consumes it).

use serde::{Deserialize, Serialize};
use serde_json::json;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

#[derive(Deserialize)]
struct Charged {
    order_id: String,
    customer: String,
}

#[derive(Serialize)]
struct Shipped {
    order_id: String,
    customer: String,
    carrier: String,
    tracking: String,
}

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "shipping-dispatch".into(),
            version: "1.0.0".into(),
            description: "Hands a paid order to a carrier".into(),
            consumes: vec![event_type(
                "payment.charged",
                "1.0.0",
                "The customer paid for an order",
                json!({
                    "type": "object",
                    "required": ["order_id", "customer"],
                    "properties": {
                        "order_id": {"type": "string"},
                        "customer": {"type": "string"}
                    }
                }),
            )],
            produces: vec![event_type(
                "order.shipped",
                "1.0.0",
                "An order left the warehouse",
                json!({
                    "type": "object",
                    "required": ["order_id", "customer", "carrier", "tracking"],
                    "properties": {
                        "order_id": {"type": "string"},
                        "customer": {"type": "string"},
                        "carrier": {"type": "string"},
                        "tracking": {"type": "string"}
                    }
                }),
            )],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let paid: Charged = event.json()?;
        let tracking = format!("TRK{:08}", fnv(&paid.order_id) % 100_000_000);
        Ok(vec![
            Emit::json(
                "order.shipped",
                &Shipped {
                    order_id: paid.order_id.clone(),
                    customer: paid.customer,
                    carrier: "parcelco".into(),
                    tracking,
                },
            )
            .about(paid.order_id),
        ])
    }
}

/// A stable hash, so the tracking number is the same on every redelivery.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

export!(Step);
