//! Text in, text out: `text.said` (plain text, at most 64 bytes) becomes
//! `text.shouted`, in capitals. Its contract declares `text/plain` with
//! `contentMediaType`. Said `lie`, it emits its text labelled as JSON.
use serde_json::json;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        let text = |max: Option<u32>| {
            let mut s = json!({"type": "string", "contentMediaType": "text/plain"});
            if let Some(m) = max {
                s["maxLength"] = m.into();
            }
            s
        };
        Contract {
            name: "shout".into(),
            version: "1.0.0".into(),
            description: "Shouts what was said".into(),
            consumes: vec![event_type("text.said", "1.0.0", "Words", text(Some(64)))],
            produces: vec![event_type("text.shouted", "1.0.0", "Louder", text(None))],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let said = String::from_utf8(event.data)
            .map_err(|_| StepError::Reject("not UTF-8 text".into()))?;
        let content_type = if said == "lie" {
            "application/json"
        } else {
            "text/plain"
        };
        Ok(vec![Emit {
            kind: "text.shouted".into(),
            subject: None,
            content_type: Some(content_type.into()),
            data: said.to_uppercase().into_bytes(),
        }])
    }
}

export!(Step);
