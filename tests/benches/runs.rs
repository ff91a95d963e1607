//! Benchmark: finding runs, and what the run index costs.
//!
//! 1. Listing. The index is filled with `BENCH_RUNS` runs (default
//!    1,000,000 on the embedded broker; with `BENCH_BROKER=nats`, 100,000)
//!    through the broker's commits, as the orchestrator writes them
//!    (`Commit::runs`): 4 flows, 85% completed, 8% failed, 4% compensated,
//!    2% running, 1% cancelled, a key on one run in ten, one run every
//!    10 ms. Then pages of 50 with each filter, from random cursors (a
//!    random run's id), `BENCH_PAGES` each (default 300): p50 and p99 per
//!    page, as the API's handler gets them (`RunState::runs_list`). On
//!    NATS the first query also loads this host's copy of the index: its
//!    time is shown apart.
//! 2. The index's cost per run (embedded). The writes one run of a
//!    three-step flow makes (its start: the record, a key row, the first
//!    command; its end: the record), committed with and without the
//!    index entries that go with the records, `BENCH_COST_RUNS` runs
//!    (default 40,000) per side, interleaved in `BENCH_COST_ROUNDS` rounds
//!    (default 8): the time per run, each way, and the median of the
//!    rounds' differences (a shared VM's speed drifts).
//!
//! Run: `cargo bench -p troupe-tests --bench runs`.

use std::sync::Arc;
use std::time::Instant;

use troupe::broker::runs::{RunEntry, RunQuery};
use troupe::broker::{Broker, BrokerUrl, Commit};
use troupe_tests::bench::{ms, pct};

fn env(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const T0: u64 = 1_790_000_000_000;
const FLOWS: [&str; 4] = ["fulfil", "deliver", "refund", "restock"];

fn state_of(i: u64) -> &'static str {
    match i % 100 {
        0..=84 => "completed",
        85..=92 => "failed",
        93..=96 => "compensated",
        97..=98 => "running",
        _ => "cancelled",
    }
}

fn entry(i: u64) -> RunEntry {
    let ms = T0 + i * 10;
    let ts =
        uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
    let state = state_of(i);
    RunEntry {
        id: uuid::Uuid::new_v7(ts).to_string(),
        flow: FLOWS[(i % 4) as usize].to_string(),
        state: state.to_string(),
        created_ms: ms,
        updated_ms: ms + 50,
        deployment: Some(1),
        key: i.is_multiple_of(10).then(|| format!("order-{i}")),
        error: (state == "failed").then(|| "step charge failed: retry: provider down".to_string()),
    }
}

async fn commit(b: &Arc<dyn Broker>, c: Commit) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    b.commit_then(
        c,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.await.unwrap().unwrap();
}

async fn fill(b: &Arc<dyn Broker>, n: u64) -> Vec<String> {
    let start = Instant::now();
    let mut ids = Vec::with_capacity(n as usize);
    let mut i = 0;
    while i < n {
        let batch: Vec<RunEntry> = (i..(i + 1000).min(n)).map(entry).collect();
        ids.extend(batch.iter().map(|e| e.id.clone()));
        i += batch.len() as u64;
        commit(
            b,
            Commit {
                runs: batch,
                ..Commit::default()
            },
        )
        .await;
    }
    let t = start.elapsed();
    println!(
        "filled the index with {n} runs in {:.1} s ({:.0} entries/s)",
        t.as_secs_f64(),
        n as f64 / t.as_secs_f64()
    );
    ids
}

