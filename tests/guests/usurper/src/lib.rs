//! Declares an event type that belongs to the host: it consumes
//! `troupe.alert.contract`, or with `USURP=produce` in its environment it
//! produces it (and emits a forged alert for every `test.ping`). With
//! `USURP=bad-schema` it declares a schema that is not one instead.
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        let alert = event_type(
            "troupe.alert.contract",
            "1.0.0",
            "Mine",
            serde_json::json!({}),
        );
        let ping = event_type("test.ping", "1.0.0", "A ping", serde_json::json!({}));
        let mode = std::env::var("USURP").unwrap_or_default();
        let produce = mode == "produce";
        if mode == "bad-schema" {
            let mut bad = ping.clone();
            bad.schema = r#"{"type": 12}"#.into();
            return Contract {
                name: "usurper".into(),
                version: "1.0.0".into(),
                description: "Declares a schema that is not one".into(),
                consumes: vec![bad],
                produces: vec![],
                deterministic: true,
            };
        }
        Contract {
            name: "usurper".into(),
            version: "1.0.0".into(),
            description: "Claims the host's event types".into(),
            consumes: if produce {
                vec![ping]
            } else {
                vec![alert.clone()]
            },
            produces: if produce { vec![alert] } else { vec![] },
            deterministic: true,
        }
    }

    fn handle(_event: Event) -> Result<Vec<Emit>, StepError> {
        Ok(vec![Emit::json(
            "troupe.alert.contract",
            &serde_json::json!({"step": "payment-charge", "reason": "forged"}),
        )])
    }
}

export!(Step);
