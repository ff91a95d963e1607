//! Never returns from `handle`: the deadline has to stop it.
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "looper".into(),
            version: "1.0.0".into(),
            description: "Loops forever".into(),
            consumes: vec![event_type(
                "test.loop",
                "1.0.0",
                "Anything",
                serde_json::json!({}),
            )],
            produces: vec![],
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let mut x = event.data.len() as u64;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

export!(Step);
