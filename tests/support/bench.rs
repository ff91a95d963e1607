//! Measuring helpers shared by the benchmarks in `tests/benches/`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use troupe::app::RetryPolicy;
use troupe::event::Event;
use troupe::host::Host;

use crate::cpu::{PerItem, Snapshot};

/// Throughput and latency of one measured mode.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Items (cascades or runs) per second under load.
    pub per_second: f64,
    pub n: usize,
    pub elapsed: Duration,
    /// p50 and p99 with one item at a time.
    pub unloaded: (Duration, Duration),
    /// p50 and p99 while the `n` items were pushed at once.
    pub loaded: (Duration, Duration),
    /// CPU per item under load, by part.
    pub cpu: PerItem,
    /// Latency at a steady rate below the peak, where measured.
    pub paced: Option<Paced>,
}

/// Latency at a steady rate: items started one by one at `rate` a second
/// (open loop, as independent producers would), p50 and p99.
#[derive(Debug, Clone)]
pub struct Paced {
    pub rate: f64,
    pub latency: (Duration, Duration),
}

/// The steady rate to measure latency at, as a fraction of the peak
/// throughput (`BENCH_PACED_LOAD`, default 0.5), and for how long
/// (`BENCH_PACED_SECS`, default 3; 0 skips it).
fn paced_load() -> Option<(f64, f64)> {
    let var = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(d)
    };
    let (load, secs) = (var("BENCH_PACED_LOAD", 0.5), var("BENCH_PACED_SECS", 3.0));
    (load > 0.0 && secs > 0.0).then_some((load, secs))
}

/// Latency at a steady fraction of the `peak` rate ([`paced_load`]): start
/// items one by one at fixed intervals, each by `start(i)` for `i` from
/// `first` on a task of its own, and take their latencies from
/// `latencies` as they finish.
async fn paced<F, Fut>(
    peak: f64,
    first: usize,
    latencies: &Mutex<Vec<Duration>>,
    start: F,
) -> Option<Paced>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (load, secs) = paced_load()?;
    let rate = peak * load;
    let count = ((rate * secs) as usize).max(1);
    let period = Duration::from_secs_f64(1.0 / rate);
    let t0 = tokio::time::Instant::now();
    for k in 0..count {
        tokio::time::sleep_until(t0 + period.mul_f64(k as f64)).await;
        tokio::spawn(start(first + k));
    }
    Some(Paced {
        rate,
        latency: quantiles(collect(latencies, count).await),
    })
}

/// Wait until `latencies` holds `count` items, then take them.
async fn collect(latencies: &Mutex<Vec<Duration>>, count: usize) -> Vec<Duration> {
    while latencies.lock().unwrap().len() < count {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    std::mem::take(&mut *latencies.lock().unwrap())
}

/// The loaded phase of a measurement: started when the producers start.
pub struct Phase {
    start: Instant,
    cpu: Snapshot,
}

impl Phase {
    pub fn start() -> Phase {
        Phase {
            cpu: Snapshot::take(),
            start: Instant::now(),
        }
    }

    /// The measurement, once all `n` items are done.
    pub fn end(self, n: usize, unloaded: (Duration, Duration), loaded: Vec<Duration>) -> Measured {
        let elapsed = self.start.elapsed();
        Measured {
            per_second: n as f64 / elapsed.as_secs_f64(),
            n,
            elapsed,
            unloaded,
            loaded: quantiles(loaded),
            cpu: Snapshot::since(&self.cpu, n),
            paced: None,
        }
    }
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0}/s ({} in {:.2} s); unloaded p50 {} p99 {}; under load p50 {} p99 {}",
            self.per_second,
            self.n,
            self.elapsed.as_secs_f64(),
            ms(self.unloaded.0),
            ms(self.unloaded.1),
            ms(self.loaded.0),
            ms(self.loaded.1)
        )?;
        if let Some(p) = &self.paced {
            write!(
                f,
                "; at a steady {:.0}/s p50 {} p99 {}",
                p.rate,
                ms(p.latency.0),
                ms(p.latency.1)
            )?;
        }
        if !self.cpu.classes.is_empty() {
            write!(f, "\n      {}", self.cpu)?;
        }
        Ok(())
    }
}

