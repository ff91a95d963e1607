//! Does to its buckets what a `test.kv` event asks, and reports in
//! `test.kv.done` what each operation returned. Several steps can run
//! this component: each takes the part of the event under its `ROLE`
//! (`grants.env`, default `main`) and ignores the event without one.
//!
//! A part is `{"ops": [...], "then": "ok"|"retry"|"trap"|"reject",
//! "sleep_ms": N}`; an op is `{"op", "bucket", "key", "value", "delta",
//! "qty"}` with `op` one of `get`, `set`, `delete`, `exists`, `keys`,
//! `incr`, `open` and `take` (decrement a counter by `qty` unless it holds
//! less: `{"short": n}`). `sleep_ms` waits after the ops, before the
//! outcome, to widen the window between a read and its commit.
use serde_json::{Value, json};
use troupe_step::kv::Bucket;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

fn bucket(op: &Value) -> Result<Bucket, StepError> {
    Bucket::open(op["bucket"].as_str().unwrap_or(""))
}

fn run(op: &Value) -> Result<Value, StepError> {
    let key = op["key"].as_str().unwrap_or("");
    let b = bucket(op)?;
    Ok(match op["op"].as_str().unwrap_or("") {
        "open" => json!(true),
        "get" => json!(
            b.get(key)?
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        ),
        "set" => {
            b.set(key, op["value"].as_str().unwrap_or("").as_bytes())?;
            json!(true)
        }
        "delete" => {
            b.delete(key)?;
            json!(true)
        }
        "exists" => json!(b.exists(key)?),
        "keys" => json!(b.keys()?),
        "incr" => json!(b.increment(key, op["delta"].as_u64().unwrap_or(1))?),
        "take" => {
            let qty = op["qty"].as_u64().unwrap_or(1);
            let have: u64 = b
                .get(key)?
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if have < qty {
                return Ok(json!({"short": have}));
            }
            b.set(key, (have - qty).to_string().as_bytes())?;
            json!(have - qty)
        }
        other => return Err(StepError::Reject(format!("unknown op {other:?}"))),
    })
}

impl Guest for Step {
    fn describe() -> Contract {
        let any = json!({"type": "object"});
        Contract {
            name: "keeper".into(),
            version: "1.0.0".into(),
            description: "Reads and writes its buckets as asked".into(),
            consumes: vec![event_type(
                "test.kv",
                "1.0.0",
                "Operations on buckets, by role",
                any.clone(),
            )],
            produces: vec![event_type(
                "test.kv.done",
                "1.0.0",
                "What each operation returned",
                any,
            )],
            deterministic: false,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let input: Value = event.json()?;
        let role = std::env::var("ROLE").unwrap_or_else(|_| "main".into());
        let Some(part) = input.get(&role) else {
            return Ok(Vec::new());
        };
        let results: Vec<Value> = part["ops"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .map(|op| match run(op) {
                Ok(v) => json!({"ok": v}),
                Err(StepError::Retry(m) | StepError::Reject(m)) => json!({"error": m}),
            })
            .collect();
        if let Some(ms) = part["sleep_ms"].as_u64() {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        match part["then"].as_str().unwrap_or("ok") {
            "retry" => return Err(StepError::Retry("asked to retry".into())),
            "reject" => return Err(StepError::Reject("asked to reject".into())),
            "trap" => panic!("asked to trap"),
            _ => {}
        }
        Ok(vec![Emit::json(
            "test.kv.done",
            &json!({"role": role, "attempt": event.attempt, "results": results}),
        )])
    }
}

export!(Step);
