//! Breaks its own contract on the way out: on `test.bad-output` it emits a
//! `test.out` whose data misses a required field; on `test.undeclared` it
//! emits a type it never declared. On `test.good` it behaves.
use serde_json::json;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        let any = json!({});
        Contract {
            name: "liar".into(),
            version: "1.0.0".into(),
            description: "Emits what it promised not to".into(),
            consumes: vec![
                event_type("test.bad-output", "1.0.0", "Emit bad data", any.clone()),
                event_type(
                    "test.undeclared",
                    "1.0.0",
                    "Emit an undeclared type",
                    any.clone(),
                ),
                event_type("test.good", "1.0.0", "Behave", any),
            ],
            produces: vec![event_type(
                "test.out",
                "1.0.0",
                "Has an ok field",
                json!({"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}),
            )],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        Ok(vec![match event.kind.as_str() {
            "test.bad-output" => Emit::json("test.out", &json!({"okay": "yes"})),
            "test.undeclared" => Emit::json("test.secret", &json!({"ok": true})),
            _ => Emit::json("test.out", &json!({"ok": true})),
        }])
    }
}

export!(Step);
