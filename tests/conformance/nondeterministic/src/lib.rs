//! Claims `deterministic: true`, then puts the clock in its output.
use serde_json::json;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "nondeterministic".into(),
            version: "1.0.0".into(),
            description: "Stamps the time".into(),
            consumes: vec![event_type("test.work", "1.0.0", "Work", json!({"type": "object"}))],
            produces: vec![event_type("test.stamped", "1.0.0", "Stamped", json!({"type": "object"}))],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let _: serde_json::Value = event.json()?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        Ok(vec![Emit::json("test.stamped", &json!({"at": now.as_nanos() as u64}))])
    }
}

export!(Step);