async fn listing(b: &Arc<dyn Broker>, ids: &[String], pages: usize) {
    let n = ids.len() as u64;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let first = Instant::now();
    let page = b
        .runs_list(&RunQuery {
            limit: 50,
            ..RunQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.runs.len(), 50);
    println!(
        "first query (on NATS: loads this host's copy): {}",
        ms(first.elapsed())
    );
    type Make = Box<dyn Fn(u64) -> RunQuery>;
    let s = |v: &str| Some(v.to_string());
    let filters: Vec<(&str, Make)> = vec![
        ("none (newest first)", Box::new(|_| RunQuery::default())),
        (
            "flow",
            Box::new(move |_| RunQuery {
                flow: s("deliver"),
                ..RunQuery::default()
            }),
        ),
        (
            "status=failed",
            Box::new(move |_| RunQuery {
                state: s("failed"),
                ..RunQuery::default()
            }),
        ),
        (
            "status=running (2%)",
            Box::new(move |_| RunQuery {
                state: s("running"),
                ..RunQuery::default()
            }),
        ),
        (
            "flow+status",
            Box::new(move |_| RunQuery {
                flow: s("refund"),
                state: s("compensated"),
                ..RunQuery::default()
            }),
        ),
        (
            "key",
            Box::new(move |r| RunQuery {
                key: Some(format!("order-{}", (r % n) / 10 * 10)),
                ..RunQuery::default()
            }),
        ),
        (
            "since+until (10 min)",
            Box::new(move |r| {
                let from = T0 + (r % n) * 10;
                RunQuery {
                    since_ms: Some(from),
                    until_ms: Some(from + 600_000),
                    ..RunQuery::default()
                }
            }),
        ),
    ];
    println!(
        "{:<24} {:>10} {:>10} {:>8}",
        "filter (page of 50)", "p50", "p99", "runs"
    );
    for (name, make) in filters {
        let mut times = Vec::with_capacity(pages);
        let mut got = 0;
        for k in 0..pages {
            let r = next();
            let mut q = make(r);
            q.limit = 50;
            // Half from the newest, half from a random run on.
            if k % 2 == 1 && q.key.is_none() && q.since_ms.is_none() {
                q.after = Some(ids[(r % n) as usize].clone());
            }
            let t = Instant::now();
            let page = b.runs_list(&q).await.unwrap();
            times.push(t.elapsed());
            got += page.runs.len();
        }
        times.sort();
        println!(
            "{name:<24} {:>10} {:>10} {:>8.1}",
            ms(pct(&times, 0.50)),
            ms(pct(&times, 0.99)),
            got as f64 / pages as f64
        );
    }
    let t = Instant::now();
    let counts = b.runs_counts().await.unwrap();
    let total: u64 = counts.iter().map(|c| c.count).sum();
    println!(
        "counts per flow and state: {} ({total} runs)",
        ms(t.elapsed())
    );
}

/// The commits of one run of a three-step flow, with or without its index
/// entries (the record is about the size of such a run's).
fn run_commits(i: u64, index: bool) -> [Commit; 2] {
    let e = entry(i);
    let record = vec![b'x'; 1_400];
    let command = troupe::event::Event::new(
        "order.placed",
        "troupe://bench/orchestrator",
        vec![b'{', b'}'],
    );
    let start = Commit {
        events: vec![command],
        state: vec![
            (format!("run/{}", e.id), Some(record.clone())),
            (format!("key/fulfil/{i}"), Some(b"{}".to_vec())),
        ],
        runs: if index { vec![e.clone()] } else { Vec::new() },
        ..Commit::default()
    };
    let mut ended = e.clone();
    ended.state = "completed".into();
    let end = Commit {
        state: vec![(format!("run/{}", e.id), Some(record))],
        ended: vec![format!("run/{}", e.id)],
        runs: if index { vec![ended] } else { Vec::new() },
        ..Commit::default()
    };
    [start, end]
}

async fn cost(runs: u64) {
    let dir = tempfile::tempdir().unwrap();
    let b = troupe::broker::open(
        &BrokerUrl::Embedded,
        "bench",
        dir.path(),
        &Default::default(),
    )
    .await
    .unwrap();
    let rounds = env("BENCH_COST_ROUNDS", 8);
    let per = runs / rounds;
    let mut i = 10_000_000;
    // Per round: the time per run without, and with, the index.
    let mut pairs: Vec<(f64, f64)> = Vec::new();
    for _ in 0..rounds {
        let mut pair = (0.0, 0.0);
        for index in [false, true] {
            let t = Instant::now();
            // In flight at once, as the driver pipelines them.
            let mut waits = Vec::new();
            for _ in 0..per {
                i += 1;
                for c in run_commits(i, index) {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    b.commit_then(
                        c,
                        Box::new(move |r| {
                            let _ = tx.send(r);
                        }),
                    );
                    waits.push(rx);
                }
                if waits.len() >= 512 {
                    for w in waits.drain(..) {
                        w.await.unwrap().unwrap();
                    }
                }
            }
            for w in waits {
                w.await.unwrap().unwrap();
            }
            let us = t.elapsed().as_secs_f64() * 1e6 / per as f64;
            if index {
                pair.1 = us;
            } else {
                pair.0 = us;
            }
        }
        pairs.push(pair);
    }
    let mut extra: Vec<f64> = pairs.iter().map(|(a, b)| b - a).collect();
    extra.sort_by(f64::total_cmp);
    let mut ratio: Vec<f64> = pairs.iter().map(|(a, b)| b / a).collect();
    ratio.sort_by(f64::total_cmp);
    let median = |v: &[f64]| v[v.len() / 2];
    let mut without: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    without.sort_by(f64::total_cmp);
    println!(
        "the writes of one run (start + end), {per} runs a side in each of {rounds} rounds: \
         without the index {:.1} µs (median), with it +{:.1} µs per run (median of the \
         rounds; {:.1} to {:.1}), x{:.2}",
        median(&without),
        median(&extra),
        extra[0],
        extra[extra.len() - 1],
        median(&ratio),
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let nats = std::env::var("BENCH_BROKER").as_deref() == Ok("nats");
        let n = env("BENCH_RUNS", if nats { 100_000 } else { 1_000_000 });
        let pages = env("BENCH_PAGES", 300) as usize;
        let dir = tempfile::tempdir().unwrap();
        let (url, _ns) = if nats {
            let ns = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
            let url: BrokerUrl = format!("{}/{ns}", troupe_tests::nats_server())
                .parse()
                .unwrap();
            (url, Some(ns))
        } else {
            (BrokerUrl::Embedded, None)
        };
        println!("== finding runs: {n} runs, broker {url}");
        let b = troupe::broker::open(&url, "bench", dir.path(), &Default::default())
            .await
            .unwrap();
        let ids = fill(&b, n).await;
        listing(&b, &ids, pages).await;
        b.close().await;
        drop(b);
        if let Some(ns) = _ns {
            let _ = troupe::broker::nats::purge_namespace(&troupe_tests::nats_server(), &ns).await;
        } else {
            println!("\n== the index's cost per run (embedded)");
            cost(env("BENCH_COST_RUNS", 40_000)).await;
        }
    });
}