/// The `p` quantile of sorted durations.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

pub fn quantiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (pct(&v, 0.5), pct(&v, 0.99))
}

/// The order example's three Rust steps, in the order a cascade meets them
/// (`order.placed` -> ... -> `order.shipped`).
pub const ORDER_STEPS: [&str; 3] = ["order-validate", "payment-charge", "shipping-dispatch"];

/// The manifest of an app with the order steps, each with `options`
/// (e.g. `instances = "reused"`).
pub fn order_manifest(options: &str) -> String {
    let mut m = String::from("name = \"bench\"\n");
    for s in ORDER_STEPS {
        m += &crate::step(s, &crate::plugin(s), options);
    }
    m
}

/// Three steps of the `relay` component (tests/guests/relay) in a chain,
/// `a` -> `b` -> `c`, each counting the events it passed on (in its own
/// bucket) when `state`.
pub fn relay_chain(relay: &std::path::Path, state: bool, extra: &str) -> String {
    let relay = relay.display().to_string();
    ["a", "b", "c"]
        .iter()
        .zip(["b", "c", "d"])
        .map(|(from, to)| {
            format!(
                "[steps.relay-{from}]\ncomponent = {relay:?}\n\
                 grants.env = {{ IN = \"chain.{from}\", OUT = \"chain.{to}\", STATE = \"{}\", KEYS = \"10\" }}\n{extra}\n",
                u8::from(state)
            )
        })
        .collect()
}

/// Order number `i`: the data of an `order.placed` event.
pub fn order(i: usize) -> serde_json::Value {
    serde_json::json!({"order_id": format!("o-{i}"), "customer": "c",
        "lines": [{"sku": "tea", "qty": 1 + i % 3, "price_cents": 100}]})
}

/// Measure the order steps' cascade on `host`, from `order.placed` to
/// `order.shipped`.
pub async fn order_chain(host: &Host, n: usize) -> Measured {
    choreography(host, n, "order.shipped", |i| {
        Event::new(
            "order.placed",
            "troupe://bench",
            serde_json::to_vec(&order(i)).unwrap(),
        )
    })
    .await
}

