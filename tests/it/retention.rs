//! Retention (`[retention]` in `troupe.toml`): with ages of seconds, a
//! steady stream of cascades and runs keeps the store's size bounded, and
//! what must stay stays: an event with a pending delivery (across a
//! restart, when the pending deliveries are read back from disk), a dead
//! letter younger than its age, an active run's events (its recovery
//! replays them) or record (NATS). What was pruned is said plainly. On
//! NATS, step state's log, verdicts and deletion markers stay bounded
//! too, and no write is lost or applied twice.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use troupe_tests::{ApiHost, Backend, TestApp, event, guest, step};

/// Events and ended runs go after 2 s, dead letters after 6 s; the flaky
/// step's second delivery comes 4 s after its first.
fn retained_app() -> TestApp {
    retained_app_on(Backend::Embedded, "6s", "")
}

/// The same on `backend`, dead letters kept for `dead_letters`, with
/// `extra` steps.
fn retained_app_on(backend: Backend, dead_letters: &str, extra: &str) -> TestApp {
    let mut m =
        format!("[retention]\nevents = \"2s\"\nruns = \"2s\"\ndead_letters = {dead_letters:?}\n");
    m += &step("echo", &guest("echo"), "");
    m += &step(
        "flaky",
        &guest("flaky"),
        "retry = { max_attempts = 2, backoff_ms = 4000 }",
    );
    m += extra;
    let app = TestApp::on(backend, &m);
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

/// What waited through the load is there: the pending event's second
/// delivery (its outputs), the active run finished, the doomed event's
/// dead letter (returned).
fn kept_what_waited(
    h: &ApiHost,
    pending: &troupe::event::Event,
    slow: &str,
    doomed: &troupe::event::Event,
) -> troupe::broker::DeadLetter {
    let broker = h.host.as_ref().unwrap().broker.clone();
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
        .wait(slow, Duration::from_secs(20), |_| {})
        .unwrap();
    assert_eq!(run["state"], "completed", "{run:#}");
    let dead = h.block_on(troupe_tests::eventually(
        Duration::from_secs(10),
        "the dead letter",
        async || broker.dlq_list().await.unwrap().pop(),
    ));
    assert_eq!(dead.event.id, doomed.id);
    dead
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
    let dead = kept_what_waited(&h, &pending, &slow, &doomed);

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

/// Messages in stream `name` of the NATS server.
async fn nats_messages(name: &str) -> u64 {
    let client = async_nats::connect(troupe_tests::nats_server())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(name).await.unwrap();
    s.info().await.unwrap().state.messages
}

/// Publish 20 pings and one step-state write every 50 ms for `d`: how
/// many pings, and the state writes in `writes`.
fn pump_with_state(h: &ApiHost, d: Duration, writes: &mut u64) -> usize {
    let broker = h.host.as_ref().unwrap().broker.clone();
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < d {
        let mut batch: Vec<_> = (0..20)
            .map(|i| event("test.ping", json!({"n": i})))
            .collect();
        n += batch.len();
        // A count, and a key set and deleted (a deletion marker).
        let key = format!("k{writes}");
        batch.push(event(
            "test.kv",
            json!({"main": {"ops": [
                {"op": "incr", "bucket": "", "key": "n"},
                {"op": "set", "bucket": "", "key": key, "value": "x"},
                {"op": "delete", "bucket": "", "key": key},
            ]}}),
        ));
        *writes += 1;
        h.block_on(broker.publish(batch)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    n
}

#[test]
fn the_nats_streams_stay_bounded_and_keep_what_they_must() {
    let keeper = format!(
        "[steps.keeper]\ncomponent = {:?}\ngrants.env = {{ ROLE = \"main\" }}\n",
        guest("keeper").display().to_string()
    );
    // Dead letters for 15 s: this test's load and its restart take longer
    // to reach the dead letter than the embedded one's.
    let app = retained_app_on(Backend::Nats, "15s", &keeper);
    let names = troupe::broker::nats::Names::new(&app.namespace.clone().unwrap(), &app.app().name);
    let (events, dlq, kvlog, kv) = (
        names.events_stream(),
        names.dlq_stream(),
        names.kvlog_stream(),
        format!("KV_{}", names.kv_bucket()),
    );
    let h = ApiHost::start(&app);
    let broker = h.host.as_ref().unwrap().broker.clone();
    let pending = event("test.flaky", json!({"fail_times": 1}));
    let doomed = event("test.flaky", json!({"fail_times": 5}));
    h.block_on(broker.publish(vec![pending.clone(), doomed.clone()]))
        .unwrap();
    let slow = h.client.start("slow", &json!({"fail_times": 1})).unwrap();
    let quick: Vec<String> = (0..20)
        .map(|_| h.client.start("slow", &json!({"fail_times": 0})).unwrap())
        .collect();

    // Load, a restart, load until the pending delivery's second attempt.
    let mut writes = 0;
    let mut published = pump_with_state(&h, Duration::from_secs(3), &mut writes);
    drop(broker);
    drop(h);
    let h = ApiHost::start(&app);
    let broker = h.host.as_ref().unwrap().broker.clone();
    published += pump_with_state(&h, Duration::from_secs(2), &mut writes);
    // The active run's record outlived `runs`: it finishes.
    let dead = kept_what_waited(&h, &pending, &slow, &doomed);

    // Steady load: the events stream holds a few seconds of events.
    published += pump_with_state(&h, Duration::from_secs(3), &mut writes);
    let early = h.block_on(nats_messages(&events));
    let kept = h.block_on(broker.dlq_get(&dead.id)).unwrap();
    assert_eq!(
        kept.event.id, doomed.id,
        "the dead letter outlives `events`"
    );
    published += pump_with_state(&h, Duration::from_secs(3), &mut writes);
    let late = h.block_on(nats_messages(&events));
    // `troupe_store_bytes` on NATS: the namespace's streams, as the last
    // pruning pass found them, as bounded as the stream.
    let bytes = broker.health().store_bytes.expect("measured by pruning");
    assert!((1..32 << 20).contains(&bytes), "{bytes} bytes");
    let ceiling = 2 * 420 * 8; // eight seconds of two events a cascade
    assert!(
        early < ceiling && late < ceiling,
        "{published} cascades published; the stream held {early} then {late} messages"
    );
    let gone = h.client.status(&quick[0]).unwrap_err().to_string();
    assert!(
        gone.contains("404") && gone.contains("have been pruned ([retention] runs)"),
        "{gone}"
    );
    let note = h.block_on(broker.horizon()).unwrap().events_note();
    assert!(note.contains("have been pruned"), "{note}");
    assert!(h.block_on(broker.trace(&pending.id)).unwrap().is_empty());

    // Every state write was applied once; the log, the verdicts and the
    // deletion markers of all but the last seconds are gone.
    let host = h.host.as_ref().unwrap();
    let count = h.block_on(troupe_tests::eventually(
        Duration::from_secs(30),
        "every state write applied",
        async || {
            let v = host
                .broker
                .kv_reader()
                .unwrap()
                .kv_get("keeper", "n")
                .await
                .unwrap()
                .map(|(v, _)| String::from_utf8(v).unwrap().parse::<u64>().unwrap());
            v.filter(|&n| n >= writes)
        },
    ));
    assert_eq!(count, writes, "each write applied once");
    h.block_on(troupe_tests::eventually(
        Duration::from_secs(30),
        "the dead letter's pruning, and step state's bookkeeping's",
        async || {
            let (d, l, k) = (
                nats_messages(&dlq).await,
                nats_messages(&kvlog).await,
                nats_messages(&kv).await,
            );
            eprintln!("dlq {d}, kvlog {l} and kv {k} messages of {writes} writes");
            // Beside what is pruned, the state bucket keeps one applied
            // index and one lease per partition (16 each) and the host.
            (d == 0 && l < writes / 4 && k < writes / 4 + 2 * 16 + 1).then_some(())
        },
    ));
    assert!(h.block_on(broker.dlq_list()).unwrap().is_empty());
}
