//! Panics on every `test.crash`: a trap, as far as the host can tell.
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "trapper".into(),
            version: "1.0.0".into(),
            description: "Always traps".into(),
            consumes: vec![event_type(
                "test.crash",
                "1.0.0",
                "Anything",
                serde_json::json!({}),
            )],
            produces: vec![],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        panic!("trapper got {}", event.id);
    }
}

export!(Step);
