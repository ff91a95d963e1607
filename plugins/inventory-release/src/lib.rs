//! `inventory-release`: gives back stock held for an order. The
//! compensation of `inventory-reserve` in the orchestrated order flow.
//!
//! With a stock bucket (`STOCK_BUCKET`, as `inventory-reserve` keeps it),
//! the units `res/ORDER` records go back to their `sku/SKU` counts and the
//! record is deleted, so a second release gives nothing back twice.

use serde::Deserialize;
use serde_json::{Value, json};
use troupe_step::kv::Bucket;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

/// What `inventory-reserve` took of one SKU for an order.
#[derive(Deserialize)]
struct Taken {
    sku: String,
    qty: u64,
}

/// Give back what order `order_id` took from `stock`.
fn give_back(stock: &Bucket, order_id: &str) -> Result<(), StepError> {
    let reservation = format!("res/{order_id}");
    let Some(taken) = stock.get_json::<Vec<Taken>>(&reservation)? else {
        return Ok(()); // nothing held (or already given back)
    };
    for t in taken {
        let key = format!("sku/{}", t.sku);
        let left = stock.get_json::<u64>(&key)?.unwrap_or(0);
        stock.set_json(&key, &(left + t.qty))?;
    }
    stock.delete(&reservation)
}

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
        if let Some(bucket) = std::env::var("STOCK_BUCKET").ok().filter(|b| !b.is_empty()) {
            give_back(&Bucket::open(&bucket)?, order_id)?;
        }
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
