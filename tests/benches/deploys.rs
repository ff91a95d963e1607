//! Benchmark: what a deploy costs the work around it, and what an old
//! deployment costs while runs hold it.
//!
//! 1. Latency around a swap. Runs of a three-step flow (the order
//!    example's Rust steps: validate -> charge -> ship, on the embedded
//!    broker) are started at a steady rate; half-way, new builds of all
//!    three steps are deployed (`Deployer::deploy`, what `POST
//!    /v1/deployments` calls). Each run's latency (start to its final
//!    record) is taken; the p50 and p99 of the runs started in the 2 s
//!    around the switch are set against those of the runs started in the
//!    steady state before it, in the same run.
//! 2. Memory. Runs of a flow that waits (a hybrid step awaiting an event
//!    that is sent later) hold deployment 1 while 2 is current; the
//!    process's resident memory is read with both loaded, then after the
//!    runs end and 1 is unloaded.
//!
//! Run: `cargo bench -p troupe-tests --bench deploys` (`BENCH_RATE` runs
//! per second, default 200; `BENCH_SECONDS`, default 12).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use troupe_tests::bench::{ORDER_STEPS, ms, order, pct};
use troupe_tests::{TestApp, plugin, replace_file, revision};

const CHAIN: &str = "input = \"order.placed\"\ntimeout_ms = 60000\n\n[steps.validate]\nstep = \"order-validate\"\n\n[steps.charge]\nstep = \"payment-charge\"\ninput = \"validate\"\n\n[steps.ship]\nstep = \"shipping-dispatch\"\ninput = \"charge\"\n";
const WAIT: &str = "input = \"order.placed\"\ntimeout_ms = 600000\n\n[steps.validate]\nstep = \"order-validate\"\n\n[steps.hold]\npublish = \"hold.requested\"\ninput = \"validate\"\nawait = \"hold.released\"\ntimeout_ms = 600000\n";

