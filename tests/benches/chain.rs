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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use troupe::app::RetryPolicy;
use troupe::event::Event;
use troupe_tests::{TestApp, plugin, step};

const STEPS: [&str; 3] = ["order-validate", "payment-charge", "shipping-dispatch"];

fn order(i: usize) -> Event {
    let data = json!({"order_id": format!("o-{i}"), "customer": "c",
        "lines": [{"sku": "tea", "qty": 1 + i % 3, "price_cents": 100}]});
    Event::new(
        "order.placed",
        "troupe://bench",
        serde_json::to_vec(&data).unwrap(),
    )
}

fn app(instances: &str) -> TestApp {
    let mut m = String::from("name = \"bench\"\n");
    for s in STEPS {
        m += &step(s, &plugin(s), &format!("instances = \"{instances}\""));
    }
    TestApp::new(&m)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

struct Probe {
    started: Mutex<HashMap<String, Instant>>,
    latencies: Mutex<Vec<Duration>>,
    done: tokio::sync::Notify,
}

async fn run_mode(instances: &str, n: usize) {
    let app = app(instances);
    let host = app.start().await;
    let probe = Arc::new(Probe {
        started: Mutex::new(HashMap::new()),
        latencies: Mutex::new(Vec::new()),
        done: tokio::sync::Notify::new(),
    });
    let consumer = host
        .broker
        .subscribe(
            "bench-probe",
            &["order.shipped".to_string()],
            RetryPolicy::default(),
        )
        .await
        .unwrap();
    {
        let (probe, broker) = (probe.clone(), host.broker.clone());
        tokio::spawn(async move {
            while let Some(d) = consumer.next().await {
                let now = Instant::now();
                let corr = d.event.correlation_id().to_string();
                if let Some(t) = probe.started.lock().unwrap().remove(&corr) {
                    probe.latencies.lock().unwrap().push(now - t);
                }
                probe.done.notify_one();
                let b = broker.clone();
                tokio::spawn(async move { b.complete(&d, vec![]).await.unwrap() });
            }
        });
    }

    // Warm up, then unloaded latency: one order at a time.
    for i in 0..200 {
        let e = order(i);
        probe
            .started
            .lock()
            .unwrap()
            .insert(e.id.clone(), Instant::now());
        host.broker.publish(vec![e]).await.unwrap();
        probe.done.notified().await;
    }
    probe.latencies.lock().unwrap().clear();
    for i in 0..1000 {
        let e = order(i);
        probe
            .started
            .lock()
            .unwrap()
            .insert(e.id.clone(), Instant::now());
        host.broker.publish(vec![e]).await.unwrap();
        probe.done.notified().await;
    }
    let mut unloaded = std::mem::take(&mut *probe.latencies.lock().unwrap());
    unloaded.sort();

    // Throughput: 4 producers, batches of 50.
    let start = Instant::now();
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (probe, broker) = (probe.clone(), host.broker.clone());
            tokio::spawn(async move {
                for chunk in (p..n).step_by(4).collect::<Vec<_>>().chunks(50) {
                    let batch: Vec<Event> = chunk.iter().map(|i| order(*i)).collect();
                    let now = Instant::now();
                    {
                        let mut s = probe.started.lock().unwrap();
                        for e in &batch {
                            s.insert(e.id.clone(), now);
                        }
                    }
                    broker.publish(batch).await.unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    while probe.latencies.lock().unwrap().len() < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    let mut loaded = std::mem::take(&mut *probe.latencies.lock().unwrap());
    loaded.sort();
    let stats = host.stats.snapshot();
    let guest_us: u64 = STEPS.iter().map(|s| stats[*s].guest_micros).sum();
    let handled: u64 = STEPS.iter().map(|s| stats[*s].handled).sum();
    host.shutdown().await;

    println!("## {instances} instances");
    println!(
        "throughput: {n} orders in {:.2} s = {:.0} orders/s through 3 steps ({:.0} step invocations/s)",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        3.0 * n as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency, unloaded (1000 orders one at a time): p50 {}  p99 {}",
        ms(pct(&unloaded, 0.5)),
        ms(pct(&unloaded, 0.99))
    );
    println!(
        "latency under load: p50 {}  p99 {}",
        ms(pct(&loaded, 0.5)),
        ms(pct(&loaded, 0.99))
    );
    println!(
        "time in guests: {:.1} us per invocation on average",
        guest_us as f64 / handled.max(1) as f64
    );
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
    rt.block_on(async {
        let modes = std::env::var("BENCH_MODES").unwrap_or_else(|_| "fresh,reuse".into());
        for mode in modes.split(',') {
            baseline(mode, 5_000).await;
            run_mode(mode, n).await;
            println!();
        }
    });
}
