//! Retention (`[retention]` in `troupe.toml`): with ages of seconds, a
//! steady stream of cascades and runs keeps the store's size bounded, and
//! what must stay stays: an event with a pending delivery (across a
//! restart, when the pending deliveries are read back from disk), a dead
//! letter younger than its age, an active run's events (its recovery
//! replays them). What was pruned is said plainly.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use troupe_tests::{ApiHost, TestApp, event, guest, step};

/// Events and ended runs go after 2 s, dead letters after 6 s; the flaky
/// step's second delivery comes 4 s after its first.
fn retained_app() -> TestApp {
    let mut m =
        String::from("[retention]\nevents = \"2s\"\nruns = \"2s\"\ndead_letters = \"6s\"\n");
    m += &step("echo", &guest("echo"), "");
    m += &step(
        "flaky",
        &guest("flaky"),
        "retry = { max_attempts = 2, backoff_ms = 4000 }",
    );
    let app = TestApp::new(&m);
    let flows = app.path().join("flows");
    std::fs::create_dir(&flows).unwrap();
    std::fs::write(
        flows.join("slow.toml"),
        "input = \"test.flaky\"\n\n[steps.f]\nstep = \"flaky\"\n\
         retry = { max_attempts = 3, backoff_ms = 4000 }\n",
    )
    .unwrap();
    app
}

/// Rows in a table of the app's store, read from outside.
fn rows(app: &Path, table: &str) -> u64 {
    troupe_tests::store_number(app, &format!("SELECT count(*) FROM {table}"))
}

/// Publish 20 pings every 50 ms (400 cascades of two events a second)
/// for `d`; how many.
fn pump(h: &ApiHost, d: Duration) -> usize {
    let broker = h.host.as_ref().unwrap().broker.clone();
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < d {
        let batch: Vec<_> = (0..20)
            .map(|i| event("test.ping", json!({"n": i})))
            .collect();
        n += batch.len();
        h.block_on(broker.publish(batch)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    n
}

#[test]
fn the_embedded_store_stays_bounded_and_keeps_what_it_must() {
    let app = retained_app();
    let h = ApiHost::start(&app);
    let broker = h.host.as_ref().unwrap().broker.clone();
    // An event that waits 4 s for its second delivery, one that will be
    // dead-lettered on it, and a run whose step is tried again in 4 s.
    let pending = event("test.flaky", json!({"fail_times": 1}));
    let doomed = event("test.flaky", json!({"fail_times": 5}));
    h.block_on(broker.publish(vec![pending.clone(), doomed.clone()]))
        .unwrap();
    let slow = h.client.start("slow", &json!({"fail_times": 1})).unwrap();
    // Runs that end at once.
    let quick: Vec<String> = (0..20)
        .map(|_| h.client.start("slow", &json!({"fail_times": 0})).unwrap())
        .collect();

    // 3 s of load, then a restart: the pending delivery is read back
    // from disk, the active run recovered from its record and events.
    let mut published = pump(&h, Duration::from_secs(3));
    let trace = h.block_on(broker.trace(&slow)).unwrap();
    assert!(
        trace.len() >= 2,
        "the active run's command and failed reply, stored 3 s ago, are kept: {:?}",
        trace.iter().map(|e| &e.kind).collect::<Vec<_>>()
    );
    drop(broker);
    drop(h);
    let h = ApiHost::start(&app);
    let broker = h.host.as_ref().unwrap().broker.clone();

    // Until the second delivery, load; then the outputs are there.
    published += pump(&h, Duration::from_secs(2));
    let recovered = h.block_on(troupe_tests::eventually(
        Duration::from_secs(10),
        "the pending event's second delivery",
        async || {
            broker
                .trace(&pending.id)
                .await
                .unwrap()
                .into_iter()
                .find(|e| e.kind == "test.recovered")
        },
    ));
    assert_eq!(troupe_tests::data(&recovered)["attempt"], 2);
    let run = h
        .client
        .wait(&slow, Duration::from_secs(20), |_| {})
        .unwrap();
    assert_eq!(run["state"], "completed", "{run:#}");
    let dead = h.block_on(troupe_tests::eventually(
        Duration::from_secs(10),
        "the dead letter",
        async || broker.dlq_list().await.unwrap().pop(),
    ));
    assert_eq!(dead.event.id, doomed.id);

    // Steady load: the store holds about two seconds of events, not all.
    published += pump(&h, Duration::from_secs(3));
    let early = rows(app.path(), "events");
    // The dead letter outlives its event's age, with its event.
    let kept = h.block_on(broker.dlq_get(&dead.id)).unwrap();
    assert_eq!(kept.event.id, doomed.id);
    published += pump(&h, Duration::from_secs(3));
    let late = rows(app.path(), "events");
    let ceiling = 2 * 400 * 5; // five seconds of two events a cascade
    assert!(
        early < ceiling && late < ceiling,
        "{published} cascades published; the store held {early} then {late} events"
    );
    // Ended runs are gone, and their status says why.
    let gone = h.client.status(&quick[0]).unwrap_err().to_string();
    assert!(
        gone.contains("404") && gone.contains("have been pruned ([retention] runs)"),
        "{gone}"
    );
    // So is a trace of pruned events.
    let h2 = h.host.as_ref().unwrap();
    let note = h.block_on(h2.broker.horizon()).unwrap().events_note();
    assert!(note.contains("have been pruned"), "{note}");
    assert!(h.block_on(broker.trace(&pending.id)).unwrap().is_empty());

    // The dead letter goes after its own age.
    h.block_on(troupe_tests::eventually(
        Duration::from_secs(15),
        "the dead letter's pruning",
        async || broker.dlq_list().await.unwrap().is_empty().then_some(()),
    ));
    assert_eq!(rows(app.path(), "deliveries"), 0, "nothing left pending");
}
