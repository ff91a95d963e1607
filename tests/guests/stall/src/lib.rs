//! Never returns from `describe`: it sleeps (a WASI clock and `poll`, a
//! wait in a host call), or with `STALL=spin` in its environment, spins.
use std::time::Duration;

use troupe_step::{Contract, Emit, Event, Guest, StepError, export};

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        if std::env::var("STALL").as_deref() == Ok("spin") {
            let mut x = 1u64;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    fn handle(_event: Event) -> Result<Vec<Emit>, StepError> {
        Ok(vec![])
    }
}

export!(Step);
