//! `inventory-reserve`: reserves stock for a validated order.
//!
//! One of the two steps `order.validated` fans out to (the other is
//! `payment-charge`). Emits `inventory.reserved`.
//!
//! Stock counts are kept in the bucket its environment names
//! (`STOCK_BUCKET`, granted in `grants.kv`; without it no stock is kept):
//! `sku/SKU` holds the units left (JSON; a SKU without a count is not
//! tracked). An order that asks for more than is left is rejected; else the
//! counts go down and `res/ORDER` records what was taken, for
//! `inventory-release` to give back. The writes commit with the
//! `inventory.reserved` event, or not at all.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use troupe_step::kv::Bucket;
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
        if let Some(bucket) = std::env::var("STOCK_BUCKET").ok().filter(|b| !b.is_empty()) {
            take_stock(&Bucket::open(&bucket)?, &order)?;
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

/// What one order took of each tracked SKU.
#[derive(Serialize, Deserialize)]
struct Taken {
    sku: String,
    qty: u64,
}

/// Take `order`'s units from the counts in `stock`, all or none.
fn take_stock(stock: &Bucket, order: &Validated) -> Result<(), StepError> {
    let reservation = format!("res/{}", order.order_id);
    if stock.exists(&reservation)? {
        return Ok(()); // this order's stock is already held
    }
    let mut wanted = BTreeMap::<&str, u64>::new();
    for l in &order.lines {
        *wanted.entry(l.sku.as_str()).or_default() += u64::from(l.qty);
    }
    let mut taken = Vec::new();
    for (sku, qty) in wanted {
        let key = format!("sku/{sku}");
        let Some(left) = stock.get_json::<u64>(&key)? else {
            continue; // not tracked
        };
        if left < qty {
            return Err(StepError::Reject(format!(
                "order {}: sku {sku} is short ({left} left, {qty} wanted)",
                order.order_id
            )));
        }
        stock.set_json(&key, &(left - qty))?;
        taken.push(Taken {
            sku: sku.to_string(),
            qty,
        });
    }
    if !taken.is_empty() {
        stock.set_json(&reservation, &taken)?;
    }
    Ok(())
}

export!(Step);
