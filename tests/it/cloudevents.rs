//! Events as the ecosystem speaks them: what producers and consumers that
//! are not Troupe (other CloudEvents implementations, plain NATS clients)
//! send and get back.

use std::time::{Duration, Instant};

use serde_json::json;
use troupe_tests::process::{HostProcess, broker_arg, troupe_within};
use troupe_tests::{
    Backend, TestApp, guest, on_each_broker_blocking, plugin, publish_orders, repo, step,
};

const HUNG: Duration = Duration::from_secs(60);

/// The trace of `id`, once it holds `n` events.
fn trace(host: &HostProcess, id: &str, n: usize) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let t = host
            .client
            .get(&format!("/v1/traces/{id}"))
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        if t.len() >= n {
            return t;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "trace of {id}: {t:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Text data is the text a producer sent, on the way in, to the step, and
/// back out of the trace: not a JSON string of it.
fn text_data_comes_back_as_it_went_in(b: Backend) {
    let app = TestApp::on(b, &step("shout", &guest("shout"), ""));
    let host = HostProcess::start(&app, &[], HUNG);
    let id = host
        .client
        .publish(&json!({"type": "text.said", "datacontenttype": "text/plain", "data": "hello ü"}))
        .unwrap();
    let t = trace(&host, &id, 2);
    let said = t.iter().find(|e| e["type"] == "text.said").unwrap();
    let shouted = t.iter().find(|e| e["type"] == "text.shouted").unwrap();
    assert_eq!(said["data"], "hello ü", "{said}");
    assert_eq!(
        shouted["data"], "HELLO Ü",
        "the step read the text itself: {shouted}"
    );
    assert_eq!(shouted["datacontenttype"], "text/plain");
}

/// Events published to an app before any host of it has started are
/// delivered by its first host; a step added to an app that has run starts
/// from its own first start (it is not handed the past).
fn what_is_published_before_the_first_start_is_delivered(b: Backend) {
    let app = TestApp::on(b, &step("order-validate", &plugin("order-validate"), ""));
    let broker = broker_arg(&app);
    let d = app.path().to_str().unwrap().to_string();
    let run = || -> serde_json::Value {
        let out = troupe_within(
            &["--json", "--broker", &broker, "run", &d, "--until-idle"],
            app.path(),
            &[],
            Duration::from_secs(120),
        )
        .expect("run --until-idle ends");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let handled = |v: &serde_json::Value, step: &str| v["steps"][step]["handled"].as_u64();

    publish_orders(app.path(), 3, &["--broker", &broker]);
    let first = run();
    assert_eq!(handled(&first, "order-validate"), Some(3), "{first}");

    let manifest = app.path().join("troupe.toml");
    let mut m = std::fs::read_to_string(&manifest).unwrap();
    m.push_str(&step("inventory-reserve", &plugin("inventory-reserve"), ""));
    std::fs::write(&manifest, m).unwrap();
    let second = run();
    assert_eq!(handled(&second, "order-validate"), Some(0), "{second}");
    assert_eq!(
        handled(&second, "inventory-reserve"),
        Some(0),
        "a step added later is not handed the past: {second}"
    );

    publish_orders(app.path(), 1, &["--broker", &broker]);
    let third = run();
    assert_eq!(handled(&third, "order-validate"), Some(1), "{third}");
    assert_eq!(handled(&third, "inventory-reserve"), Some(1), "{third}");
}

/// CloudEvents identifies an event by source and id: two producers' events
/// with the same id are both kept and handled; the same source and id
/// again is a duplicate, ignored.
fn events_are_identified_by_source_and_id(b: Backend) {
    let app = TestApp::on(b, &step("shout", &guest("shout"), ""));
    let host = HostProcess::start(&app, &[], HUNG);
    let said = |source: &str, text: &str| {
        json!({"id": "42", "source": source, "type": "text.said",
               "datacontenttype": "text/plain", "data": text})
    };
    for (source, text) in [
        ("urn:producer:a", "from a"),
        ("urn:producer:b", "from b"),
        ("urn:producer:a", "a again"),
    ] {
        assert_eq!(host.client.publish(&said(source, text)).unwrap(), "42");
    }
    let _ = trace(&host, "42", 4);
    std::thread::sleep(Duration::from_millis(500));
    let mut got: Vec<String> = trace(&host, "42", 4)
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["type"].as_str().unwrap(),
                e["data"].as_str().unwrap()
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "text.said from a",
            "text.said from b",
            "text.shouted FROM A",
            "text.shouted FROM B"
        ]
    );
}

