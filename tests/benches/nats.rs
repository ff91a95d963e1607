//! Benchmark: the three-step chain on NATS JetStream, beside a plain
//! async-nats client doing the same three-stage consume-publish-ack chain
//! with native code, in the same run, on the same server.
//!
//! Troupe: order-validate -> payment-charge -> shipping-dispatch (Rust
//! guests, fresh instances), measured as in `chain.rs` (a native probe
//! group on `order.shipped`; 4 producers publishing batches of 50).
//!
//! Plain: three durable pull consumers on a stream of its own; each stage
//! takes a message, parses its JSON, adds a field, publishes the result
//! (with `Nats-Msg-Id`, waiting for the server's ack) and double-acks the
//! input, up to 256 messages in flight per stage. The same producers and
//! the same latency measurement.
//!
//! Needs a nats-server with JetStream (`TROUPE_TEST_NATS`, default
//! nats://127.0.0.1:4222). Run: `cargo bench -p troupe-tests --bench nats`
//! (`BENCH_ORDERS`, default 10000).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer, context::PublishAckFuture};
use futures_util::StreamExt;
use serde_json::json;
use troupe_tests::bench::{Measured, Phase, quantiles};
use troupe_tests::{Backend, TestApp, bench, nats_server};

/// The plain chain's subjects, in order.
const STAGES: [&str; 4] = ["placed", "validated", "charged", "shipped"];

fn main() {
    let n: usize = std::env::var("BENCH_ORDERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let plain = plain_chain(n).await;
        let troupe = {
            let app = TestApp::on(Backend::Nats, &bench::order_manifest(""));
            let host = app.start().await;
            let r = bench::order_chain(&host, n).await;
            host.shutdown().await;
            r
        };
        println!(
            "three-stage chain on NATS JetStream ({}), {n} orders each:",
            nats_server()
        );
        println!("  plain async-nats, native stages: {plain}");
        println!("  troupe, wasm steps:              {troupe}");
        println!(
            "  troupe / plain throughput: {:.2}",
            troupe.per_second / plain.per_second
        );
    });
}

/// One plain stage: `from` -> `to`, or the final probe when `to` is None.
async fn stage(
    js: jetstream::Context,
    consumer: PullConsumer,
    ns: String,
    to: Option<&'static str>,
    done: Arc<dyn Fn(&str) + Send + Sync>,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(64)
        .messages()
        .await
        .unwrap();
    while let Some(Ok(m)) = messages.next().await {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let (js, ns, done) = (js.clone(), ns.clone(), done.clone());
        tokio::spawn(async move {
            let mut v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let id = v["order_id"].as_str().unwrap().to_string();
            match to {
                Some(to) => {
                    v[to] = json!(true);
                    let total: i64 = v["lines"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|l| l["qty"].as_i64().unwrap() * l["price_cents"].as_i64().unwrap())
                        .sum();
                    v["total_cents"] = json!(total);
                    let mut h = async_nats::HeaderMap::new();
                    h.insert("Nats-Msg-Id", format!("{id}/{to}").as_str());
                    js.publish_with_headers(
                        format!("{ns}.{to}"),
                        h,
                        serde_json::to_vec(&v).unwrap().into(),
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                }
                None => done(&id),
            }
            m.double_ack().await.unwrap();
            drop(permit);
        });
    }
}

async fn plain_chain(n: usize) -> Measured {
    let client = async_nats::connect(nats_server()).await.unwrap();
    let js = jetstream::new(client);
    let ns = format!("plain{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: ns.to_uppercase(),
            subjects: vec![format!("{ns}.>")],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let notify = Arc::new(tokio::sync::Notify::new());
    let done: Arc<dyn Fn(&str) + Send + Sync> = {
        let (started, latencies, notify) = (started.clone(), latencies.clone(), notify.clone());
        Arc::new(move |id: &str| {
            if let Some(t) = started.lock().unwrap().remove(id) {
                latencies.lock().unwrap().push(t.elapsed());
            }
            notify.notify_one();
        })
    };
    for (i, from) in STAGES.iter().enumerate() {
        let consumer: PullConsumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some(format!("stage-{from}")),
                filter_subject: format!("{ns}.{from}"),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: 20_000,
                ..Default::default()
            })
            .await
            .unwrap();
        let to = STAGES.get(i + 1).copied();
        tokio::spawn(stage(js.clone(), consumer, ns.clone(), to, done.clone()));
    }
    let subject = format!("{ns}.placed");
    let publish = {
        let (js, subject, started) = (js.clone(), subject.clone(), started.clone());
        move |batch: Vec<usize>| {
            let (js, subject, started) = (js.clone(), subject.clone(), started.clone());
            async move {
                let mut acks: Vec<PublishAckFuture> = Vec::new();
                for i in batch {
                    started
                        .lock()
                        .unwrap()
                        .insert(format!("o-{i}"), Instant::now());
                    let mut h = async_nats::HeaderMap::new();
                    h.insert("Nats-Msg-Id", format!("o-{i}/placed").as_str());
                    acks.push(
                        js.publish_with_headers(
                            subject.clone(),
                            h,
                            serde_json::to_vec(&bench::order(i)).unwrap().into(),
                        )
                        .await
                        .unwrap(),
                    );
                }
                for a in acks {
                    a.await.unwrap();
                }
            }
        }
    };
    // Warm up, then one at a time.
    for round in [200usize, 1000] {
        latencies.lock().unwrap().clear();
        for i in 0..round {
            let woken = notify.notified();
            publish(vec![n + round + i]).await;
            woken.await;
        }
    }
    let unloaded = quantiles(std::mem::take(&mut *latencies.lock().unwrap()));
    let phase = Phase::start();
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let publish = publish.clone();
            tokio::spawn(async move {
                for chunk in (p..n).step_by(4).collect::<Vec<_>>().chunks(50) {
                    publish(chunk.to_vec()).await;
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    while latencies.lock().unwrap().len() < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let m = phase.end(n, unloaded, std::mem::take(&mut *latencies.lock().unwrap()));
    js.delete_stream(ns.to_uppercase()).await.unwrap();
    m
}
