//! OpenTelemetry export, against a real OTLP receiver the test starts
//! (`support/otlp.rs`, decoding with `opentelemetry-proto`): the spans of
//! one order's cascade form one trace, from the producer's `traceparent`
//! through every step and out on the outbound call; a run's spans form
//! its trace; metrics arrive; and a collector that is down costs the app
//! nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use troupe_tests::otlp::{self, Got, Receiver};
use troupe_tests::{ApiHost, TestApp, orders_with_flows, wait_for};

/// The producer's context: the trace everything below joins.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE}-{PRODUCER_SPAN}-01")
}

fn telemetry(r: &Receiver, protocol: &str) -> String {
    format!(
        "[telemetry]\nendpoint = \"{}\"\nprotocol = \"{protocol}\"\nservice_name = \"shop\"\nmetrics_interval = \"1s\"\n",
        r.url
    )
}

fn orders(extra: &str) -> TestApp {
    orders_with_flows(extra)
}

fn order(id: &str) -> Value {
    json!({"order_id": id, "customer": "ada",
           "lines": [{"sku": "tea", "qty": 2, "price_cents": 450}]})
}

/// POST `body` to `path` with the producer's `traceparent`.
fn post_traced(h: &ApiHost, path: &str, body: &Value) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .post(format!("{}{path}", h.url))
        .header("Authorization", &format!("Bearer {}", h.token))
        .header("traceparent", &traceparent())
        .send_json(body)
        .expect("the API answers");
    let status = r.status().as_u16();
    (status, r.body_mut().read_json().unwrap_or(Value::Null))
}

fn one<'a>(spans: &'a [Got], what: &str, pick: impl Fn(&Got) -> bool) -> &'a Got {
    let found: Vec<&Got> = spans.iter().filter(|s| pick(s)).collect();
    match found.as_slice() {
        [s] => s,
        _ => panic!(
            "{what}: {} spans, not one: {:#?}",
            found.len(),
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        ),
    }
}

/// Every span of `spans` has its parent among them, but `root`.
fn parents_all_there(spans: &[Got], root: &Got) {
    let ids = by_id(spans);
    for s in spans.iter().filter(|s| s.span != root.span) {
        let parent = s.parent.as_str();
        assert!(
            ids.contains_key(parent),
            "{}: parent {parent} missing",
            s.name
        );
    }
}

fn by_id(spans: &[Got]) -> BTreeMap<&str, &Got> {
    spans.iter().map(|s| (s.span.as_str(), s)).collect()
}

/// The steps of the order cascade and the event each processes.
const CASCADE: [(&str, &str); 5] = [
    ("order-validate", "order.placed"),
    ("inventory-reserve", "order.validated"),
    ("payment-charge", "order.validated"),
    ("shipping-dispatch", "payment.charged"),
    ("customer-notify", "order.shipped"),
];

