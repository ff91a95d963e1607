//! Choreography against real components, on each broker (the embedded one
//! and the real NATS server): the order example's cascade and fan-out,
//! retries, rejects, traps, contract violations both ways, and DLQ replay.

use std::time::Duration;

use serde_json::json;
use troupe::choreo::CONTRACT_ALERT;
use troupe::protocol::FailureClass;
use troupe_tests::{
    Backend, ORDER_STEPS, TestApp, data, event, eventually, guest, on_each_broker, plugin_steps,
    step,
};

const IDLE: Duration = Duration::from_millis(300);

on_each_broker!(
    a_cascade_runs_end_to_end_with_fan_out_and_host_owned_attributes,
    a_rejected_event_goes_to_the_dlq_at_once_and_stops_the_cascade,
    a_retry_is_redelivered_with_backoff_until_it_succeeds,
    retries_past_the_budget_are_dead_lettered_as_retry,
    a_trap_is_retried_then_dead_lettered_and_the_host_keeps_serving,
    input_that_breaks_the_contract_is_dead_lettered_at_once_with_an_alert,
    output_that_breaks_the_contract_is_dead_lettered_and_not_published,
    a_dead_letter_replayed_after_the_fault_is_fixed_completes,
    text_data_is_checked_against_its_declared_media_type,
    a_batch_larger_than_the_clients_acks_in_flight_is_published,
);

fn orders_app(b: Backend, extra: &str) -> TestApp {
    let mut m = String::from("name = \"orders\"\n");
    m += &plugin_steps(&ORDER_STEPS, "");
    m += extra;
    TestApp::on(b, &m)
}

fn order(id: &str, lines: serde_json::Value) -> troupe::event::Event {
    let mut e = event(
        "order.placed",
        json!({"order_id": id, "customer": "ada", "lines": lines}),
    );
    e.subject = Some(id.into());
    e
}

async fn a_cascade_runs_end_to_end_with_fan_out_and_host_owned_attributes(b: Backend) {
    let app = orders_app(b, "");
    let host = app.start().await;
    let placed = order("o-1", json!([{"sku": "tea", "qty": 2, "price_cents": 450}]));
    host.broker.publish(vec![placed.clone()]).await.unwrap();
    host.wait_idle(IDLE).await.unwrap();

    let trace = host.broker.trace(&placed.id).await.unwrap();
    let kinds: Vec<&str> = trace.iter().map(|e| e.kind.as_str()).collect();
    for k in [
        "order.placed",
        "order.validated",
        "inventory.reserved",
        "payment.charged",
        "order.shipped",
    ] {
        assert_eq!(
            kinds.iter().filter(|x| **x == k).count(),
            1,
            "{k} once in {kinds:?}"
        );
    }
    let by_kind = |k: &str| trace.iter().find(|e| e.kind == k).unwrap();
    let validated = by_kind("order.validated");
    assert_eq!(data(validated)["total_cents"], 900);
    assert_eq!(validated.causation_id(), Some(placed.id.as_str()));
    assert_eq!(validated.source, "troupe://orders/step/order-validate");
    assert_eq!(validated.subject.as_deref(), Some("o-1"));
    assert_eq!(
        validated.schema.as_deref(),
        Some("urn:troupe:schema:order.validated:1.0.0")
    );
    // Fan-out: one event started two steps.
    assert_eq!(
        by_kind("inventory.reserved").causation_id(),
        Some(validated.id.as_str())
    );
    assert_eq!(
        by_kind("payment.charged").causation_id(),
        Some(validated.id.as_str())
    );
    let shipped = by_kind("order.shipped");
    assert_eq!(
        shipped.causation_id(),
        Some(by_kind("payment.charged").id.as_str())
    );
    assert!(trace.iter().all(|e| e.correlation_id() == placed.id));
    let ids: std::collections::HashSet<_> = trace.iter().map(|e| &e.id).collect();
    assert_eq!(ids.len(), trace.len(), "every event id is unique");
    let stats = host.stats.snapshot();
    assert_eq!(stats["inventory-reserve"].handled, 1);
    assert_eq!(stats["payment-charge"].handled, 1);
    assert!(host.broker.dlq_list().await.unwrap().is_empty());
    host.shutdown().await;
}

