//! `payment-refund`: pays a charge back. The compensation of
//! `payment-charge` in the orchestrated order flow.
//!
//! With `PAYMENTS_URL` in its environment (`grants.env`), it refunds
//! through the payment provider (`POST {PAYMENTS_URL}/refunds`, the charge's
//! `payment_id`), under the `Idempotency-Key` the host puts on every call:
//! a compensation run again refunds once. A provider that is down is a
//! retry; one that knows no such charge, a reject. Without it, the refund
//! is only recorded (an app with no provider).

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
                                      "payment_id": {"type": "string"},
                                      "refund_id": {"type": "string", "description": "The provider's refund, when it refunded"}}}),
            )],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let c: Value = event.json()?;
        let Some(order_id) = c["order_id"].as_str() else {
            return Err(StepError::Reject("data lacks order_id".into()));
        };
        let mut refund = json!({"order_id": order_id, "amount_cents": c["amount_cents"], "payment_id": c["payment_id"]});
        if let Ok(base) = std::env::var("PAYMENTS_URL") {
            refund["refund_id"] = json!(refund_at(&base, &c)?);
        }
        Ok(vec![
            Emit::json("payment.refunded", &refund).about(order_id),
        ])
    }
}

/// Refund charge `c` at the provider `base`: the refund's id.
fn refund_at(base: &str, c: &Value) -> Result<String, StepError> {
    let body = json!({"charge_id": c["payment_id"], "amount_cents": c["amount_cents"]});
    let url = format!("{}/refunds", base.trim_end_matches('/'));
    let res = troupe_step::http::Request::post(&url)
        .json(&body)
        .send()
        .map_err(|e| StepError::Retry(format!("payment provider unreachable: {e}")))?;
    let said = String::from_utf8_lossy(&res.body).chars().take(200).collect::<String>();
    match res.status {
        200 | 201 => {
            let v: Value = res.json().map_err(|e| StepError::Retry(format!("provider answered: {e}")))?;
            Ok(v["id"].as_str().unwrap_or_default().to_string())
        }
        429 | 500..=599 => Err(StepError::Retry(format!("payment provider answered {}: {said}", res.status))),
        s => Err(StepError::Reject(format!("refund refused ({s}): {said}"))),
    }
}

export!(Step);
