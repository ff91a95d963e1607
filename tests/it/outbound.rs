//! Outbound HTTP from steps (`grants.http`): a real service on 127.0.0.1
//! (tests/support/upstream.rs) called by a real guest (tests/guests/caller)
//! through the host's `wasi:http`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use troupe::protocol::FailureClass;
use troupe_tests::upstream::Upstream;
use troupe_tests::{Backend, TestApp, data, event, eventually, guest, output_of, step};

const IDLE: Duration = Duration::from_millis(300);
const KEY: &str = "sk_test_canary_7f3a91c2";

/// Publish one `test.call` with `calls` (and `extra` fields) and return
/// what the guest reported.
async fn calls(app: &TestApp, input: Value) -> Value {
    calls_traced(app, input).await.0
}

/// The same, with the `troupe.http.call` records in the event's trace.
async fn calls_traced(app: &TestApp, input: Value) -> (Value, Vec<Value>) {
    let host = app.start().await;
    let e = event("test.call", input);
    host.broker.publish(vec![e.clone()]).await.unwrap();
    let report = output_of(&host, &e, "test.called", Duration::from_secs(20)).await;
    // The records are committed with the output: they are there with it.
    let records = host
        .broker
        .trace(&e.id)
        .await
        .unwrap()
        .iter()
        .filter(|x| x.kind == "troupe.http.call")
        .map(|x| {
            assert_eq!(
                x.causation_id(),
                Some(e.id.as_str()),
                "under the event handled"
            );
            data(x)
        })
        .collect();
    host.shutdown().await;
    (data(&report), records)
}

fn caller(extra: &str) -> String {
    step("caller", &guest("caller"), extra)
}

