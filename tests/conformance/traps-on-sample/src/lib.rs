//! Reads its data, then panics: every valid event traps.
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "traps-on-sample".into(),
            version: "1.0.0".into(),
            description: "Panics".into(),
            consumes: vec![event_type(
                "test.work",
                "1.0.0",
                "Work",
                serde_json::json!({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}),
            )],
            produces: vec![],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let v: serde_json::Value = event.json()?;
        let items: Vec<u64> = Vec::new();
        let n = v["n"].as_u64().unwrap_or(0) as usize;
        // Out of bounds: a panic, so a trap.
        Ok(vec![Emit::json("test.never", &items[n + std::hint::black_box(1)])])
    }
}

export!(Step);
