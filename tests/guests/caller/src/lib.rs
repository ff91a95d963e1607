//! Makes the HTTP calls a `test.call` event lists, in order, and reports
//! in `test.called` everything it could see: each response (status,
//! headers, body) or error, the headers of its own requests, and its
//! environment. Following a redirect is a call of its own. With
//! `fail_until_attempt`, it fails (as `fail_with`: `retry` or `trap`)
//! after making its calls, until that delivery.
use serde_json::{Value, json};
use troupe_step::http::Request;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

fn call(c: &Value) -> (Value, Option<String>) {
    let mut req = Request::new(
        c["method"].as_str().unwrap_or("GET"),
        c["url"].as_str().unwrap_or(""),
    );
    if let Some(h) = c["headers"].as_object() {
        for (k, v) in h {
            req = req.header(k, v.as_str().unwrap_or(""));
        }
    }
    if let Some(b) = c["body"].as_str() {
        req = req.body(b.as_bytes().to_vec());
    }
    let sent: Vec<Value> = req
        .headers
        .iter()
        .map(|(k, v)| json!([k, String::from_utf8_lossy(v)]))
        .collect();
    match req.send() {
        Ok(res) => {
            let location = (300..400)
                .contains(&res.status)
                .then(|| res.header("location").map(str::to_string))
                .flatten();
            let headers: Vec<Value> = res
                .headers
                .iter()
                .map(|(k, v)| json!([k, String::from_utf8_lossy(v)]))
                .collect();
            (
                json!({
                    "status": res.status,
                    "headers": headers,
                    "body": String::from_utf8_lossy(&res.body),
                    "sent_headers": sent,
                }),
                location,
            )
        }
        Err(e) => (json!({"error": e.to_string(), "sent_headers": sent}), None),
    }
}

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "caller".into(),
            version: "1.0.0".into(),
            description: "Makes HTTP calls and reports what it saw".into(),
            consumes: vec![event_type(
                "test.call",
                "1.0.0",
                "The calls to make",
                json!({"type": "object"}),
            )],
            produces: vec![event_type(
                "test.called",
                "1.0.0",
                "What each call got",
                json!({"type": "object"}),
            )],
            deterministic: false,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let input: Value = event.json()?;
        let mut results = Vec::new();
        for c in input["calls"].as_array().cloned().unwrap_or_default() {
            let (mut r, mut location) = call(&c);
            results.push(r);
            let mut hops = 0;
            while let (Some(url), true, true) =
                (location.take(), c["follow"].as_bool() == Some(true), hops < 5)
            {
                hops += 1;
                (r, location) = call(&json!({"method": "GET", "url": url}));
                results.push(r);
            }
        }
        let until = input["fail_until_attempt"].as_u64().unwrap_or(0);
        if u64::from(event.attempt) < until {
            match input["fail_with"].as_str() {
                Some("trap") => panic!("failing on purpose, attempt {}", event.attempt),
                _ => return Err(StepError::Retry(format!("attempt {}", event.attempt))),
            }
        }
        let env: Vec<Value> = std::env::vars().map(|(k, v)| json!([k, v])).collect();
        Ok(vec![Emit::json(
            "test.called",
            &json!({"results": results, "env": env, "attempt": event.attempt}),
        )])
    }
}

export!(Step);
