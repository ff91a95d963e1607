//! Benchmark: a three-step chain of Rust steps on the embedded broker.
//!
//! The chain is the order example without its fan-out: `order.placed` ->
//! order-validate -> `order.validated` -> payment-charge -> `payment.charged`
//! -> shipping-dispatch -> `order.shipped`. The broker is durable (every
//! commit fsynced). A native consumer group on `order.shipped` sees each
//! cascade finish; latency is publish-call start to that delivery.
//!
//! Reported for fresh instances (the default) and reused instances:
//! - throughput: N orders published by 4 concurrent producers in batches,
//!   time until all N shipped -> orders/s (and step invocations/s = 3x);
//! - latency, unloaded: one order at a time, p50/p99;
//! - latency under the throughput load: p50/p99.
//!
//! Baseline in the same run: the same three guests called directly through
//! wasmtime (`Sandbox::handle`, no broker, one thread), per chain.
//!
//! Run: `cargo bench -p troupe-tests --bench chain` (set `BENCH_ORDERS` to
//! change N, default 20000; `BENCH_MODES=reuse` for one mode).
//!
//! `BENCH_TELEMETRY=1`: instead, the cost of OpenTelemetry export. The
//! chain (reused instances) with export off, and on to a real OTLP
//! receiver on loopback in this process (`support/otlp.rs`) over gRPC and
//! over HTTP/protobuf, in alternating rounds (`BENCH_ROUNDS`, default 3):
//! throughput of each, the ratio to off, and the spans received.

use std::time::Instant;

use troupe::event::Event;
use troupe_tests::{TestApp, bench, plugin};

use bench::ORDER_STEPS as STEPS;

fn order(i: usize) -> Event {
    Event::new(
        "order.placed",
        "troupe://bench",
        serde_json::to_vec(&bench::order(i)).unwrap(),
    )
}

fn app(instances: &str) -> TestApp {
    TestApp::new(&bench::order_manifest(&format!(
        "instances = \"{instances}\""
    )))
}

async fn run_mode(instances: &str, n: usize) {
    let app = app(instances);
    let host = app.start().await;
    let m = bench::order_chain(&host, n).await;
    let stats = host.stats.snapshot();
    let guest_us: u64 = STEPS.iter().map(|s| stats[*s].guest_micros).sum();
    let handled: u64 = STEPS.iter().map(|s| stats[*s].handled).sum();
    host.shutdown().await;
    println!("## {instances} instances");
    println!(
        "throughput: {:.0} orders/s through 3 steps ({:.0} step invocations/s), {} orders in {:.2} s",
        m.per_second,
        3.0 * m.per_second,
        m.n,
        m.elapsed.as_secs_f64()
    );
    println!(
        "latency, unloaded (1000 orders one at a time): p50 {}  p99 {}",
        bench::ms(m.unloaded.0),
        bench::ms(m.unloaded.1)
    );
    println!(
        "latency under load: p50 {}  p99 {}",
        bench::ms(m.loaded.0),
        bench::ms(m.loaded.1)
    );
    if let Some(p) = &m.paced {
        println!(
            "latency at a steady {:.0} orders/s: p50 {}  p99 {}",
            p.rate,
            bench::ms(p.latency.0),
            bench::ms(p.latency.1)
        );
    }
    println!(
        "time in guests: {:.1} us per invocation on average",
        guest_us as f64 / handled.max(1) as f64
    );
    if !m.cpu.classes.is_empty() {
        println!("{} (per order, under load)", m.cpu);
    }
}