async fn a_rejected_event_goes_to_the_dlq_at_once_and_stops_the_cascade(b: Backend) {
    let app = orders_app(b, "");
    let host = app.start().await;
    let bad = order("o-empty", json!([]));
    host.broker.publish(vec![bad.clone()]).await.unwrap();
    host.wait_idle(IDLE).await.unwrap();
    let dlq = host.broker.dlq_list().await.unwrap();
    assert_eq!(dlq.len(), 1);
    let d = &dlq[0];
    assert_eq!(
        (d.step.as_str(), d.class, d.attempts),
        ("order-validate", FailureClass::Rejected, 1)
    );
    assert!(d.message.contains("o-empty has no lines"), "{}", d.message);
    assert_eq!(d.event, bad, "the DLQ keeps the original event");
    assert_eq!(
        host.broker.trace(&bad.id).await.unwrap().len(),
        1,
        "nothing was emitted"
    );
    assert_eq!(host.stats.snapshot()["order-validate"].retried, 0);
    host.shutdown().await;
}

async fn a_retry_is_redelivered_with_backoff_until_it_succeeds(b: Backend) {
    let app = TestApp::on(
        b,
        &step(
            "flaky",
            &guest("flaky"),
            "retry = { max_attempts = 5, backoff_ms = 20 }",
        ),
    );
    let host = app.start().await;
    let e = event("test.flaky", json!({"fail_times": 2}));
    let started = std::time::Instant::now();
    host.broker.publish(vec![e.clone()]).await.unwrap();
    let recovered = eventually(Duration::from_secs(10), "test.recovered", async || {
        host.broker
            .trace(&e.id)
            .await
            .unwrap()
            .into_iter()
            .find(|x| x.kind == "test.recovered")
    })
    .await;
    assert_eq!(data(&recovered)["attempt"], 3, "delivered three times");
    assert!(
        started.elapsed() >= Duration::from_millis(20 + 40),
        "backoff of 20 then 40 ms"
    );
    host.wait_idle(IDLE).await.unwrap();
    assert_eq!(host.stats.snapshot()["flaky"].retried, 2);
    assert!(host.broker.dlq_list().await.unwrap().is_empty());
    host.shutdown().await;
}

async fn retries_past_the_budget_are_dead_lettered_as_retry(b: Backend) {
    let app = TestApp::on(
        b,
        &step(
            "flaky",
            &guest("flaky"),
            "retry = { max_attempts = 2, backoff_ms = 10 }",
        ),
    );
    let host = app.start().await;
    host.broker
        .publish(vec![event("test.flaky", json!({"fail_times": 9}))])
        .await
        .unwrap();
    host.wait_idle(IDLE).await.unwrap();
    let dlq = host.broker.dlq_list().await.unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!((dlq[0].class, dlq[0].attempts), (FailureClass::Retry, 2));
    assert!(
        dlq[0].message.contains("transient failure on attempt 2"),
        "{}",
        dlq[0].message
    );
    host.shutdown().await;
}

async fn a_trap_is_retried_then_dead_lettered_and_the_host_keeps_serving(b: Backend) {
    let m = step(
        "trapper",
        &guest("trapper"),
        "retry = { max_attempts = 3, backoff_ms = 10 }",
    ) + &step("echo", &guest("echo"), "");
    let app = TestApp::on(b, &m);
    let host = app.start().await;
    let crash = event("test.crash", json!({}));
    let ping = event("test.ping", json!({"n": 7}));
    host.broker
        .publish(vec![crash.clone(), ping.clone()])
        .await
        .unwrap();
    host.wait_idle(IDLE).await.unwrap();
    let dlq = host.broker.dlq_list().await.unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!((dlq[0].class, dlq[0].attempts), (FailureClass::Trap, 3));
    assert!(dlq[0].message.contains("trapped"), "{}", dlq[0].message);
    assert_eq!(host.stats.snapshot()["trapper"].retried, 2);
    let pong = host.broker.trace(&ping.id).await.unwrap();
    assert_eq!(
        data(pong.last().unwrap()),
        json!({"n": 7}),
        "other steps are unaffected"
    );
    host.shutdown().await;
}

