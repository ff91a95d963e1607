//! Benchmark: what step state costs. Side by side in one run, on one
//! broker: a chain of three steps (`chain.a` -> relay-a ->
//! `chain.b` -> relay-b -> `chain.c` -> relay-c -> `chain.d`, the fixture
//! `tests/guests/relay`), first without state, then with each step doing
//! one get and one put in its own bucket (1000 keys per step) for every
//! event. Prints each chain's throughput and latencies, the ratio, and
//! what one state operation costs.
//!
//! Run: `cargo bench -p troupe-tests --bench state` (`BENCH_ORDERS` sets N,
//! default 20000; `BENCH_BROKER=nats` runs both chains on the NATS server
//! at 127.0.0.1:4222 instead).

use troupe::event::Event;
use troupe_tests::{Backend, TestApp, bench};

const STEPS: [&str; 3] = ["relay-a", "relay-b", "relay-c"];

async fn chain(b: Backend, state: bool, n: usize) -> (bench::Measured, f64, u64) {
    let app = TestApp::on(
        b,
        &bench::relay_chain(&troupe_tests::guest("relay"), state, "")
            .replace("KEYS = \"10\"", "KEYS = \"1000\""),
    );
    let host = app.start().await;
    let m = bench::choreography(&host, n, "chain.d", |i| {
        Event::new(
            "chain.a",
            "troupe://bench",
            serde_json::to_vec(&serde_json::json!({"i": i})).unwrap(),
        )
    })
    .await;
    let stats = host.stats.snapshot();
    let guest_us: u64 = STEPS.iter().map(|s| stats[*s].guest_micros).sum();
    let handled: u64 = STEPS.iter().map(|s| stats[*s].handled).sum();
    let conflicts: u64 = STEPS.iter().map(|s| stats[*s].kv_conflicts).sum();
    host.shutdown().await;
    let label = if state {
        "with state (get + put per step)"
    } else {
        "without state"
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
    let (plain, plain_guest, _) = chain(b, false, n).await;
    let (kept, kept_guest, _) = chain(b, true, n).await;
    let ratio = kept.per_second / plain.per_second;
    println!("## side by side");
    println!("throughput with state / without: {ratio:.2}x (aim, embedded: at least 0.8x)");
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