#[test]
fn one_orders_cascade_is_one_trace_with_the_right_parents_and_links() {
    let receiver = Receiver::http();
    let app = orders(&telemetry(&receiver, "http/protobuf"));
    let h = ApiHost::start(&app);
    let event = json!({"specversion": "1.0", "type": "order.placed", "source": "shop/web",
                       "id": "ord-otel-1", "data": order("ord-otel-1")});
    let (status, body) = post_traced(&h, "/v1/events", &event);
    assert_eq!(status, 202, "{body}");
    let spans = receiver.wait(Duration::from_secs(30), "the cascade's spans", |s| {
        CASCADE.iter().all(|(step, kind)| {
            s.iter().any(|x| {
                x.name == format!("process {kind}")
                    && x.attr("messaging.consumer.group.name") == Some(step)
            })
        }) && s.iter().any(|x| x.name == "commit state")
            && s.iter().filter(|x| x.name.starts_with("invoke ")).count() >= CASCADE.len()
    });
    let ours: Vec<Got> = spans.into_iter().filter(|s| s.trace == TRACE).collect();
    let ids = by_id(&ours);
    assert!(ours.iter().all(|s| s.service == "shop"));

    // The request, a child of the producer's span.
    let server = one(&ours, "the request", |s| s.name == "POST /v1/events");
    assert_eq!(
        (server.kind, server.parent.as_str()),
        (otlp::SERVER, PRODUCER_SPAN)
    );
    assert_eq!(server.attr("http.response.status_code"), Some("202"));
    // Its publication, under the request.
    let publish = one(&ours, "publish order.placed", |s| {
        s.name == "publish order.placed"
    });
    assert_eq!(
        (publish.kind, publish.parent.as_str()),
        (otlp::PRODUCER, server.span.as_str())
    );
    assert_eq!(publish.attr("messaging.system"), Some("troupe"));
    assert_eq!(publish.attr("messaging.message.id"), Some("ord-otel-1"));
    assert_eq!(publish.attr("cloudevents.event_source"), Some("shop/web"));

    for (step, kind) in CASCADE {
        let process = one(&ours, step, |s| {
            s.name == format!("process {kind}")
                && s.attr("messaging.consumer.group.name") == Some(step)
        });
        assert_eq!(process.kind, otlp::CONSUMER);
        assert_eq!(process.attr("messaging.operation.type"), Some("process"));
        // A child of the publication of the event it processes, and
        // linked to it.
        let creation = ids
            .get(process.parent.as_str())
            .unwrap_or_else(|| panic!("{step}: its parent {} was not exported", process.parent));
        assert_eq!(creation.name, format!("publish {kind}"), "{step}");
        assert_eq!(creation.kind, otlp::PRODUCER);
        assert_eq!(
            process.links,
            vec![(TRACE.to_string(), creation.span.clone())],
            "{step}"
        );
        // The invocation under it: attempt, outcome, component.
        let invoke = one(&ours, step, |s| s.name == format!("invoke {step}"));
        assert_eq!(invoke.parent, process.span, "{step}");
        assert_eq!(invoke.attr("troupe.outcome"), Some("ok"), "{step}");
        assert_eq!(invoke.attr("troupe.attempt"), Some("1"), "{step}");
        let digest = invoke.attr("troupe.component.digest").unwrap_or_default();
        assert!(
            digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{step}: {digest}"
        );
        assert!(
            invoke.start_ns >= process.start_ns && invoke.end_ns <= process.end_ns,
            "{step}"
        );
        // What the step published is a child of its invocation.
        assert!(
            ours.iter()
                .any(|s| s.kind == otlp::PRODUCER && s.parent == invoke.span),
            "{step}: no publication under its invocation"
        );
    }
    // Fan-out: both consumers of order.validated are children of its one
    // publication.
    let validated = one(&ours, "publish order.validated", |s| {
        s.name == "publish order.validated"
    });
    let consumers = ours
        .iter()
        .filter(|s| s.name == "process order.validated" && s.parent == validated.span)
        .count();
    assert_eq!(consumers, 2);

    // The outbound call: a client span under payment-charge's invocation,
    // whose id the provider received in `traceparent`.
    let charge = one(&ours, "invoke payment-charge", |s| {
        s.name == "invoke payment-charge"
    });
    let call = one(&ours, "the call", |s| s.kind == otlp::CLIENT);
    assert_eq!(call.parent, charge.span);
    assert_eq!(call.attr("http.request.method"), Some("POST"));
    assert_eq!(call.attr("server.address"), Some("127.0.0.1"));
    assert_eq!(call.attr("http.response.status_code"), Some("201"));
    let charges = app.payments.as_ref().expect("the provider").charges();
    let sent = charges
        .iter()
        .find(|c| c["order_id"] == "ord-otel-1")
        .and_then(|c| c["traceparent"].as_str())
        .unwrap_or_else(|| panic!("the provider got no traceparent: {charges:?}"));
    assert_eq!(sent, format!("00-{TRACE}-{}-01", call.span));

    // The state commit of the stateful step, under its delivery.
    let reserve = one(&ours, "reserve", |s| {
        s.name == "process order.validated"
            && s.attr("messaging.consumer.group.name") == Some("inventory-reserve")
    });
    let commit = one(&ours, "commit state", |s| s.name == "commit state");
    assert_eq!(commit.parent, reserve.span);
    assert_eq!(commit.attr("troupe.state.verdict"), Some("committed"));

    // Every span of the trace has its parent in the trace, but the
    // request's (the producer's own span).
    parents_all_there(&ours, server);
    // And metrics came the same way.
    wait_for(
        Duration::from_secs(15),
        "the step counters as metrics",
        || {
            receiver
                .metric_names()
                .contains("troupe.step.handled")
                .then_some(())
        },
    );
}