async fn input_that_breaks_the_contract_is_dead_lettered_at_once_with_an_alert(b: Backend) {
    let app = orders_app(b, "");
    let host = app.start().await;
    let bad = order(
        "o-bad",
        json!([{"sku": "pen", "qty": "three", "price_cents": 1}]),
    );
    host.broker.publish(vec![bad.clone()]).await.unwrap();
    host.wait_idle(IDLE).await.unwrap();
    let dlq = host.broker.dlq_list().await.unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!((dlq[0].class, dlq[0].attempts), (FailureClass::Contract, 1));
    assert!(
        dlq[0].message.contains("/lines/0/qty"),
        "{}",
        dlq[0].message
    );
    let stats = host.stats.snapshot();
    assert_eq!(
        (
            stats["order-validate"].contract_violations,
            stats["order-validate"].retried
        ),
        (1, 0)
    );
    assert_eq!(stats["order-validate"].handled, 0, "the guest never saw it");
    let trace = host.broker.trace(&bad.id).await.unwrap();
    let alert = trace
        .iter()
        .find(|e| e.kind == CONTRACT_ALERT)
        .expect("an alert event");
    let a = data(alert);
    assert_eq!(
        (a["step"].as_str(), a["direction"].as_str()),
        (Some("order-validate"), Some("input"))
    );
    assert_eq!(a["dlq_id"], dlq[0].id.as_str());
    assert_eq!(alert.causation_id(), Some(bad.id.as_str()));
    host.shutdown().await;
}

async fn output_that_breaks_the_contract_is_dead_lettered_and_not_published(b: Backend) {
    let app = TestApp::on(b, &step("liar", &guest("liar"), ""));
    let host = app.start().await;
    let bad = event("test.bad-output", json!({}));
    let undeclared = event("test.undeclared", json!({}));
    let good = event("test.good", json!({}));
    host.broker
        .publish(vec![bad.clone(), undeclared.clone(), good.clone()])
        .await
        .unwrap();
    host.wait_idle(IDLE).await.unwrap();
    let dlq = host.broker.dlq_list().await.unwrap();
    assert_eq!(dlq.len(), 2);
    let of = |e: &troupe::event::Event| {
        dlq.iter()
            .find(|d| d.event.id == e.id)
            .expect("dead-lettered")
    };
    assert_eq!(
        (of(&bad).class, of(&bad).attempts),
        (FailureClass::Contract, 1)
    );
    assert!(
        of(&bad).message.contains("output \"test.out\""),
        "{}",
        of(&bad).message
    );
    assert!(
        of(&bad).message.contains("\"ok\" is a required property"),
        "{}",
        of(&bad).message
    );
    assert_eq!(of(&undeclared).class, FailureClass::Contract);
    assert!(
        of(&undeclared).message.contains("test.secret"),
        "{}",
        of(&undeclared).message
    );
    for e in [&bad, &undeclared] {
        let kinds: Vec<String> = host
            .broker
            .trace(&e.id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [e.kind.as_str(), CONTRACT_ALERT],
            "nothing the step emitted got out"
        );
    }
    let ok: Vec<String> = host
        .broker
        .trace(&good.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(ok, ["test.good", "test.out"]);
    host.shutdown().await;
}

async fn a_dead_letter_replayed_after_the_fault_is_fixed_completes(b: Backend) {
    let app = TestApp::on(b, "");
    let out = app.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let manifest = step(
        "sink",
        &guest("sink"),
        "retry = { max_attempts = 2, backoff_ms = 10 }\ngrants.dirs = [{ host = \"out\", guest = \"/out\", write = true }]",
    );
    std::fs::write(app.path().join("troupe.toml"), manifest).unwrap();
    let host = app.start().await;
    let e = event("order.shipped", json!({"order_id": "o-9"}));
    // The fault: a directory where the sink writes its file.
    let target = out.join(format!("{}.{}", e.id, e.id));
    std::fs::create_dir(&target).unwrap();
    host.broker.publish(vec![e.clone()]).await.unwrap();
    host.wait_idle(IDLE).await.unwrap();
    let dlq = host.broker.dlq_list().await.unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].class, FailureClass::Retry);
    // Fix it, replay, and the event goes through.
    std::fs::remove_dir(&target).unwrap();
    host.broker.dlq_replay(&dlq[0].id).await.unwrap();
    host.wait_idle(IDLE).await.unwrap();
    assert!(host.broker.dlq_list().await.unwrap().is_empty());
    assert_eq!(
        std::fs::read(&target).unwrap(),
        [e.data.as_slice(), b"\n"].concat(),
        "the sink wrote the event"
    );
    assert!(
        host.broker.dlq_replay(&dlq[0].id).await.is_err(),
        "a replayed letter is gone"
    );
    host.shutdown().await;
}

