//! Benchmark: flows that wait and fan out, on the embedded broker.
//!
//! 1. Sleeping runs: `BENCH_SLEEPERS` runs (default 100,000) of a flow that
//!    sleeps until one shared time, then sends a command (a for-each step
//!    over one line, to line-pick). Printed: the
//!    host's memory per sleeping run (the growth of the process's resident
//!    memory from before the first start to when all sleep, over their
//!    number), once with runs parked in the store (the default) and once
//!    held in memory (`[orchestrator] park_after_ms` larger than the
//!    sleep), and the time to wake them all when they come due (from the
//!    wake-up time to the last run's end) with its rate.
//! 2. For-each against separate runs: one run whose for-each step sends
//!    `BENCH_ELEMENTS` commands (default 1,000) to line-pick, 64 at a
//!    time, against as many runs of a one-step flow started by 64
//!    producers; the ratio of their times, per round (`BENCH_ROUNDS`,
//!    default 3), median last.
//!
//! Run: `cargo bench -p troupe-tests --bench waits` (`BENCH_ONLY=sleep` or
//! `each` for one part).

use std::time::{Duration, Instant};

use serde_json::json;
use troupe::orchestrator::run::RunState;
use troupe_tests::TestApp;

fn env(k: &str, default: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn manifest(extra: &str) -> String {
    let mut m = String::from("name = \"bench\"\n");
    for s in ["order-validate", "line-pick"] {
        m += &troupe_tests::step(s, &troupe_tests::plugin(s), "");
    }
    m + extra
}

fn rss_kib() -> u64 {
    troupe_tests::process::proc_status_kib(std::process::id(), "VmRSS").unwrap_or(0)
}

/// Sleep until the input's `wake`, then pick the input's one line.
const NAP: &str = "input = \"nap.requested\"\ntimeout_ms = 3600000\n\
    [steps.nap]\nuntil = \"input.wake\"\n\
    [steps.pick]\nstep = \"line-pick\"\nfor_each = \"input.lines\"\nafter = [\"nap\"]\n";

fn order(i: usize, wake: &str) -> serde_json::Value {
    json!({"wake": wake, "lines": [{"sku": format!("sku-{i}"), "qty": 1}]})
}

/// `n` runs sleeping until one time, held (`park = false`) or parked.
async fn sleepers(n: usize, park: bool) {
    let extra = if park {
        format!("[orchestrator]\nmax_active_runs = {}\n", n.max(1))
    } else {
        format!(
            "[orchestrator]\nmax_active_runs = {}\npark_after_ms = 86400000\n",
            n.max(1)
        )
    };
    let app = TestApp::new(&manifest(&extra));
    std::fs::create_dir(app.path().join("flows")).unwrap();
    std::fs::write(app.path().join("flows/nap.toml"), NAP).unwrap();
    let host = app.start().await;
    let o = host.orchestrator.clone().unwrap();
    // Late enough for every run to start and fall asleep first (at 1,000
    // starts a second at worst).
    let wake_ms = troupe::clock::now_ms() + 15_000 + (n as u64) / 10;
    let wake = troupe::clock::rfc3339(wake_ms);
    let before = rss_kib();
    let started = Instant::now();
    let producers = 64;
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let (o, wake) = (o.clone(), wake.clone());
            tokio::spawn(async move {
                for i in (p..n).step_by(producers) {
                    o.start("nap", order(i, &wake), None).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let start_s = started.elapsed().as_secs_f64();
    // Every run asleep: parked, or held with nothing out.
    let asleep = Instant::now();
    loop {
        let load = o.load();
        let settled = if park {
            load.parked() == n
        } else {
            host.broker.backlog().await.unwrap_or(1) == 0 && load.active() == n
        };
        if settled || troupe::clock::now_ms() >= wake_ms {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let asleep_s = asleep.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib();
    let (parked, active) = (o.load().parked(), o.load().active());
    let per_run = (after.saturating_sub(before) * 1024) as f64 / n as f64;
    println!(
        "  {}: {n} runs started in {start_s:.1} s, asleep {asleep_s:.1} s later ({parked} parked, \
         {active} held); memory {:.0} MiB -> {:.0} MiB: {per_run:.0} bytes per sleeping run",
        if park { "parked" } else { "held  " },
        before as f64 / 1024.0,
        after as f64 / 1024.0,
    );
    if troupe::clock::now_ms() >= wake_ms {
        println!("  (not all asleep before the wake-up time: the wake figure includes starts)");
    }
    // Wake them: every run ends when it wakes.
    let mut finished = o.finished();
    let mut ended = 0;
    while ended < n {
        match finished.recv().await {
            Ok((id, state)) => {
                assert_eq!(state, RunState::Completed, "{id}");
                ended += 1;
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => ended += k as usize,
            Err(e) => panic!("{e}"),
        }
    }
    let last = troupe::clock::now_ms();
    let took = last.saturating_sub(wake_ms) as f64 / 1000.0;
    println!(
        "  {}: all {n} woke and ended {took:.2} s after their wake-up time ({:.0} runs a second)",
        if park { "parked" } else { "held  " },
        n as f64 / took.max(0.001),
    );
    host.shutdown().await;
}

const EACH: &str = "input = \"order.placed\"\ntimeout_ms = 600000\n\
    [steps.validate]\nstep = \"order-validate\"\n\
    [steps.pick]\nstep = \"line-pick\"\nfor_each = \"validate.lines\"\nmax_parallel = 64\n";
const ONE: &str = "input = \"order.line\"\n[steps.pick]\nstep = \"line-pick\"\n";

/// One run of a for-each step over `n` lines; `n` runs of one step.
async fn each(n: usize) -> (f64, f64) {
    let app = TestApp::new(&manifest(&format!(
        "[orchestrator]\nmax_active_runs = {}\n",
        n.max(64)
    )));
    std::fs::create_dir(app.path().join("flows")).unwrap();
    std::fs::write(app.path().join("flows/each.toml"), EACH).unwrap();
    std::fs::write(app.path().join("flows/one.toml"), ONE).unwrap();
    let host = app.start().await;
    let o = host.orchestrator.clone().unwrap();
    let line = |i: usize| json!({"sku": format!("sku-{i}"), "qty": 1, "price_cents": 100});
    // Warm: both flows once.
    let mut finished = o.finished();
    o.start("one", line(0), None).await.unwrap();
    finished.recv().await.unwrap();
    let lines: Vec<_> = (0..n).map(line).collect();
    let order = json!({"order_id": "o", "customer": "c", "lines": lines});
    let t = Instant::now();
    let (id, _) = o.start("each", order, None).await.unwrap();
    loop {
        let (done, state) = finished.recv().await.unwrap();
        if done == id {
            assert_eq!(state, RunState::Completed);
            break;
        }
    }
    let fan = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let producers = 64;
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let o = o.clone();
            tokio::spawn(async move {
                for i in (p..n).step_by(producers) {
                    o.start("one", line(i), None).await.unwrap();
                }
            })
        })
        .collect();
    let mut ended = 0;
    while ended < n {
        let (_, state) = finished.recv().await.unwrap();
        assert_eq!(state, RunState::Completed);
        ended += 1;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let runs = t.elapsed().as_secs_f64();
    host.shutdown().await;
    (fan, runs)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::var("BENCH_ONLY").ok();
    let want = |part: &str| only.as_deref().is_none_or(|o| o == part);
    // Each mode in a process of its own: what one frees, the other's
    // memory figure would reuse.
    if let Ok(mode) = std::env::var("BENCH_SLEEP_MODE") {
        let n = env("BENCH_SLEEPERS", 100_000);
        rt.block_on(sleepers(n, mode == "parked"));
        return;
    }
    if want("sleep") {
        println!(
            "sleeping runs (sleep until one time, then one command), durable embedded broker:"
        );
        for mode in ["parked", "held"] {
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .env("BENCH_SLEEP_MODE", mode)
                .status()
                .unwrap();
            assert!(status.success(), "{mode}: {status}");
        }
    }
    if want("each") {
        let n = env("BENCH_ELEMENTS", 1_000);
        let rounds = env("BENCH_ROUNDS", 3).max(1);
        println!(
            "for-each over {n} lines (64 at a time) against {n} one-step runs (64 producers):"
        );
        let mut ratios = Vec::new();
        for round in 1..=rounds {
            let (fan, runs) = rt.block_on(each(n));
            println!(
                "  round {round}: for-each {fan:.2} s ({:.0} elements a second), separate runs {runs:.2} s \
                 ({:.0} runs a second): for-each / runs time {:.2}",
                n as f64 / fan,
                n as f64 / runs,
                fan / runs
            );
            ratios.push(fan / runs);
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "  median for-each / runs time: {:.2}",
            ratios[ratios.len() / 2]
        );
    }
}
