//! Benchmark: what step state costs. Side by side in one run, on one
//! broker: a chain of three steps (`chain.a` -> relay-a ->
//! `chain.b` -> relay-b -> `chain.c` -> relay-c -> `chain.d`, the fixture
//! `tests/guests/relay`), first without state, then with each step doing
//! one get and one put in its own bucket (1000 keys per step) for every
//! event, then with every event of a step counting in one key (a hot
//! key). Prints each chain's throughput and latencies, the ratios, and
//! what one state operation costs; the counters of each chain with state
//! must add up to the events sent, exactly.
//!
//! Run: `cargo bench -p troupe-tests --bench state` (`BENCH_ORDERS` sets N,
//! default 20000; `BENCH_BROKER=nats` runs both chains on the NATS server
//! at 127.0.0.1:4222 instead).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use troupe::event::Event;
use troupe_tests::{Backend, TestApp, bench};

const STEPS: [&str; 3] = ["relay-a", "relay-b", "relay-c"];

/// The chain, without state (`keys: None`) or with each step counting in
/// `keys` keys of its bucket; after it, every step's counters add up to
/// the events sent, exactly, or the bench fails.
async fn chain(b: Backend, keys: Option<usize>, n: usize) -> (bench::Measured, f64, u64) {
    let state = keys.is_some();
    let app = TestApp::on(
        b,
        &bench::relay_chain(&troupe_tests::guest("relay"), state, "").replace(
            "KEYS = \"10\"",
            &format!("KEYS = \"{}\"", keys.unwrap_or(1)),
        ),
    );
    let host = app.start().await;
    // Every event the bench sends (warm-up, unloaded, loaded and paced).
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    let m = bench::choreography(&host, n, "chain.d", move |i| {
        counted.fetch_add(1, Ordering::Relaxed);
        Event::new(
            "chain.a",
            "troupe://bench",
            serde_json::to_vec(&serde_json::json!({"i": i})).unwrap(),
        )
    })
    .await;
    let sent = sent.load(Ordering::Relaxed);
    let stats = host.stats.snapshot();
    let guest_us: u64 = STEPS.iter().map(|s| stats[*s].guest_micros).sum();
    let handled: u64 = STEPS.iter().map(|s| stats[*s].handled).sum();
    let conflicts: u64 = STEPS.iter().map(|s| stats[*s].kv_conflicts).sum();
    if let Some(keys) = keys {
        let reader = host.broker.kv_reader().expect("the broker keeps state");
        for step in STEPS {
            let mut counted = 0;
            for k in 0..keys {
                if let Some((v, _)) = reader.kv_get(step, &format!("k{k}")).await.unwrap() {
                    counted += String::from_utf8(v).unwrap().parse::<usize>().unwrap();
                }
            }
            assert_eq!(counted, sent, "step {step} counted every event sent, once");
        }
    }
    host.shutdown().await;
    let label = match keys {
        None => "without state".to_string(),
        Some(1) => "with state, one hot key per step (get + put per step)".to_string(),
        Some(k) => format!("with state, spread over {k} keys per step (get + put per step)"),
    };
    println!("## {label}");
    println!(
        "throughput: {:.0} events/s through 3 steps, {} in {:.2} s",
        m.per_second,
        m.n,
        m.elapsed.as_secs_f64()
    );
    println!(
        "latency, unloaded: p50 {}  p99 {}; under load: p50 {}  p99 {}",
        bench::ms(m.unloaded.0),
        bench::ms(m.unloaded.1),
        bench::ms(m.loaded.0),
        bench::ms(m.loaded.1)
    );
    let per_invocation = guest_us as f64 / handled.max(1) as f64;
    println!(
        "time in guests: {per_invocation:.1} us per invocation; reruns on conflict: {conflicts}"
    );
    if state {
        println!("counters: each step's add up to the {sent} events sent, exactly");
    }
    (m, per_invocation, conflicts)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n: usize = std::env::var("BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let (b, broker) = match std::env::var("BENCH_BROKER").as_deref() {
        Ok("nats") => (Backend::Nats, "NATS"),
        _ => (Backend::Embedded, "embedded broker"),
    };
    println!("# step state: a three-step chain, {n} events, {broker}");
    let (plain, plain_guest, _) = chain(b, None, n).await;
    let (kept, kept_guest, _) = chain(b, Some(1000), n).await;
    let (hot, _, _) = chain(b, Some(1), n).await;
    let ratio = kept.per_second / plain.per_second;
    println!("## side by side");
    println!("throughput with state / without: {ratio:.2}x (aim, embedded: at least 0.8x)");
    println!(
        "one hot key / spread keys: {:.2}x ({:.0} against {:.0} events/s; every counter exact)",
        hot.per_second / kept.per_second,
        hot.per_second,
        kept.per_second
    );
    // Two operations (a get and a put) per invocation, three per event.
    let per_op_guest = (kept_guest - plain_guest) / 2.0;
    let per_event = 1e6 / kept.per_second - 1e6 / plain.per_second;
    println!(
        "per operation: {per_op_guest:.1} us in the guest's call (a get reads the store; a put \
         only records); per event of the chain, state costs {per_event:.1} us of wall time \
         at full load ({:.1} us per operation)",
        per_event / 6.0
    );
}