fn error_of(r: &Value) -> &str {
    r["error"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_granted_call_succeeds_and_every_other_is_denied_inside_the_guest() {
    let up = Upstream::start(KEY).await;
    let port = up.port();
    let app = TestApp::new(&caller(&format!(
        "grants.http = [{{ url = \"http://127.0.0.1:{port}/v1\", methods = [\"GET\"] }}]"
    )));
    let (r, mut records) = calls_traced(
        &app,
        json!({"calls": [
            {"url": up.url("/v1/slow/0")},
            {"url": format!("http://localhost:{port}/v1/slow/0")},
            {"url": format!("http://127.0.0.1:1/v1/slow/0")},
            {"url": format!("https://127.0.0.1:{port}/v1/slow/0")},
            {"url": up.url("/v2/anything")},
            {"url": up.url("/v1x")},
            {"url": up.url("/v1/../v2")},
            {"method": "DELETE", "url": up.url("/v1/slow/0")},
            {"url": up.url(&format!("/v1/redirect?to=http://localhost:{port}/v1/slow/0")), "follow": true},
        ]}),
    )
    .await;
    let res = r["results"].as_array().unwrap();
    assert_eq!(res.len(), 10, "{r:#}");
    assert_eq!(res[0]["status"], 200, "{:#}", res[0]);
    assert_eq!(res[0]["body"], "slow");
    for (i, what) in [
        (1, "host"),
        (2, "port"),
        (3, "scheme"),
        (4, "path"),
        (5, "path within a segment"),
        (6, "dot segments"),
        (7, "method"),
    ] {
        assert!(
            error_of(&res[i]).starts_with("HTTP-request-denied"),
            "{what}: {:#}",
            res[i]
        );
    }
    assert_eq!(res[8]["status"], 302, "the redirect itself is granted");
    assert!(
        error_of(&res[9]).starts_with("HTTP-request-denied"),
        "the hop to an ungranted host: {:#}",
        res[9]
    );
    // Only the granted requests reached the service.
    let seen: Vec<String> = up.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(seen, ["/v1/slow/0", "/v1/redirect"], "{seen:?}");
    // Each call is in the trace, denied ones too; never a query or header.
    records.sort_by_key(|r| r["call"]["position"].as_u64());
    let outcome = |r: &Value| match r["call"]["status"].as_u64() {
        Some(s) => s.to_string(),
        None => r["call"]["error"].as_str().unwrap_or("").to_string(),
    };
    let outcomes: Vec<String> = records.iter().map(outcome).collect();
    let denied = "HTTP-request-denied".to_string();
    let mut want = vec!["200".to_string()];
    want.extend(std::iter::repeat_n(denied.clone(), 7));
    want.extend(["302".to_string(), denied]);
    assert_eq!(outcomes, want, "{records:#?}");
    assert_eq!(records[0]["step"], "caller");
    assert_eq!(records[0]["attempt"], 1);
    assert_eq!(records[0]["call"]["method"], "GET");
    assert_eq!(records[0]["call"]["host"], "127.0.0.1");
    assert_eq!(records[0]["call"]["port"], port);
    assert_eq!(records[0]["call"]["path"], "/v1/slow/0");
    assert_eq!(records[7]["call"]["method"], "DELETE");
    assert_eq!(records[8]["call"]["path"], "/v1/redirect", "no query");
    assert!(!format!("{records:?}").contains("to=http"), "no query");
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_end_a_call_inside_the_guest() {
    let up = Upstream::start(KEY).await;
    let port = up.port();
    let app = TestApp::new(&caller(&format!(
        "grants.http = [{{ url = \"http://127.0.0.1:{port}/v1\" }}]\n\
         limits = {{ timeout_ms = 10000, http = {{ first_byte_timeout_ms = 200, \
         between_bytes_timeout_ms = 100, max_response_bytes = 1000 }} }}"
    )));
    let r = calls(
        &app,
        json!({"calls": [
            {"url": up.url("/v1/slow/2000")},
            {"url": up.url("/v1/big/5000")},
            {"url": up.url("/v1/big/1000")},
            {"url": up.url("/v1/trickle")},
        ]}),
    )
    .await;
    let res = r["results"].as_array().unwrap();
    // The head came too late: the response's error code. The body too
    // big, or too slow: the body stream's error (wasmtime gives a p2 guest
    // the message there, not a code).
    assert!(
        error_of(&res[0]).contains("ConnectionReadTimeout"),
        "{:#}",
        res[0]
    );
    assert!(
        error_of(&res[1]).contains("body size exceeds limit: 1000 bytes"),
        "{:#}",
        res[1]
    );
    assert_eq!(
        res[2]["body"].as_str().unwrap().len(),
        1000,
        "at the limit is fine"
    );
    assert!(
        error_of(&res[3]).contains("connection read timeout"),
        "{:#}",
        res[3]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_waiting_on_a_slow_service_ends_at_its_time_limit() {
    let up = Upstream::start(KEY).await;
    let port = up.port();
    let app = TestApp::new(&caller(&format!(
        "grants.http = [{{ url = \"http://127.0.0.1:{port}/v1\" }}]\n\
         limits = {{ timeout_ms = 300 }}\nretry = {{ max_attempts = 1 }}"
    )));
    let host = app.start().await;
    let start = Instant::now();
    host.broker
        .publish(vec![event(
            "test.call",
            json!({"calls": [{"url": up.url("/v1/slow/10000")}]}),
        )])
        .await
        .unwrap();
    let dead = eventually(Duration::from_secs(10), "the call in the DLQ", async || {
        host.broker.dlq_list().await.unwrap().pop()
    })
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(dead.class, FailureClass::Timeout, "{}", dead.message);
    assert!(
        dead.message.contains("waiting in a host call"),
        "{}",
        dead.message
    );
    host.shutdown().await;
}

/// Every file under `dir`, whole, for a byte search.
fn every_file(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            every_file(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_reaches_the_granted_host_and_nothing_else() {
    let up = Upstream::start(KEY).await;
    let port = up.port();
    let app = TestApp::new(&format!(
        "[secrets]\nPAYMENTS_KEY = {{ file = \"payments.key\" }}\n\n{}",
        caller(&format!(
            "grants.http = [{{ url = \"http://127.0.0.1:{port}/v1/charges\", methods = [\"POST\"], \
             headers = {{ authorization = \"Bearer ${{secrets.PAYMENTS_KEY}}\" }} }}]\n\
             grants.env = {{ VISIBLE = \"yes\" }}"
        ))
    ));
    std::fs::write(app.path().join("payments.key"), format!("{KEY}\n")).unwrap();
    let host = app.start().await;
    let e = event(
        "test.call",
        json!({"calls": [
            {"method": "POST", "url": up.url("/v1/charges"), "body": "{}",
             "headers": {"authorization": "Bearer guest-made-this-up"}},
            {"method": "POST", "url": up.url("/v1/other")},
        ]}),
    );
    host.broker.publish(vec![e.clone()]).await.unwrap();
    host.wait_idle(IDLE).await.unwrap();
    let trace = host.broker.trace(&e.id).await.unwrap();
    let report = data(
        trace
            .iter()
            .find(|x| x.kind == "test.called")
            .expect("a report"),
    );
    let res = &report["results"];
    assert_eq!(
        res[0]["status"], 201,
        "the host's key, not the guest's: {report:#}"
    );
    assert!(error_of(&res[1]).starts_with("HTTP-request-denied"));
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["authorization"], format!("Bearer {KEY}"));
    // The guest saw its environment, its own headers and the response:
    // never the key.
    assert!(
        report.to_string().contains("VISIBLE"),
        "the dump has the environment"
    );
    assert!(!report.to_string().contains(KEY), "{report:#}");
    let metrics = troupe::api::metrics::outbound(&host.steps());
    assert!(
        metrics.contains("troupe_http_denied_total{step=\"caller\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "troupe_http_requests_total{step=\"caller\",host=\"127.0.0.1\",status=\"2xx\"} 1"
        ),
        "{metrics}"
    );
    assert!(!metrics.contains(KEY));
    host.shutdown().await;
    // Nor is it in anything Troupe wrote: broker, DLQ, cache, state.
    let mut files = Vec::new();
    every_file(&app.path().join(".troupe"), &mut files);
    assert!(!files.is_empty());
    for (p, bytes) in &files {
        assert!(
            !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
            "the secret is in {}",
            p.display()
        );
    }
}

troupe_tests::on_each_broker!(a_redelivered_event_repeats_its_calls_with_the_same_keys);

async fn a_redelivered_event_repeats_its_calls_with_the_same_keys(b: Backend) {
    let up = Upstream::start(KEY).await;
    let port = up.port();
    let app = TestApp::on(
        b,
        &format!(
            "[secrets]\nPAYMENTS_KEY = {{ file = \"payments.key\" }}\n\n{}",
            caller(&format!(
                "grants.http = [{{ url = \"http://127.0.0.1:{port}/v1/charges\", \
             headers = {{ authorization = \"Bearer ${{secrets.PAYMENTS_KEY}}\" }} }}]\n\
             retry = {{ max_attempts = 5, backoff_ms = 10 }}"
            ))
        ),
    );
    std::fs::write(app.path().join("payments.key"), KEY).unwrap();
    let host = app.start().await;
    let charge = json!({"method": "POST", "url": up.url("/v1/charges"), "body": "{}"});
    let mut events = Vec::new();
    for (i, fail) in ["retry", "trap", "retry", "trap"].iter().enumerate() {
        events.push(event(
            "test.call",
            json!({"n": i, "calls": [charge, charge], "fail_until_attempt": 3, "fail_with": fail}),
        ));
    }
    host.broker.publish(events.clone()).await.unwrap();
    // Every attempt's calls are in the trace: the failed attempts' too.
    eventually(
        Duration::from_secs(20),
        "every report and record",
        async || {
            let (mut n, mut records) = (0, Vec::new());
            for e in &events {
                let t = host.broker.trace(&e.id).await.unwrap();
                n += t.iter().filter(|x| x.kind == "test.called").count();
                records.extend(t.iter().filter(|x| x.kind == "troupe.http.call").map(data));
            }
            let attempts: std::collections::BTreeSet<u64> = records
                .iter()
                .filter_map(|r| r["attempt"].as_u64())
                .collect();
            (n == events.len()
                && records.len() == events.len() * 2 * 3
                && attempts == [1, 2, 3].into()
                && records
                    .iter()
                    .all(|r| r["call"]["status"] == 201 || r["call"]["status"] == 200))
            .then_some(())
        },
    )
    .await;
    host.shutdown().await;
    let seen = up.seen();
    // Two calls per delivery, three deliveries per event.
    assert_eq!(seen.len(), events.len() * 2 * 3);
    let keys: std::collections::BTreeSet<&str> = seen
        .iter()
        .map(|s| s.headers["idempotency-key"].as_str())
        .collect();
    assert_eq!(keys.len(), events.len() * 2, "two distinct calls per event");
    assert_eq!(up.charges(), events.len() * 2);
    for s in &seen {
        let tp = &s.headers["traceparent"];
        assert!(tp.starts_with("00-") && tp.len() == 55, "{tp}");
    }
}

/// SIGKILL the host while every event's first call waits on the service:
/// after the restart each event is delivered again and calls again, with
/// the key of the call the killed host made. One charge per event.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_killed_mid_call_repeats_the_call_with_the_same_key() {
    use troupe_tests::process::HostProcess;
    let up = Upstream::start(KEY).await;
    up.hold_first(Duration::from_secs(30));
    let port = up.port();
    let app = TestApp::new(&format!(
        "[secrets]\nPAYMENTS_KEY = {{ file = \"payments.key\" }}\n\n{}",
        caller(&format!(
            "concurrency = 8\nlimits = {{ timeout_ms = 60000 }}\n\
             grants.http = [{{ url = \"http://127.0.0.1:{port}/v1/charges\", \
             headers = {{ authorization = \"Bearer ${{secrets.PAYMENTS_KEY}}\" }} }}]"
        ))
    ));
    std::fs::write(app.path().join("payments.key"), KEY).unwrap();
    let n = 5;
    let host = HostProcess::start(&app, &[], Duration::from_secs(60));
    let url = up.url("/v1/charges");
    let lines: Vec<String> = (0..n)
        .map(|i| {
            json!({"type": "test.call", "data": {"n": i, "calls": [
                {"method": "POST", "url": url, "body": "{}"}
            ]}})
            .to_string()
        })
        .collect();
    let path = app.path().to_path_buf();
    let ids = tokio::task::spawn_blocking(move || troupe_tests::publish_lines(&path, &lines, &[]))
        .await
        .unwrap();
    assert_eq!(ids.len(), n);
    eventually(
        Duration::from_secs(30),
        "every first call in flight",
        async || (up.seen().len() == n).then_some(()),
    )
    .await;
    drop(host); // SIGKILL, with every call waiting on its answer
    up.hold_first(Duration::ZERO);
    let host = HostProcess::start(&app, &[], Duration::from_secs(60));
    let client = &host.client;
    for id in &ids {
        eventually(Duration::from_secs(30), "the event's report", async || {
            let t = client.get(&format!("/v1/traces/{id}")).ok()?;
            t.as_array()?
                .iter()
                .any(|e| e["type"] == "test.called")
                .then_some(())
        })
        .await;
    }
    drop(host);
    let seen = up.seen();
    assert_eq!(
        seen.len(),
        2 * n,
        "each call made twice: before the kill and after"
    );
    let keys: std::collections::BTreeSet<&str> = seen
        .iter()
        .map(|s| s.headers["idempotency-key"].as_str())
        .collect();
    assert_eq!(
        keys.len(),
        n,
        "one key per event, the same after the restart"
    );
    assert_eq!(up.charges(), n, "charges == events");
}

/// How a language's HTTP client words a denied request, and a body cut at
/// `max_response_bytes`.
struct Words {
    denied: &'static str,
    /// What a body cut by `max_response_bytes` says.
    too_big: &'static str,
}

/// What Rust (`troupe_step::http`) and Python (`troupe_http`) say.
const SDK: Words = Words {
    denied: "HTTP-request-denied",
    too_big: "body size exceeds limit",
};

/// The same calls from a step in each language: a granted call with the
/// host's secret and an idempotency key, a denied one, a body too big.
async fn a_step_calls_out(component: &std::path::Path, memory_mb: u32, words: Words) {
    let up = Upstream::start(KEY).await;
    let port = up.port();
    let app = TestApp::new(&format!(
        "[secrets]\nPAYMENTS_KEY = {{ file = \"payments.key\" }}\n\n{}",
        step(
            "caller",
            component,
            &format!(
                "retry = {{ max_attempts = 1 }}\n\
                 limits = {{ memory_mb = {memory_mb}, timeout_ms = 10000, \
                 http = {{ max_response_bytes = 100 }} }}\n\
                 grants.http = [{{ url = \"http://127.0.0.1:{port}/v1\", \
                 headers = {{ authorization = \"Bearer ${{secrets.PAYMENTS_KEY}}\" }} }}]"
            )
        )
    ));
    std::fs::write(app.path().join("payments.key"), KEY).unwrap();
    let list = vec![
        json!({"method": "POST", "url": up.url("/v1/charges"), "body": "{\"amount\": 1}",
         "headers": {"content-type": "application/json"}}),
        json!({"url": format!("http://localhost:{port}/v1/charges")}),
        json!({"url": up.url("/v1/big/1000")}),
    ];
    let r = calls(&app, json!({ "calls": list })).await;
    let res = r["results"].as_array().unwrap();
    assert_eq!(res[0]["status"], 201, "{r:#}");
    assert!(res[0]["body"].as_str().unwrap().contains("ch_1"), "{r:#}");
    assert!(error_of(&res[1]).contains(words.denied), "{r:#}");
    assert!(error_of(&res[2]).contains(words.too_big), "{r:#}");
    assert!(!r.to_string().contains(KEY));
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "the denied call never left the host");
    assert_eq!(seen[0].headers["authorization"], format!("Bearer {KEY}"));
    assert_eq!(seen[0].headers["content-type"], "application/json");
    assert!(uuid::Uuid::parse_str(&seen[0].headers["idempotency-key"]).is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rust_step_calls_out() {
    a_step_calls_out(&guest("caller"), 64, SDK).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_step_calls_out() {
    let dir = troupe_tests::repo().join("tests/callers/python");
    let component = tokio::task::spawn_blocking(move || troupe_tests::build(&dir))
        .await
        .unwrap();
    a_step_calls_out(&component, 128, SDK).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_javascript_step_calls_out() {
    let dir = troupe_tests::repo().join("tests/callers/js");
    let component = tokio::task::spawn_blocking(move || troupe_tests::build(&dir))
        .await
        .unwrap();
    // StarlingMonkey's fetch rejects with a TypeError that does not carry
    // wasi-http's error code (the service's log shows the request never
    // left the host); a body cut by `max_response_bytes` rejects with a
    // TypeError too.
    let words = Words {
        denied: "TypeError: NetworkError",
        too_big: "TypeError: IO error reading from incoming response body",
    };
    a_step_calls_out(&component, 128, words).await;
}

/// A server may answer before it has read the request's body and close the
/// connection (as one refusing an upload does). The answer stands, and the
/// step's later writes of its body still succeed: the host reads them and
/// drops them. Before, those writes failed, and the JavaScript engine
/// aborts on a failed body write (`unreachable`): on a loaded machine the
/// plain `POST` of `a_javascript_step_calls_out` now and then wrote its
/// body after the answer and trapped. A denied request's body is read and
/// dropped the same way.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_that_comes_before_the_body_is_sent_stands() {
    let up = Upstream::start(KEY).await;
    let port = up.port();
    let dir = troupe_tests::repo().join("tests/callers/js");
    let component = tokio::task::spawn_blocking(move || troupe_tests::build(&dir))
        .await
        .unwrap();
    let app = TestApp::new(&step(
        "caller",
        &component,
        &format!(
            "retry = {{ max_attempts = 1 }}\n\
             limits = {{ memory_mb = 128, timeout_ms = 10000 }}\n\
             grants.http = [{{ url = \"http://127.0.0.1:{port}/v1\" }}]"
        ),
    ));
    let body = "x".repeat(4096);
    let early = json!({"method": "POST", "url": up.url("/v1/early"),
                       "body": body, "body_after_ms": 300});
    // A denied request is dropped at once: the same for its body.
    let denied = json!({"method": "POST", "url": format!("http://localhost:{port}/v1/early"),
                        "body": body, "body_after_ms": 300});
    let r = calls(&app, json!({ "calls": [early, denied] })).await;
    let res = r["results"].as_array().unwrap();
    assert_eq!(res[0]["status"], 200, "{r:#}");
    assert_eq!(res[0]["body"], "early", "{r:#}");
    assert!(error_of(&res[1]).contains("TypeError"), "{r:#}");
    assert_eq!(up.seen().len(), 1, "the denied call never left the host");
}

/// `troupe check` warns of a step that imports wasi:http with no grant and
/// of a grant for a step that cannot use it; `graph` draws the urls a step
/// may call; `docs` lists them (never the headers, which may name secrets).
#[test]
fn check_graph_and_docs_show_what_steps_may_call() {
    let app = TestApp::new(&format!(
        "[secrets]\nK = {{ file = \"k\" }}\n\n{}{}",
        step("caller", &guest("caller"), ""),
        step(
            "echo",
            &guest("echo"),
            "grants.http = [{ url = \"https://api.example/v1\", methods = [\"POST\"], \
             headers = { authorization = \"Bearer ${secrets.K}\" } }]"
        )
    ));
    std::fs::write(app.path().join("k"), KEY).unwrap();
    let run = |args: &[&str]| {
        let o =
            troupe_tests::process::troupe_within(args, app.path(), &[], Duration::from_secs(120))
                .expect("troupe ends");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let check = run(&["check", "."]);
    assert!(
        check.contains(
            "warn  step `caller` imports wasi:http/outgoing-handler but has no `grants.http`"
        ),
        "{check}"
    );
    assert!(
        check.contains("warn  step `echo` has `grants.http` (https://api.example/v1) but its component does not import"),
        "{check}"
    );
    let graph = run(&["graph", "."]);
    assert!(
        graph.contains("s_echo -.-> x_https___api_example_v1"),
        "{graph}"
    );
    assert!(graph.contains("{{\"https://api.example/v1\"}}"), "{graph}");
    let docs = run(&["docs", "."]);
    let doc: Value = serde_json::from_str(&docs).unwrap();
    assert_eq!(
        doc["x-troupe-outbound-http"],
        json!({"echo": [{"url": "https://api.example/v1", "methods": ["POST"]}]})
    );
    assert!(!docs.contains("authorization") && !docs.contains(KEY));
}

/// A connection whose response was read whole serves the step's next call
/// to the same place, within an invocation and across them; one whose body
/// was cut short is not used again.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_keeps_its_connections_for_its_next_calls() {
    let up = Upstream::start(KEY).await;
    let port = up.port();
    let app = TestApp::new(&caller(&format!(
        "instances = \"reuse\"\nconcurrency = 1\n\
         grants.http = [{{ url = \"http://127.0.0.1:{port}/v1\" }}]\n\
         limits = {{ http = {{ max_response_bytes = 100 }} }}"
    )));
    let host = app.start().await;
    let ping = json!({"url": up.url("/v1/ping")});
    let big = json!({"url": up.url("/v1/big/1000")});
    for calls in [json!([ping, ping, ping]), json!([ping, big, ping])] {
        let e = event("test.call", json!({ "calls": calls }));
        host.broker.publish(vec![e.clone()]).await.unwrap();
        eventually(Duration::from_secs(20), "the report", async || {
            let t = host.broker.trace(&e.id).await.unwrap();
            t.iter().any(|x| x.kind == "test.called").then_some(())
        })
        .await;
    }
    host.shutdown().await;
    let peers: Vec<_> = up.seen().iter().map(|s| s.peer).collect();
    assert_eq!(peers.len(), 6);
    assert!(
        peers[..5].iter().all(|p| *p == peers[0]),
        "one connection for the calls read whole: {peers:?}"
    );
    assert_ne!(
        peers[5], peers[4],
        "the cut body's connection is not used again"
    );
}

/// A step with no `grants.http` makes requests all the same: each is
/// denied inside it and none reaches the service.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_with_no_grants_is_denied_every_request() {
    let up = Upstream::start(KEY).await;
    let app = TestApp::new(&caller(""));
    let r = calls(
        &app,
        json!({"calls": [{"url": up.url("/v1/ping")}, {"method": "POST", "url": up.url("/v1/charges")}]}),
    )
    .await;
    let res = r["results"].as_array().unwrap();
    assert_eq!(res.len(), 2);
    for x in res {
        assert!(error_of(x).starts_with("HTTP-request-denied"), "{r:#}");
    }
    assert!(up.seen().is_empty());
}

/// The order example acts: payment-charge (Python) charges each order
/// through the example's payment provider (examples/orders/payments-api,
/// the real service the demo runs) with the key the host adds. A charge
/// whose answer is lost is retried with the same Idempotency-Key and not
/// made twice; a receipt for an address outside the grant is refused by
/// the host and the order goes on. Each call is in the order's trace.
#[tokio::test(flavor = "multi_thread")]
async fn the_order_example_charges_each_order_once_through_its_provider() {
    let app = troupe_tests::example_app("orders");
    let pay = app
        .payments
        .as_ref()
        .expect("the example's payment provider");
    pay.control(json!({"fail_after_charge": 1}));
    let host = app.start().await;
    let order = |id: &str, extra: Value| {
        let mut data = json!({"order_id": id, "customer": "ada",
            "lines": [{"sku": "tea", "qty": 2, "price_cents": 450}]});
        data.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let mut e = event("order.placed", data);
        e.subject = Some(id.into());
        e
    };
    let lost = order("o-1", json!({}));
    let receipt = order(
        "o-2",
        json!({"receipt_url": "http://169.254.169.254/latest/meta-data/"}),
    );
    let done = async |e: &troupe::event::Event| {
        eventually(Duration::from_secs(60), "the order notified", async || {
            let t = host.broker.trace(&e.id).await.unwrap();
            let records = t.iter().filter(|x| x.kind == "troupe.http.call").count();
            (t.iter().any(|x| x.kind == "customer.notified") && records == 2).then_some(t)
        })
        .await
    };
    // One at a time: the first charge is the one whose answer is lost.
    host.broker.publish(vec![lost.clone()]).await.unwrap();
    let first = done(&lost).await;
    host.broker.publish(vec![receipt.clone()]).await.unwrap();
    let traces = (first, done(&receipt).await);
    assert!(host.broker.dlq_list().await.unwrap().is_empty());
    host.shutdown().await;
    let stats = pay.stats();
    assert_eq!(stats["charges"], 2, "one charge per order: {stats}");
    assert_eq!(stats["replays"], 1, "the lost answer was replayed: {stats}");
    assert_eq!(stats["requests"], 3, "{stats}");
    let calls = |t: &[troupe::event::Event]| -> Vec<Value> {
        let mut c: Vec<Value> = t
            .iter()
            .filter(|e| e.kind == "troupe.http.call")
            .map(data)
            .collect();
        c.sort_by_key(|r| (r["attempt"].as_u64(), r["call"]["position"].as_u64()));
        c
    };
    let (a, b) = (calls(&traces.0), calls(&traces.1));
    let charged = |t: &[troupe::event::Event]| {
        data(t.iter().find(|e| e.kind == "payment.charged").unwrap())["payment_id"].clone()
    };
    assert_eq!(charged(&traces.0), json!("ch_1"), "the replayed charge");
    assert_eq!(
        a.iter()
            .map(|r| (
                r["attempt"].as_u64().unwrap(),
                r["call"]["status"].as_u64().unwrap()
            ))
            .collect::<Vec<_>>(),
        [(1, 503), (2, 200)],
        "{a:#?}"
    );
    assert_eq!(a[0]["call"]["path"], "/v1/charges");
    assert_eq!(b.len(), 2, "{b:#?}");
    assert_eq!(b[0]["call"]["status"], 201);
    assert_eq!(b[1]["call"]["host"], "169.254.169.254");
    assert_eq!(b[1]["call"]["error"], "HTTP-request-denied");
}

/// A guest that makes call after call (denied ones cost it almost nothing)
/// gets every answer, but the trace keeps the first 100 records: the
/// host's memory and the commit stay bounded.
#[tokio::test(flavor = "multi_thread")]
async fn a_guest_calling_in_a_loop_gets_a_bounded_trace() {
    let app = TestApp::new(&caller(
        "grants.http = [{ url = \"http://127.0.0.1:1/v1\" }]",
    ));
    let list: Vec<Value> = (0..300)
        .map(|i| json!({"url": format!("http://denied.example/{i}")}))
        .collect();
    let (r, records) = calls_traced(&app, json!({ "calls": list })).await;
    let res = r["results"].as_array().unwrap();
    assert_eq!(res.len(), 300);
    assert!(
        res.iter()
            .all(|x| error_of(x).starts_with("HTTP-request-denied"))
    );
    assert_eq!(records.len(), 100, "the first 100 calls are recorded");
    let positions: Vec<u64> = {
        let mut p: Vec<u64> = records
            .iter()
            .map(|r| r["call"]["position"].as_u64().unwrap())
            .collect();
        p.sort();
        p
    };
    assert_eq!(positions, (0..100).collect::<Vec<u64>>());
}

/// The example's payment provider answers a kept-alive connection at once:
/// its answers' head and body went out in two writes, and with Nagle's
/// algorithm on the body waited for the client's delayed ACK (~40 ms an
/// answer, which capped the order example at ~44 orders/s).
#[test]
fn the_payment_provider_answers_a_kept_alive_connection_without_a_stall() {
    use std::io::{BufRead, BufReader, Read, Write};
    let api = troupe_tests::payments::PaymentsApi::start();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", api.port)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut took = Vec::new();
    for _ in 0..30 {
        let start = Instant::now();
        stream
            .write_all(b"GET /stats HTTP/1.1\r\nHost: payments\r\n\r\n")
            .unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        took.push(start.elapsed());
    }
    took.sort();
    let median = took[took.len() / 2];
    assert!(
        median < Duration::from_millis(20),
        "an answer on a kept-alive connection takes {median:?} (a delayed-ACK stall is ~40 ms)"
    );
}

/// The host's own sender never leaves a request's body waiting for the
/// server's delayed ACK of its head: a server that times each request from
/// its first byte to its last sees no such stall, on a fresh connection or
/// a kept one. (Two things keep it so: hyper writes a request's head and a
/// body it has whole in one vectored write, and Nagle's algorithm is off on
/// the sender's sockets for bodies that come in pieces. With Nagle on, this
/// request still passes, by the first; the example's payment provider,
/// above, was caught by the second.)
#[tokio::test(flavor = "multi_thread")]
async fn the_sender_writes_a_request_without_waiting_on_an_ack() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Each request: its head, then a body of `Content-Length` bytes.
    let server = std::thread::spawn(move || {
        let mut spans = Vec::new();
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut pending: Vec<u8> = Vec::new();
        while spans.len() < 5 {
            let mut buf = [0u8; 65536];
            let n = conn.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "the connection closed after {} requests",
                spans.len()
            );
            let first = Instant::now();
            pending.extend_from_slice(&buf[..n]);
            let head_end = loop {
                if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let n = conn.read(&mut buf).unwrap();
                pending.extend_from_slice(&buf[..n]);
            };
            let head = String::from_utf8_lossy(&pending[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while pending.len() < head_end + length {
                let n = conn.read(&mut buf).unwrap();
                pending.extend_from_slice(&buf[..n]);
            }
            spans.push(first.elapsed());
            pending.drain(..head_end + length);
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .unwrap();
        }
        spans
    });
    let app = TestApp::new(&caller(&format!(
        "grants.http = [{{ url = \"http://127.0.0.1:{port}/\" }}]"
    )));
    let post = json!({"method": "POST", "url": format!("http://127.0.0.1:{port}/in"), "body": "b".repeat(3000)});
    let report = calls(&app, json!({"calls": [post, post, post, post, post]})).await;
    let statuses: Vec<&Value> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["status"])
        .collect();
    assert!(statuses.iter().all(|s| **s == 200), "{report}");
    let spans = server.join().unwrap();
    let slowest = spans.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_millis(30),
        "a request took {slowest:?} from its first byte to its last (a delayed-ACK stall is \
         ~40 ms): {spans:?}"
    );
}