on_each_broker_blocking!(
    events_are_identified_by_source_and_id,
    the_cloudevents_sdk_produces_and_consumes,
    text_data_comes_back_as_it_went_in,
    what_is_published_before_the_first_start_is_delivered,
);

/// Attributes a producer sets are checked as CloudEvents 1.0 types them;
/// a bad one gets 400 naming it, and nothing is stored.
#[test]
fn invalid_attributes_are_refused_naming_the_attribute() {
    let app = TestApp::new(&step("shout", &guest("shout"), ""));
    let host = HostProcess::start(&app, &[], HUNG);
    let said = json!({"type": "text.said", "datacontenttype": "text/plain", "data": "hi"});
    for (attr, value, expect) in [
        ("id", json!(""), "`id` must not be empty"),
        ("source", json!(""), "`source` must not be empty"),
        (
            "source",
            json!("not a uri"),
            "`source` must be a URI reference",
        ),
        (
            "dataschema",
            json!("%%"),
            "`dataschema` must be a URI reference",
        ),
        (
            "time",
            json!("yesterday"),
            "`time` must be an RFC 3339 timestamp",
        ),
        ("data", json!({"a": 1}), "must be a string"),
    ] {
        let mut e = said.clone();
        e[attr] = value;
        match host.client.publish(&e) {
            Err(troupe::client::ClientError::Status {
                status: 400,
                message,
                ..
            }) => {
                assert!(message.contains(expect), "{attr}: {message}")
            }
            other => panic!("{attr}: {other:?}"),
        }
    }
    let mut ok = said.clone();
    ok["time"] = json!("2026-12-01T10:00:00+02:00");
    ok["source"] = json!("urn:producer:a");
    host.client.publish(&ok).expect("a valid event");
}

