//! `stock-audit`: finds the SKUs running low.
//!
//! The app's `stock-audit` schedule starts the `audit` flow every few
//! seconds (`[schedules]` in `troupe.toml`, `docs/flows.md`) with the SKUs
//! to look at and the level under which one is low; the step reads their
//! counts from the bucket its environment names (`STOCK_BUCKET`, the one
//! inventory-reserve keeps) and emits `stock.audited` with those below it.

use serde::{Deserialize, Serialize};
use serde_json::json;
use troupe_step::kv::Bucket;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

#[derive(Deserialize)]
struct Requested {
    skus: Vec<String>,
    below: u64,
}

#[derive(Serialize)]
struct Low {
    sku: String,
    left: u64,
}

#[derive(Serialize)]
struct Audited {
    checked: usize,
    low: Vec<Low>,
}

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "stock-audit".into(),
            version: "1.0.0".into(),
            description: "Finds the SKUs running low".into(),
            consumes: vec![event_type(
                "stock.audit-requested",
                "1.0.0",
                "Which SKUs to look at, and under what count one is low",
                json!({
                    "type": "object",
                    "required": ["skus", "below"],
                    "properties": {
                        "skus": {"type": "array", "items": {"type": "string"}},
                        "below": {"type": "integer", "minimum": 0}
                    }
                }),
            )],
            produces: vec![event_type(
                "stock.audited",
                "1.0.0",
                "The SKUs under the level, with what is left",
                json!({
                    "type": "object",
                    "required": ["checked", "low"],
                    "properties": {
                        "checked": {"type": "integer"},
                        "low": {"type": "array", "items": {
                            "type": "object",
                            "required": ["sku", "left"],
                            "properties": {"sku": {"type": "string"}, "left": {"type": "integer"}}
                        }}
                    }
                }),
            )],
            deterministic: false,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let ask: Requested = event.json()?;
        let bucket = std::env::var("STOCK_BUCKET").unwrap_or_default();
        let mut low = Vec::new();
        if !bucket.is_empty() {
            let stock = Bucket::open(&bucket)?;
            for sku in &ask.skus {
                if let Some(left) = stock.get_json::<u64>(&format!("sku/{sku}"))?
                    && left < ask.below
                {
                    low.push(Low {
                        sku: sku.clone(),
                        left,
                    });
                }
            }
        }
        Ok(vec![Emit::json(
            "stock.audited",
            &Audited {
                checked: ask.skus.len(),
                low,
            },
        )])
    }
}

export!(Step);