#[test]
fn a_runs_spans_form_its_trace_over_grpc() {
    let receiver = Receiver::grpc();
    let app = orders(&telemetry(&receiver, "grpc"));
    let h = ApiHost::start(&app);
    let (status, body) = post_traced(&h, "/v1/flows/fulfil/runs", &order("ord-otel-run"));
    assert_eq!(status, 202, "{body}");
    let run_id = body["run_id"].as_str().expect("a run id").to_string();
    let spans = receiver.wait(Duration::from_secs(30), "the run's span", |s| {
        s.iter().any(|x| x.name == "run fulfil")
    });
    let ours: Vec<Got> = spans.into_iter().filter(|s| s.trace == TRACE).collect();
    let server = one(&ours, "the start", |s| {
        s.name == "POST /v1/flows/{flow}/runs"
    });
    assert_eq!(server.parent, PRODUCER_SPAN);
    let run = one(&ours, "the run", |s| s.name == "run fulfil");
    assert_eq!(run.parent, server.span);
    assert_eq!(run.attr("troupe.run.id"), Some(run_id.as_str()));
    assert_eq!(run.attr("troupe.run.state"), Some("completed"));
    assert_eq!(run.status, 0, "a completed run is no error");
    for sid in ["validate", "reserve", "charge", "ship"] {
        let step = one(&ours, sid, |s| s.name == format!("step {sid}"));
        assert_eq!(step.parent, run.span, "{sid}");
        assert_eq!(step.attr("troupe.step.state"), Some("completed"), "{sid}");
        assert!(
            step.start_ns >= run.start_ns && step.end_ns <= run.end_ns,
            "{sid}"
        );
        // Its command, sent under it; the worker's delivery under that.
        let send = one(&ours, sid, |s| {
            s.kind == otlp::PRODUCER && s.attr("troupe.flow.step") == Some(sid)
        });
        assert_eq!(send.parent, step.span, "{sid}");
        let process = one(&ours, sid, |s| {
            s.kind == otlp::CONSUMER && s.parent == send.span
        });
        assert!(
            ours.iter()
                .any(|s| s.name.starts_with("invoke ") && s.parent == process.span),
            "{sid}: no invocation"
        );
    }
    parents_all_there(&ours, server);
    wait_for(Duration::from_secs(15), "metrics over gRPC", || {
        let m = receiver.metric_names();
        (m.contains("troupe.step.handled") && m.contains("troupe.runs.active")).then_some(())
    });
}

#[test]
fn a_collector_that_is_down_costs_the_app_nothing() {
    // Nothing listens there: every export fails, and the app goes on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let table = format!("[telemetry]\nendpoint = \"{url}\"\nprotocol = \"http/protobuf\"\n");
    let app = orders(&table);
    let h = ApiHost::start(&app);
    let status = h.run("fulfil", order("ord-otel-down"));
    assert_eq!(status["state"], "completed", "{status}");
}

#[test]
fn without_export_a_cascade_still_shares_one_trace() {
    let app = orders("");
    let h = ApiHost::start(&app);
    // No traceparent from the producer: the host starts the trace.
    let (status, body) = h.raw(
        "POST",
        "/v1/events",
        Some(&json!({"type": "order.placed", "id": "ord-otel-2", "data": order("ord-otel-2")})),
    );
    assert_eq!(status, 202, "{body}");
    let events = wait_for(Duration::from_secs(30), "the cascade to ship", || {
        let (_, t) = h.raw("GET", "/v1/traces/ord-otel-2", None);
        let events = t.as_array().cloned().unwrap_or_default();
        events
            .iter()
            .any(|e| e["type"] == "customer.notified")
            .then_some(events)
    });
    let traces: std::collections::BTreeSet<String> = events
        .iter()
        .filter_map(|e| e["traceparent"].as_str())
        .map(|t| t.split('-').nth(1).unwrap_or_default().to_string())
        .collect();
    assert_eq!(traces.len(), 1, "{events:#?}");
    // With the producer's: its trace.
    let (status, _) = post_traced(
        &h,
        "/v1/events",
        &json!({"type": "order.placed", "id": "ord-otel-3", "data": order("ord-otel-3")}),
    );
    assert_eq!(status, 202);
    let first = wait_for(Duration::from_secs(30), "the event", || {
        let (_, t) = h.raw("GET", "/v1/traces/ord-otel-3", None);
        t.as_array().and_then(|e| e.first().cloned())
    });
    let tp = first["traceparent"].as_str().unwrap_or_default();
    assert!(tp.starts_with(&format!("00-{TRACE}-")), "{first}");
}
