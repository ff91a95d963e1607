//! `{{name}}`: a Troupe step.
//!
//! Consumes `{{name}}.requested` and emits `{{name}}.done`. Change the
//! contract in `describe` and the work in `handle`; build with
//! `troupe build .` and check with `troupe conformance <component>`.

wit_bindgen::generate!({ world: "step", path: "wit" });

use serde_json::{Value, json};
use troupe::step::types::EventContract;

struct Step;

fn event_type(kind: &str, description: &str, schema: Value) -> EventContract {
    EventContract {
        kind: kind.into(),
        version: "1.0.0".into(),
        schema: schema.to_string(),
        description: description.into(),
    }
}

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "{{name}}".into(),
            version: "0.1.0".into(),
            description: "What {{name}} does".into(),
            consumes: vec![event_type(
                "{{name}}.requested",
                "Someone asked for {{name}}",
                json!({"type": "object", "required": ["id"], "properties": {"id": {"type": "string", "minLength": 1}}}),
            )],
            produces: vec![event_type(
                "{{name}}.done",
                "{{name}} did its work",
                json!({"type": "object", "required": ["id", "ok"], "properties": {"id": {"type": "string"}, "ok": {"type": "boolean"}}}),
            )],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let data: Value = serde_json::from_slice(&event.data)
            .map_err(|e| StepError::Reject(format!("data is not JSON: {e}")))?;
        let Some(id) = data["id"].as_str() else {
            return Err(StepError::Reject("data has no string `id`".into()));
        };
        troupe::step::host::log(troupe::step::host::Level::Info, &format!("handling {id}"));
        let done = json!({"id": id, "ok": true});
        Ok(vec![Emit {
            kind: "{{name}}.done".into(),
            subject: Some(id.to_string()),
            content_type: None,
            data: done.to_string().into_bytes(),
        }])
    }
}

export!(Step);