/// A NATS client that is not Troupe publishes in the binding's binary
/// mode, with header names in any case, `ce-datacontenttype`, and no
/// `ce-time`: the step gets the event, and every read of it gives the same
/// time, the time the server stored it (not later than what it caused).
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_nats_client_is_understood() {
    let app = TestApp::on(Backend::Nats, &step("shout", &guest("shout"), ""));
    let host = app.start().await;
    let ns = app.namespace.clone().unwrap();
    let client = async_nats::connect(troupe_tests::nats_server())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let mut headers = async_nats::HeaderMap::new();
    for (k, v) in [
        ("Ce-Specversion", "1.0"),
        ("Ce-Id", "foreign-1"),
        ("Ce-Source", "urn:foreign"),
        ("Ce-Type", "text.said"),
        ("ce-datacontenttype", "text/plain"),
    ] {
        headers.insert(k, v);
    }
    js.publish_with_headers(format!("{ns}.ev.text.said"), headers, "hola".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let start = Instant::now();
    let events = loop {
        let t = host.broker.trace("foreign-1").await.unwrap();
        if t.len() == 2 {
            break t;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{t:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let said = events.iter().find(|e| e.kind == "text.said").unwrap();
    let shouted = events.iter().find(|e| e.kind == "text.shouted").unwrap();
    assert_eq!(
        (said.content_type.as_str(), said.data.as_slice()),
        ("text/plain", &b"hola"[..])
    );
    assert_eq!(shouted.data, b"HOLA");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let again = host.broker.trace("foreign-1").await.unwrap();
    let said_again = again.iter().find(|e| e.kind == "text.said").unwrap();
    assert_eq!(said_again.time, said.time, "the same time at every read");
    let at = |t: &str| humantime::parse_rfc3339(t).unwrap();
    assert!(
        at(&said.time) <= at(&shouted.time),
        "{} after {}",
        said.time,
        shouted.time
    );
    host.shutdown().await;
}

/// `POST /v1/events` with a body and headers of our choosing: the status
/// and the JSON answer.
fn post_raw(
    host: &HostProcess,
    app: &TestApp,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let token = troupe::client::token_for(&app.path().join(troupe::app::STATE_DIR), false).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent
        .post(&format!("{}/v1/events", host.client.base))
        .header("Authorization", &format!("Bearer {token}"));
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let mut res = req.send(&body[..]).unwrap();
    let status = res.status().as_u16();
    let answer = res
        .body_mut()
        .read_json()
        .unwrap_or(serde_json::Value::Null);
    (status, answer)
}

/// The official CloudEvents Rust SDK as a producer, in each of the HTTP
/// binding's modes (structured, binary, batch), with extension values of
/// every JSON type; and as a consumer of what the trace returns: every
/// event parses, with its data and extensions (types included) as sent.
fn the_cloudevents_sdk_produces_and_consumes(b: Backend) {
    use cloudevents::{AttributesReader, Event as CloudEvent, EventBuilder, EventBuilderV10};
    let app = TestApp::on(b, &step("shout", &guest("shout"), ""));
    let host = HostProcess::start(&app, &[], HUNG);
    let said = |id: &str, text: &str| -> CloudEvent {
        EventBuilderV10::new()
            .id(id)
            .source("urn:sdk:producer")
            .ty("text.said")
            .data("text/plain", text.to_string())
            .extension("priority", 5i64)
            .extension("urgent", true)
            .extension("team", "a b")
            .build()
            .unwrap()
    };
    let ct = |v: &str| vec![("Content-Type".to_string(), v.to_string())];

    // Structured.
    let body = serde_json::to_vec(&said("sdk-s", "structured ü")).unwrap();
    let (status, answer) = post_raw(&host, &app, &ct("application/cloudevents+json"), body);
    assert_eq!((status, &answer["id"]), (202, &json!("sdk-s")), "{answer}");

    // Binary: the SDK's own HTTP serializer writes the headers and body.
    let request: axum::http::Request<Option<Vec<u8>>> =
        said("sdk-b", "binary \"mode\"").try_into().unwrap();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    assert!(headers.iter().any(|(k, _)| k == "ce-id"), "{headers:?}");
    let (status, answer) = post_raw(&host, &app, &headers, request.into_body().unwrap());
    assert_eq!((status, &answer["id"]), (202, &json!("sdk-b")), "{answer}");

    // Batch: stored whole; a batch with one bad event stores nothing.
    let batch = vec![said("sdk-1", "one"), said("sdk-2", "two")];
    let (status, answer) = post_raw(
        &host,
        &app,
        &ct("application/cloudevents-batch+json"),
        serde_json::to_vec(&batch).unwrap(),
    );
    assert_eq!(
        (status, &answer["ids"]),
        (202, &json!(["sdk-1", "sdk-2"])),
        "{answer}"
    );
    let mut bad = serde_json::to_value(&batch).unwrap();
    bad[0]["id"] = json!("sdk-3");
    bad[1]["time"] = json!("yesterday");
    let (status, answer) = post_raw(
        &host,
        &app,
        &ct("application/cloudevents-batch+json"),
        serde_json::to_vec(&bad).unwrap(),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("event 1 of the batch"),
        "{answer}"
    );

    // Consumed by the SDK: each trace parses, data and extensions intact.
    for (id, text) in [
        ("sdk-s", "structured ü"),
        ("sdk-b", "binary \"mode\""),
        ("sdk-1", "one"),
        ("sdk-2", "two"),
    ] {
        let events: Vec<CloudEvent> = trace(&host, id, 2)
            .into_iter()
            .map(|v| serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}")))
            .collect();
        let said = events.iter().find(|e| e.ty() == "text.said").unwrap();
        let shouted = events.iter().find(|e| e.ty() == "text.shouted").unwrap();
        let text_of = |e: &CloudEvent| match e.data() {
            Some(cloudevents::Data::String(s)) => s.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(text_of(said), text);
        assert_eq!(text_of(shouted), text.to_uppercase());
        assert_eq!(said.source().as_str(), "urn:sdk:producer");
        assert_eq!(
            said.extension("team").map(|v| v.to_string()).as_deref(),
            Some("a b")
        );
        if id != "sdk-b" {
            // Binary mode carries every value as text; the JSON format
            // keeps integers and booleans as such.
            assert_eq!(
                said.extension("priority"),
                Some(&cloudevents::event::ExtensionValue::Integer(5))
            );
            assert_eq!(
                said.extension("urgent"),
                Some(&cloudevents::event::ExtensionValue::Boolean(true))
            );
        }
    }
    assert!(
        trace(&host, "sdk-3", 0).is_empty(),
        "nothing of a refused batch is stored"
    );
}

/// The example of docs/brokers.md: a Python service using nats-py (not
/// Troupe) publishes an order in the NATS binding's binary mode and reads
/// the step's answer through a consumer of its own.
#[tokio::test(flavor = "multi_thread")]
async fn the_nats_client_example_talks_to_an_app() {
    let app = TestApp::on(
        Backend::Nats,
        &step("order-validate", &plugin("order-validate"), ""),
    );
    let host = app.start().await;
    let ns = app.namespace.clone().unwrap();
    let python = repo().join("toolchains/testing/.venv/bin/python");
    assert!(python.exists(), "run ./scripts/toolchains testing first");
    let out = tokio::process::Command::new(python)
        .arg(repo().join("examples/nats-client/client.py"))
        .args(["--server", &troupe_tests::nats_server(), "--namespace", &ns])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("received order.validated")
            && stdout.contains("order o-1001 for Zoë, total 900 cents"),
        "{stdout}"
    );
    host.shutdown().await;
}

/// schemathesis (pinned in toolchains/testing) drives the HTTP API of the
/// orders example from its OpenAPI document, every check on, with a fixed
/// seed: no server error, no undocumented status or body, nothing the
/// document allows refused, nothing it forbids accepted. The summary is
/// kept in `target/schemathesis.txt` (`scripts/test` prints it).
#[test]
fn schemathesis_finds_nothing_wrong_with_the_api() {
    let app = troupe_tests::example_app("orders");
    // Build the steps first (`check` does): what is tested is the API, not
    // how long four toolchains take on a loaded machine (a fresh clone's
    // first start builds nine steps; seen over a minute in CI).
    let d = app.path().to_str().unwrap();
    let built = troupe_within(&["check", d], app.path(), &[], Duration::from_secs(900))
        .expect("troupe check ends");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let host = HostProcess::start(&app, &[], HUNG);
    let token = troupe::client::token_for(&app.path().join(troupe::app::STATE_DIR), false).unwrap();
    let st = repo().join("toolchains/testing/.venv/bin/schemathesis");
    assert!(st.exists(), "run ./scripts/toolchains testing first");
    let out = std::process::Command::new(st)
        .args(["run", &format!("{}/v1/openapi.json", host.client.base)])
        .args([
            "--checks",
            "all",
            "--max-examples",
            "100",
            "--seed",
            "20261201",
        ])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .env("NO_COLOR", "1")
        .current_dir(app.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary: String = text
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect::<Vec<_>>()
        .join("\n");
    let _ = std::fs::write(repo().join("target/schemathesis.txt"), &summary);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases = summary
        .lines()
        .find_map(|l| l.trim().split_once(" generated, "))
        .and_then(|(n, _)| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(cases >= 1000, "too few cases to mean much: {summary}");
    assert!(!summary.contains("failure"), "{summary}");
}

/// The official CloudEvents SDK over NATS: it produces an event in the
/// binding's structured mode (its own JSON serialisation as the payload),
/// and reads what the step emitted from the message's `ce-*` headers and
/// payload (binary mode) with its HTTP binding's decoder, whose headers
/// are the NATS binding's too.
#[tokio::test(flavor = "multi_thread")]
async fn the_cloudevents_sdk_speaks_over_nats() {
    use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
    use futures_util::StreamExt;
    let app = TestApp::on(Backend::Nats, &step("shout", &guest("shout"), ""));
    let host = app.start().await;
    let ns = app.namespace.clone().unwrap();
    let client = async_nats::connect(troupe_tests::nats_server())
        .await
        .unwrap();
    let mut shouted = client
        .subscribe(format!("{ns}.ev.text.shouted"))
        .await
        .unwrap();
    let event = EventBuilderV10::new()
        .id("sdk-nats-1")
        .source("urn:sdk:nats")
        .ty("text.said")
        .data("text/plain", "über nats".to_string())
        .extension("priority", 7i64)
        .build()
        .unwrap();
    let js = async_nats::jetstream::new(client.clone());
    js.publish(
        format!("{ns}.ev.text.said"),
        serde_json::to_vec(&event).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(20), shouted.next())
        .await
        .expect("the step's answer within 20 s")
        .unwrap();
    let mut headers = axum::http::HeaderMap::new();
    for (k, vs) in msg.headers.iter().flat_map(|h| h.iter()) {
        for v in vs {
            headers.append(
                axum::http::HeaderName::from_bytes(AsRef::<str>::as_ref(k).as_bytes()).unwrap(),
                axum::http::HeaderValue::from_str(v.as_str()).unwrap(),
            );
        }
    }
    let got = cloudevents::binding::http::to_event(&headers, msg.payload.to_vec())
        .unwrap_or_else(|e| panic!("the SDK cannot read it: {e}: {headers:?}"));
    assert_eq!(got.ty(), "text.shouted");
    assert_eq!(got.datacontenttype(), Some("text/plain"));
    match got.data() {
        Some(cloudevents::Data::String(s)) => assert_eq!(s, "ÜBER NATS"),
        Some(cloudevents::Data::Binary(b)) => assert_eq!(b, "ÜBER NATS".as_bytes()),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        got.extension("causationid")
            .map(|v| v.to_string())
            .as_deref(),
        Some("sdk-nats-1")
    );
    // The producer's event as Troupe stored it: typed extension kept.
    let said = host.broker.trace("sdk-nats-1").await.unwrap();
    let said = said.iter().find(|e| e.kind == "text.said").unwrap();
    assert_eq!(said.to_json()["priority"], 7);
    host.shutdown().await;
}
