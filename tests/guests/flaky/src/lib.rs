//! `test.flaky {fail_times}`: asks for a retry on the first `fail_times`
//! deliveries, then emits `test.recovered {attempt}`.
use serde_json::json;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "flaky".into(),
            version: "1.0.0".into(),
            description: "Fails transiently a given number of times".into(),
            consumes: vec![event_type(
                "test.flaky",
                "1.0.0",
                "How many deliveries to fail",
                json!({"type": "object", "required": ["fail_times"], "properties": {"fail_times": {"type": "integer", "minimum": 0}}}),
            )],
            produces: vec![event_type(
                "test.recovered",
                "1.0.0",
                "The attempt that succeeded",
                json!({"type": "object", "required": ["attempt"], "properties": {"attempt": {"type": "integer"}}}),
            )],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let v: serde_json::Value = event.json()?;
        let fail_times = v["fail_times"].as_u64().unwrap_or(0);
        if u64::from(event.attempt) <= fail_times {
            return Err(StepError::Retry(format!(
                "transient failure on attempt {}",
                event.attempt
            )));
        }
        Ok(vec![Emit::json(
            "test.recovered",
            &json!({"attempt": event.attempt}),
        )])
    }
}

export!(Step);