/// The baseline: the three guests called directly, one after another, no
/// broker, on one thread.
async fn baseline(instances: &str, n: usize) {
    let app = app(instances);
    let rt = troupe::runtime::Runtime::new().unwrap();
    let steps = troupe::host::load_steps(&rt, &app.app()).unwrap();
    let by_name = |n: &str| steps.iter().find(|s| &**s.name() == n).unwrap().clone();
    let chain: Vec<_> = STEPS.iter().map(|s| by_name(s)).collect();
    let run = |i: usize| {
        let mut e = order(i);
        for s in &chain {
            let out = s.handle(&e, 1).unwrap();
            if let Some(o) = out.into_iter().next() {
                e = Event::new(&o.kind, "troupe://bench", o.data);
            }
        }
    };
    for i in 0..500 {
        run(i);
    }
    let start = Instant::now();
    for i in 0..n {
        run(i);
    }
    let per = start.elapsed() / n as u32;
    println!(
        "baseline ({instances} instances, direct wasmtime calls, 1 thread): {:.1} us per 3-step chain = {:.0} chains/s",
        per.as_secs_f64() * 1e6,
        1.0 / per.as_secs_f64()
    );
}

/// Export off, over gRPC, over HTTP, and over gRPC with one trace in
/// ten sampled: throughput side by side.
fn telemetry(rt: &tokio::runtime::Runtime, n: usize, rounds: usize) {
    use troupe_tests::otlp::Receiver;
    // (label, protocol, sample ratio), throughputs, spans per order.
    type Config = (&'static str, &'static str, f64);
    let configs: [Config; 4] = [
        ("off", "", 0.0),
        ("grpc", "grpc", 1.0),
        ("http/protobuf", "http/protobuf", 1.0),
        ("grpc, 10% sampled", "grpc", 0.1),
    ];
    let mut results: Vec<(Config, Vec<f64>, f64)> =
        configs.iter().map(|c| (*c, vec![], 0.0)).collect();
    let only = std::env::var("BENCH_TELEMETRY").unwrap_or_default();
    for round in 0..rounds {
        for ((how, protocol, ratio), runs, spans) in results.iter_mut() {
            if configs.iter().any(|c| c.0 == only) && only != *how {
                continue;
            }
            let receiver = match *protocol {
                "grpc" => Some(Receiver::counting_grpc()),
                "http/protobuf" => Some(Receiver::counting_http()),
                _ => None,
            };
            let table = receiver.as_ref().map_or(String::new(), |r| {
                format!(
                    "[telemetry]\nendpoint = \"{}\"\nprotocol = \"{protocol}\"\nsample_ratio = {ratio}\n",
                    r.url
                )
            });
            let manifest = bench::order_manifest("instances = \"reuse\"") + &table;
            let app = TestApp::new(&manifest);
            let (m, orders) = rt.block_on(async {
                let host = app.start().await;
                let m = bench::choreography(&host, n, "order.shipped", order).await;
                let orders = host.stats.snapshot()["order-validate"].handled;
                host.shutdown().await;
                println!("round {round}: {how}: {} (per order, under load)", m.cpu);
                (m.per_second, orders)
            });
            if let Some(r) = &receiver {
                let total: u64 = r.counted().values().sum();
                println!(
                    "round {round}: {how}: {total} spans received for {orders} orders, in {} requests",
                    r.requests()
                );
                *spans += total as f64 / orders.max(1) as f64 / rounds as f64;
            }
            println!("round {round}: {how}: {m:.0} orders/s");
            runs.push(m);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let off = median(&results[0].1);
    println!("\n## OpenTelemetry export, {n} orders per run, median of {rounds} rounds");
    for ((how, ..), runs, spans) in &results {
        let m = median(runs);
        let received = match *spans > 0.0 {
            true => format!(", {spans:.2} spans received per order"),
            false => String::new(),
        };
        println!(
            "{how:>18}: {m:.0} orders/s ({:+.1}% against off){received}",
            (m / off - 1.0) * 100.0
        );
    }
}

fn main() {
    let n: usize = std::env::var("BENCH_ORDERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    // Build the plugins before timing anything.
    for s in STEPS {
        plugin(s);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::var_os("BENCH_TELEMETRY").is_some() {
        let rounds = std::env::var("BENCH_ROUNDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3);
        return telemetry(&rt, n, rounds);
    }
    rt.block_on(async {
        let modes = std::env::var("BENCH_MODES").unwrap_or_else(|_| "fresh,reuse".into());
        for mode in modes.split(',') {
            baseline(mode, 5_000).await;
            run_mode(mode, n).await;
            println!();
        }
    });
}