/// A contract may declare another media type than JSON (`contentMediaType`
/// in its schema): its data is checked as the text it is, both ways, and
/// data labelled with another content type breaks the contract.
async fn text_data_is_checked_against_its_declared_media_type(b: Backend) {
    let app = TestApp::on(b, &step("shout", &guest("shout"), ""));
    let host = app.start().await;
    let said = |ct: &str, text: &[u8]| {
        let mut e = troupe::event::Event::new("text.said", "troupe://tests", text.to_vec());
        e.content_type = ct.into();
        e
    };
    let ok = said("text/plain; charset=utf-8", b"hello");
    let long = said("text/plain", &[b'a'; 65]);
    let labelled_json = said("application/json", b"\"hello\"");
    let lie = said("text/plain", b"lie");
    host.broker
        .publish(vec![
            ok.clone(),
            long.clone(),
            labelled_json.clone(),
            lie.clone(),
        ])
        .await
        .unwrap();
    host.wait_idle(IDLE).await.unwrap();
    let trace = host.broker.trace(&ok.id).await.unwrap();
    let shouted = trace
        .iter()
        .find(|e| e.kind == "text.shouted")
        .expect("shouted");
    assert_eq!(
        (shouted.data.as_slice(), shouted.content_type.as_str()),
        (&b"HELLO"[..], "text/plain")
    );
    let dlq = host.broker.dlq_list().await.unwrap();
    let reason = |e: &troupe::event::Event| {
        let d = dlq
            .iter()
            .find(|d| d.event.id == e.id)
            .expect("dead-lettered");
        assert_eq!(d.class, FailureClass::Contract, "{}", d.message);
        d.message.clone()
    };
    assert!(reason(&long).contains("breaks schema"), "{}", reason(&long));
    assert!(reason(&labelled_json).contains("but the contract declares text/plain"));
    let out = reason(&lie);
    assert!(
        out.starts_with("output") && out.contains("declares text/plain"),
        "{out}"
    );
    // The dead letter shows what the step tried to emit.
    assert!(out.contains("; the rejected output: "), "{out}");
    assert_eq!(dlq.len(), 3);
    // The documents say what the contract says.
    let doc = troupe::asyncapi::document("shout", &host.steps(), &app.broker());
    let messages = doc["components"]["messages"].as_object().unwrap();
    assert!(
        messages.values().all(|m| m["contentType"] == "text/plain"),
        "{messages:?}"
    );
    host.shutdown().await;
}

/// One publish of more events than the NATS client keeps acks in flight
/// for (5,000): it used to wait forever for a permit that only its own
/// unawaited acks held (`troupe publish --file` of 20,000 lines hung).
async fn a_batch_larger_than_the_clients_acks_in_flight_is_published(b: Backend) {
    let app = orders_app(b, "");
    let host = app.start().await;
    let events: Vec<_> = (0..12_000)
        .map(|i| event("bulk.loaded", json!({"i": i})))
        .collect();
    let first = events[0].id.clone();
    let last = events[11_999].id.clone();
    tokio::time::timeout(Duration::from_secs(120), host.broker.publish(events))
        .await
        .expect("published within 120 s")
        .unwrap();
    for id in [first, last] {
        let trace = host.broker.trace(&id).await.unwrap();
        assert_eq!(trace.len(), 1, "event {id} stored once");
    }
}
