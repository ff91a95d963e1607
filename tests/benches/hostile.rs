//! Benchmark: what hostile guests cost the host, measured from outside on
//! the `troupe` binary (the host as its own process).
//!
//! 1. Resident memory under memory bombs: 40 `hostile.membomb` messages at
//!    concurrency 2, for `memory_mb` 16, 64 and 256; the host's peak RSS
//!    (`VmHWM`) against the bound `baseline + 2 x memory_mb x 1.5`.
//! 2. How long a guest that waits (`hostile.sleep`, a WASI clock and
//!    `poll`) or spins (`hostile.spin`) holds its message, against its
//!    `timeout_ms` (200 and 1000 ms): from the event's acceptance to its
//!    dead letter, both stamped by the host, one try each; unloaded, and
//!    with four threads of this process burning the machine's cores.
//!
//! Run: `cargo bench -p troupe-tests --bench hostile` (`BENCH_BOMBS` to
//! change the number of bombs, `BENCH_ONLY=bombs` or `BENCH_ONLY=hold`
//! for one part). The per-invocation cost of the time-limit
//! mechanism is measured by `scripts/bench-ab` with the `chain` bench.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use troupe_tests::process::HostProcess;
use troupe_tests::{TestApp, guest, step};

fn hostile_app(extra: &str) -> TestApp {
    TestApp::new(&step("hostile", &guest("hostile"), extra))
}

fn wait_for_dead_letters(host: &HostProcess, n: usize, within: Duration) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let dead = host.dead_letters();
        if dead.len() >= n {
            return dead;
        }
        assert!(
            start.elapsed() < within,
            "{} of {n} dead-lettered",
            dead.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn bombs(memory_mb: u64, bombs: usize) {
    let app = hostile_app(&format!(
        "concurrency = 2\nlimits = {{ memory_mb = {memory_mb}, timeout_ms = 10000 }}\n\
         retry = {{ max_attempts = 1 }}"
    ));
    let host = HostProcess::start(&app, &[], Duration::from_secs(120));
    let baseline = host.status_kib("VmRSS") / 1024;
    let start = Instant::now();
    for _ in 0..bombs {
        host.client
            .publish(&json!({"type": "hostile.membomb", "data": {}}))
            .unwrap();
    }
    let dead = wait_for_dead_letters(&host, bombs, Duration::from_secs(300));
    let took = start.elapsed();
    let peak = host.status_kib("VmHWM") / 1024;
    let limits = dead.iter().filter(|d| d["class"] == "limit").count();
    let bound = baseline + 2 * memory_mb * 3 / 2;
    println!(
        "| {memory_mb:>4} | {bombs} | {limits:>2} | {baseline:>4} | {peak:>5} | {bound:>5} | {} | {:.1} s |",
        if peak <= bound { "within" } else { "OVER" },
        took.as_secs_f64()
    );
}

fn rfc3339(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v.as_str().expect("a time")).expect("RFC 3339")
}

/// Accepted-to-dead-lettered time of one `kind` message, `tries` times.
fn hold(kind: &str, timeout_ms: u64, tries: usize) -> Vec<Duration> {
    let app = hostile_app(&format!(
        "concurrency = 1\nlimits = {{ timeout_ms = {timeout_ms} }}\nretry = {{ max_attempts = 1 }}"
    ));
    let host = HostProcess::start(&app, &[], Duration::from_secs(120));
    let mut held = Vec::new();
    for i in 0..tries {
        host.client
            .publish(&json!({"type": kind, "data": {}}))
            .unwrap();
        let dead = wait_for_dead_letters(&host, i + 1, Duration::from_secs(60));
        let d = dead.last().unwrap();
        let full = host
            .client
            .get(&format!("/v1/dlq/{}", d["id"].as_str().unwrap()))
            .unwrap();
        let accepted = rfc3339(&full["event"]["time"]);
        let dead_at = rfc3339(&full["time"]);
        held.push(dead_at.duration_since(accepted).unwrap_or_default());
    }
    held
}

fn burn(threads: usize, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                }
            })
        })
        .collect()
}

fn main() {
    let n: usize = std::env::var("BENCH_BOMBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    guest("hostile");
    troupe_tests::troupe_bin();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();

    if only.is_empty() || only == "bombs" {
        memory(n);
    }
    if only.is_empty() || only == "hold" {
        holding();
    }
}

fn memory(n: usize) {
    println!("## resident memory under {n} memory bombs, concurrency 2 (MiB)");
    println!(
        "| memory_mb | bombs | dead-lettered as limit | baseline RSS | peak RSS | bound | | took |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for mb in [16, 64, 256] {
        bombs(mb, n);
    }
    println!();
}

fn holding() {
    println!(
        "## how long a blocking or spinning guest holds its message (accepted -> dead letter, one try)"
    );
    println!("| guest | timeout_ms | load | min | median | max | max over the limit |");
    println!("|---|---|---|---|---|---|---|");
    for loaded in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let burners = if loaded {
            burn(4, stop.clone())
        } else {
            Vec::new()
        };
        for (kind, what) in [("hostile.sleep", "sleeps"), ("hostile.spin", "spins")] {
            for timeout_ms in [200u64, 1000] {
                let mut held = hold(kind, timeout_ms, 5);
                held.sort();
                let limit = Duration::from_millis(timeout_ms);
                let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
                println!(
                    "| {what} | {timeout_ms} | {} | {} | {} | {} | {} |",
                    if loaded { "4 busy threads" } else { "none" },
                    ms(held[0]),
                    ms(held[held.len() / 2]),
                    ms(held[held.len() - 1]),
                    ms(held[held.len() - 1].saturating_sub(limit))
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        for b in burners {
            b.join().unwrap();
        }
    }
}
