//! Passes each event of type `IN` on as an event of type `OUT` (both from
//! `grants.env`), with the same data. With `STATE=1`, it first does one
//! get and one put in its own bucket: the counter `k<i mod KEYS>` (`i`
//! from the data, `KEYS` from the env, default 1000) goes up by one. For
//! chains with and without step state, side by side. With `CALLS=1`, it
//! adds `calls` to the data: the messages this instance has handled,
//! this one included (1 on every message of a fresh instance), to show
//! when a reused instance is replaced.
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use troupe_step::kv::Bucket;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

/// Messages this instance has handled.
static CALLS: AtomicU64 = AtomicU64::new(0);

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

impl Guest for Step {
    fn describe() -> Contract {
        let schema = json!({"type": "object", "required": ["i"], "properties": {"i": {"type": "integer"}}});
        Contract {
            name: "relay".into(),
            version: "1.0.0".into(),
            description: "Passes an event on".into(),
            consumes: vec![event_type(&env("IN", "relay.in"), "1.0.0", "In", schema.clone())],
            produces: vec![event_type(&env("OUT", "relay.out"), "1.0.0", "Out", schema)],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let mut data: Value = event.json()?;
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        if env("CALLS", "0") == "1" {
            data["calls"] = json!(calls);
        }
        if env("STATE", "0") == "1" {
            let keys: u64 = env("KEYS", "1000").parse().unwrap_or(1000);
            let key = format!("k{}", data["i"].as_u64().unwrap_or(0) % keys.max(1));
            let b = Bucket::own()?;
            let n = b.get_json::<u64>(&key)?.unwrap_or(0);
            b.set_json(&key, &(n + 1))?;
        }
        Ok(vec![Emit::json(&env("OUT", "relay.out"), &data)])
    }
}

export!(Step);
