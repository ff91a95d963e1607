//! Declares whatever contract a test writes into its component, as a
//! hostile team would declare it.
//!
//! The component holds a blank of [`BLANK`] bytes that starts with
//! [`MARKER`]; a test copies the component and writes over the blank (same
//! length, padded with spaces) a JSON document:
//! `{"consumes": [{"kind", "version", "schema"}], "produces": [...]}`, each
//! `schema` the exact text `describe` returns (so it need not even be JSON).
//! `tests/support` has the writer (`puppet`).
//!
//! On an event whose data holds `{"emit": [{"kind", "data", "repeat"}]}` it
//! emits each `data` (JSON) as `kind`, `repeat` times (default once);
//! otherwise it emits nothing. With `"sleep_ms": N` it first waits N ms (a
//! step with work in flight).
use serde_json::Value;
use troupe_step::{Contract, Emit, Event, EventContract, Guest, StepError, export};

/// What starts the blank.
const MARKER: &[u8] = b"TROUPE-PUPPET-CONTRACT:";
/// The blank's size: room for a schema well over any limit of the host's.
const BLANK: usize = 1 << 20;

static CONTRACT: [u8; BLANK] = {
    let mut b = [b' '; BLANK];
    let mut i = 0;
    while i < MARKER.len() {
        b[i] = MARKER[i];
        i += 1;
    }
    b
};

fn declared() -> Value {
    // Read through `black_box`: the blank is written after compilation.
    let blank: &[u8; BLANK] = std::hint::black_box(&CONTRACT);
    let text = std::str::from_utf8(&blank[MARKER.len()..]).unwrap_or("").trim_end();
    if text.is_empty() {
        return serde_json::json!({ "consumes": [], "produces": [] });
    }
    serde_json::from_str(text).expect("the test wrote JSON")
}

fn list(v: &Value) -> Vec<EventContract> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|t| EventContract {
            kind: t["kind"].as_str().unwrap_or_default().to_string(),
            version: t["version"].as_str().unwrap_or("1.0.0").to_string(),
            schema: t["schema"].as_str().unwrap_or("{}").to_string(),
            description: "A test's".into(),
        })
        .collect()
}

struct Step;

impl Guest for Step {
    fn describe() -> Contract {
        let d = declared();
        Contract {
            name: "puppet".into(),
            version: "1.0.0".into(),
            description: "Declares what a test wrote into it".into(),
            consumes: list(&d["consumes"]),
            produces: list(&d["produces"]),
            deterministic: true,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let data: Value = serde_json::from_slice(&event.data).unwrap_or(Value::Null);
        if let Some(ms) = data["sleep_ms"].as_u64() {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let mut out = Vec::new();
        for e in data["emit"].as_array().into_iter().flatten() {
            let kind = e["kind"].as_str().unwrap_or_default();
            for _ in 0..e["repeat"].as_u64().unwrap_or(1) {
                out.push(Emit::json(kind, &e["data"]));
            }
        }
        Ok(out)
    }
}

export!(Step);
