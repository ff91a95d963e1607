//! Answers `test.ping {n}` with `test.pong {n}`.
use serde_json::json;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        let n =
            json!({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}});
        Contract {
            name: "echo".into(),
            version: "1.0.0".into(),
            description: "Answers a ping".into(),
            consumes: vec![event_type("test.ping", "1.0.0", "A ping", n.clone())],
            produces: vec![event_type("test.pong", "1.0.0", "A pong", n)],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let v: serde_json::Value = event.json()?;
        Ok(vec![Emit::json("test.pong", &json!({"n": v["n"]}))])
    }
}

export!(Step);
