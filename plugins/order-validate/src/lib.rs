//! `order-validate`: the first step of the order cascade.
//!
//! Consumes `order.placed`, checks the order (at least one line, positive
//! quantities, a total under the per-order limit) and emits `order.validated`
//! with the total. An order that breaks a business rule is rejected: retrying
//! it can never help, so it goes to the dead-letter queue at once.

use serde::{Deserialize, Serialize};
use serde_json::json;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export, info};

/// Orders above this total (in cents) need a human; the step rejects them.
const MAX_TOTAL_CENTS: u64 = 1_000_000;

#[derive(Deserialize)]
struct Placed {
    order_id: String,
    customer: String,
    lines: Vec<Line>,
    #[serde(default)]
    receipt_url: Option<String>,
}

#[derive(Deserialize, Serialize, Clone)]
struct Line {
    sku: String,
    qty: u32,
    price_cents: u64,
}

#[derive(Serialize)]
struct Validated {
    order_id: String,
    customer: String,
    lines: Vec<Line>,
    total_cents: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    receipt_url: Option<String>,
}

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        let line = json!({
            "type": "object",
            "required": ["sku", "qty", "price_cents"],
            "properties": {
                "sku": {"type": "string", "minLength": 1},
                "qty": {"type": "integer", "minimum": 0},
                "price_cents": {"type": "integer", "minimum": 0}
            }
        });
        Contract {
            name: "order-validate".into(),
            version: "1.0.0".into(),
            description: "Checks a placed order and prices it".into(),
            consumes: vec![event_type(
                "order.placed",
                "1.0.0",
                "A customer placed an order",
                json!({
                    "type": "object",
                    "required": ["order_id", "customer", "lines"],
                    "properties": {
                        "order_id": {"type": "string", "minLength": 1},
                        "customer": {"type": "string"},
                        "lines": {"type": "array", "items": line},
                        "receipt_url": {"type": "string", "description": "Where to post the receipt (optional)"}
                    }
                }),
            )],
            produces: vec![event_type(
                "order.validated",
                "1.0.0",
                "An order passed validation and has a total",
                json!({
                    "type": "object",
                    "required": ["order_id", "customer", "lines", "total_cents"],
                    "properties": {
                        "order_id": {"type": "string"},
                        "customer": {"type": "string"},
                        "lines": {"type": "array", "items": line},
                        "total_cents": {"type": "integer", "minimum": 0},
                        "receipt_url": {"type": "string"}
                    }
                }),
            )],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let order: Placed = event.json()?;
        if order.lines.is_empty() {
            return Err(StepError::Reject(format!(
                "order {} has no lines",
                order.order_id
            )));
        }
        if let Some(line) = order.lines.iter().find(|l| l.qty == 0) {
            return Err(StepError::Reject(format!(
                "order {}: line {} has quantity 0",
                order.order_id, line.sku
            )));
        }
        let total_cents: u64 = order
            .lines
            .iter()
            .map(|l| l.price_cents * u64::from(l.qty))
            .sum();
        if total_cents > MAX_TOTAL_CENTS {
            return Err(StepError::Reject(format!(
                "order {}: total {total_cents} cents is over the limit of {MAX_TOTAL_CENTS}",
                order.order_id
            )));
        }
        info(&format!(
            "order {} is valid, total {total_cents} cents",
            order.order_id
        ));
        let subject = order.order_id.clone();
        Ok(vec![
            Emit::json(
                "order.validated",
                &Validated {
                    order_id: order.order_id,
                    customer: order.customer,
                    lines: order.lines,
                    total_cents,
                    receipt_url: order.receipt_url,
                },
            )
            .about(subject),
        ])
    }
}

export!(Step);
