//! Rejects malformed data properly, but loops forever on valid data.
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "over-limits".into(),
            version: "1.0.0".into(),
            description: "Never finishes".into(),
            consumes: vec![event_type("test.work", "1.0.0", "Work", serde_json::json!({"type": "object"}))],
            produces: vec![],
            deterministic: false,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let _: serde_json::Value = event.json()?;
        let mut x = 1u64;
        loop {
            x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(1));
        }
    }
}

export!(Step);