fn env(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The app: the three steps from `comp/` (which a deploy replaces), and
/// the flows.
fn app() -> (TestApp, Vec<PathBuf>) {
    let mut m = String::from("name = \"bench\"\n");
    for s in ORDER_STEPS {
        m += &format!("[steps.{s}]\ncomponent = \"comp/{s}.wasm\"\n");
    }
    let app = TestApp::new(&m);
    let comp = app.path().join("comp");
    std::fs::create_dir_all(&comp).unwrap();
    let mut files = Vec::new();
    for s in ORDER_STEPS {
        let to = comp.join(format!("{s}.wasm"));
        replace_file(&plugin(s), &to);
        files.push(to);
    }
    std::fs::create_dir_all(app.path().join("flows")).unwrap();
    std::fs::write(app.path().join("flows/chain.toml"), CHAIN).unwrap();
    std::fs::write(app.path().join("flows/wait.toml"), WAIT).unwrap();
    (app, files)
}

/// New builds of the steps (same code, other digests) in place.
fn new_builds(files: &[PathBuf], n: u32) {
    for f in files {
        let next = revision(&plugin(&stem(f)), n);
        replace_file(&next, f);
    }
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

fn rss_kib() -> u64 {
    troupe_tests::process::proc_status_kib(std::process::id(), "VmRSS").unwrap_or(0)
}

fn main() {
    let rate = env("BENCH_RATE", 200);
    let seconds = env("BENCH_SECONDS", 12);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (app, files) = app();
        let host = app.start().await;
        let o = host.orchestrator.clone().expect("flows");
        // When each run ended, by id.
        let ended: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let mut finished = o.finished();
        let e2 = ended.clone();
        tokio::spawn(async move {
            while let Ok((id, _)) = finished.recv().await {
                e2.lock().unwrap().insert(id, Instant::now());
            }
        });
        println!(
            "latency around a swap: {rate} runs/s for {seconds} s of a three-step flow \
             (embedded broker), new builds of all three steps deployed half-way"
        );
        let t0 = Instant::now();
        let period = Duration::from_secs_f64(1.0 / rate as f64);
        let total = (rate * seconds) as usize;
        let mut started: Vec<(String, Instant)> = Vec::with_capacity(total);
        let mut swap: Option<(Instant, Instant)> = None;
        let deployer = host.deployer.clone();
        let mut deploying = None;
        for i in 0..total {
            let due = t0 + period * i as u32;
            tokio::time::sleep_until(due.into()).await;
            if swap.is_none() && deploying.is_none() && due - t0 >= Duration::from_secs(seconds / 2)
            {
                new_builds(&files, 2);
                let d = deployer.clone();
                deploying = Some(tokio::spawn(async move {
                    let at = Instant::now();
                    let r = d
                        .deploy(troupe::deployer::Request {
                            how: "bench".into(),
                            ..Default::default()
                        })
                        .await
                        .expect("deployed");
                    assert!(r.recorded);
                    (at, Instant::now())
                }));
            }
            let now = Instant::now();
            match o.start("chain", order(i), None).await {
                Ok((id, _)) => started.push((id, now)),
                Err(e) => panic!("run {i} did not start: {e}"),
            }
            if let Some(h) = deploying.as_ref()
                && h.is_finished()
                && swap.is_none()
            {
                swap = Some(deploying.take().unwrap().await.unwrap());
            }
        }
        if let Some(h) = deploying.take() {
            swap = Some(h.await.unwrap());
        }
        let (asked, switched) = swap.expect("the deploy finished");
        // Every run ends.
        let until = Instant::now() + Duration::from_secs(120);
        while ended.lock().unwrap().len() < started.len() {
            assert!(Instant::now() < until, "runs did not end");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ended = ended.lock().unwrap().clone();
        let latency = |from: Instant, to: Instant| -> Vec<Duration> {
            let mut v: Vec<Duration> = started
                .iter()
                .filter(|(_, at)| *at >= from && *at < to)
                .map(|(id, at)| ended[id] - *at)
                .collect();
            v.sort();
            v
        };
        let steady = latency(t0 + Duration::from_secs(1), asked - Duration::from_secs(1));
        let around = latency(
            switched - Duration::from_secs(1),
            switched + Duration::from_secs(1),
        );
        let during = latency(asked, switched);
        println!(
            "  the deploy took {} (load the new builds, check, record, switch)",
            ms(switched - asked)
        );
        let line = |what: &str, v: &[Duration]| {
            println!(
                "  {what:<34} {:>5} runs  p50 {:>8}  p99 {:>8}  max {:>8}",
                v.len(),
                ms(pct(v, 0.5)),
                ms(pct(v, 0.99)),
                ms(*v.last().unwrap_or(&Duration::ZERO))
            );
        };
        line("steady state (before the deploy)", &steady);
        line("started while it loaded", &during);
        line("started in the 2 s around the switch", &around);
        println!(
            "  p99 around the switch / steady p99: {:.2}",
            pct(&around, 0.99).as_secs_f64() / pct(&steady, 0.99).as_secs_f64()
        );

        // Memory: runs of `wait` hold the current deployment (2) while 3
        // is deployed.
        let held = 50;
        let mut waiting = Vec::new();
        for i in 0..held {
            waiting.push(o.start("wait", order(100_000 + i), None).await.unwrap().0);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let one = rss_kib();
        new_builds(&files, 3);
        let r = deployer
            .deploy(troupe::deployer::Request {
                how: "bench".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(r.recorded);
        // Traffic on the new deployment, so its instances are made too.
        for i in 0..200 {
            o.start("chain", order(200_000 + i), None).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let loaded = deployer.loaded();
        let two = rss_kib();
        // Release the held runs: their awaited events.
        let events: Vec<_> = waiting
            .iter()
            .map(|id| {
                let mut e =
                    troupe::event::Event::new("hold.released", "troupe://bench", b"{}".to_vec());
                e.extensions
                    .insert(troupe::event::CORRELATION_ID.into(), id.clone());
                e
            })
            .collect();
        host.broker.publish(events).await.unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        while deployer.loaded().len() > 1 {
            assert!(Instant::now() < until, "deployment 2 was not unloaded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib();
        println!(
            "memory: {held} runs pinned to the old deployment while the new one serves \
             (three Rust steps):"
        );
        println!(
            "  one deployment loaded:            {:>7} KiB resident",
            one
        );
        println!(
            "  two loaded ({loaded:?}):           {:>7} KiB resident",
            two
        );
        println!(
            "  after the pinned runs ended:      {:>7} KiB resident (loaded now: {:?})",
            after,
            deployer.loaded()
        );
        println!(
            "  the old deployment costs about {} KiB while runs hold it",
            two.saturating_sub(after)
        );
        host.shutdown().await;
    });
}
