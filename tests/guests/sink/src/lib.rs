//! The end of a test cascade: records each `order.shipped` it gets by
//! appending a line to the file `/out/<correlation id>.<event id>` in the
//! directory the app granted it. A redelivered event appends to the same
//! file, so duplicates are recognisable by event id.
use serde_json::json;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "sink".into(),
            version: "1.0.0".into(),
            description: "Records shipped orders".into(),
            consumes: vec![event_type(
                "order.shipped",
                "1.0.0",
                "An order left",
                json!({"type": "object"}),
            )],
            produces: vec![],
            deterministic: false,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let corr = event
            .extension("correlationid")
            .unwrap_or("none")
            .to_string();
        let path = format!("/out/{corr}.{}", event.id);
        use std::io::Write;
        let line = [event.data.as_slice(), b"\n"].concat();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&line))
            .map_err(|e| StepError::Retry(format!("cannot write {path}: {e}")))?;
        Ok(vec![])
    }
}

export!(Step);
