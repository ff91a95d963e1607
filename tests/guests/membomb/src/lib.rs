//! Allocates 1 MiB blocks and touches them until memory runs out.
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "membomb".into(),
            version: "1.0.0".into(),
            description: "Eats memory".into(),
            consumes: vec![event_type(
                "test.bomb",
                "1.0.0",
                "Anything",
                serde_json::json!({}),
            )],
            produces: vec![],
            deterministic: true,
        }
    }

    fn handle(_event: Event) -> Result<Vec<Emit>, StepError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![7u8; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

export!(Step);