/// Measure a choreographed cascade: each item is an event from `make`; it
/// is done when an event of type `last` with its correlation id is
/// delivered to a native probe group.
pub async fn choreography(
    host: &Host,
    n: usize,
    last: &str,
    make: impl Fn(usize) -> Event + Send + Sync + 'static,
) -> Measured {
    let make = Arc::new(make);
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let done = Arc::new(tokio::sync::Notify::new());
    let consumer = host
        .broker
        .subscribe(
            &format!("bench-probe-{last}"),
            &[last.to_string()],
            RetryPolicy::default(),
        )
        .await
        .unwrap();
    {
        let (started, latencies, done, broker) = (
            started.clone(),
            latencies.clone(),
            done.clone(),
            host.broker.clone(),
        );
        tokio::spawn(async move {
            while let Some(d) = consumer.next().await {
                let now = Instant::now();
                if let Some(t) = started.lock().unwrap().remove(d.event.correlation_id()) {
                    latencies.lock().unwrap().push(now - t);
                }
                done.notify_one();
                let b = broker.clone();
                tokio::spawn(async move { b.complete(&d, vec![]).await.unwrap() });
            }
        });
    }
    let one = |i: usize| {
        let e = make(i);
        started.lock().unwrap().insert(e.id.clone(), Instant::now());
        e
    };
    for i in 0..200 {
        host.broker.publish(vec![one(i)]).await.unwrap();
        done.notified().await;
    }
    latencies.lock().unwrap().clear();
    for i in 0..1000 {
        host.broker.publish(vec![one(i)]).await.unwrap();
        done.notified().await;
    }
    let unloaded = quantiles(std::mem::take(&mut *latencies.lock().unwrap()));
    let phase = Phase::start();
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (started, broker, make) = (started.clone(), host.broker.clone(), make.clone());
            tokio::spawn(async move {
                for chunk in (p..n).step_by(4).collect::<Vec<_>>().chunks(50) {
                    let batch: Vec<Event> = chunk.iter().map(|i| make(*i)).collect();
                    let now = Instant::now();
                    {
                        let mut s = started.lock().unwrap();
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
    let loaded = collect(&latencies, n).await;
    let mut m = phase.end(n, unloaded, loaded);
    m.paced = paced(m.per_second, n, &latencies, |i| {
        let (started, broker, make) = (started.clone(), host.broker.clone(), make.clone());
        async move {
            let e = make(i);
            started.lock().unwrap().insert(e.id.clone(), Instant::now());
            broker.publish(vec![e]).await.unwrap();
        }
    })
    .await;
    m
}

/// Measure runs of `flow` started through the orchestrator (not HTTP):
/// done when the orchestrator reports the run finished.
pub async fn orchestration(
    host: &Host,
    flow: &str,
    n: usize,
    input: impl Fn(usize) -> serde_json::Value + Send + Sync + 'static,
) -> Measured {
    let o = host.orchestrator.clone().expect("the app has flows");
    let input = Arc::new(input);
    let mut finished = o.finished();
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let done = Arc::new(tokio::sync::Notify::new());
    {
        let (started, latencies, done) = (started.clone(), latencies.clone(), done.clone());
        tokio::spawn(async move {
            while let Ok((id, state)) = finished.recv().await {
                assert_eq!(
                    state,
                    troupe::orchestrator::run::RunState::Completed,
                    "run {id}"
                );
                let now = Instant::now();
                // The start may not have returned yet: record the end.
                let mut s = started.lock().unwrap();
                match s.remove(&id) {
                    Some(t) => latencies.lock().unwrap().push(now - t),
                    None => {
                        s.insert(format!("done:{id}"), now);
                    }
                }
                done.notify_one();
            }
        });
    }
    measure_runs(done, o, flow.to_string(), n, input, started, latencies).await
}

/// Concurrent producers starting runs (each waits for its start to be
/// acknowledged, as an HTTP client would).
fn producers() -> usize {
    std::env::var("BENCH_PRODUCERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

async fn measure_runs(
    done: Arc<tokio::sync::Notify>,
    o: troupe::orchestrator::Orchestrator,
    flow: String,
    n: usize,
    input: Arc<impl Fn(usize) -> serde_json::Value + Send + Sync + 'static>,
    started: Arc<Mutex<HashMap<String, Instant>>>,
    latencies: Arc<Mutex<Vec<Duration>>>,
) -> Measured {
    let start_one = {
        let (o, flow, input, started, latencies) = (
            o.clone(),
            flow.clone(),
            input.clone(),
            started.clone(),
            latencies.clone(),
        );
        move |i: usize| {
            let (o, flow, input, started, latencies) = (
                o.clone(),
                flow.clone(),
                input.clone(),
                started.clone(),
                latencies.clone(),
            );
            async move {
                let t = Instant::now();
                // A producer refused for `max_active_runs` waits and tries
                // again; the run's latency counts from its first try.
                let id = loop {
                    match o.start(&flow, input(i), None).await.map(|(id, _)| id) {
                        Err(troupe::orchestrator::StartError::Busy { .. }) => {
                            tokio::time::sleep(Duration::from_millis(1)).await
                        }
                        r => break r.unwrap(),
                    }
                };
                let mut s = started.lock().unwrap();
                match s.remove(&format!("done:{id}")) {
                    Some(end) => latencies.lock().unwrap().push(end - t),
                    None => {
                        s.insert(id, t);
                    }
                }
            }
        }
    };
    let count = || latencies.lock().unwrap().len();
    // One at a time: wait for each run to be reported finished.
    for round in [200, 1000] {
        latencies.lock().unwrap().clear();
        for i in 0..round {
            let woken = done.notified();
            start_one(i).await;
            if count() < i + 1 {
                woken.await;
            }
        }
    }
    let unloaded = quantiles(std::mem::take(&mut *latencies.lock().unwrap()));
    let phase = Phase::start();
    let np = producers();
    let producers: Vec<_> = (0..np)
        .map(|p| {
            let start_one = start_one.clone();
            tokio::spawn(async move {
                for i in (p..n).step_by(np) {
                    start_one(i).await;
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    let loaded = collect(&latencies, n).await;
    let mut m = phase.end(n, unloaded, loaded);
    m.paced = paced(m.per_second, n, &latencies, start_one).await;
    m
}
