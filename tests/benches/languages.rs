//! Benchmark: what a team's choice of language costs.
//!
//! The same step (shipping-dispatch) in Rust, Python, JavaScript and C:
//! - start of an app with all four: cold (empty artifact cache: every
//!   component compiled, in parallel) and warm (precompiled artifacts
//!   loaded), each from a new runtime, as `troupe run` does;
//! - per message, one thread, through the sandbox (`Sandbox::handle`, the
//!   same call the workers make, contract checks excluded): with a fresh
//!   instance per message and with a reused instance.
//!
//! Run: `cargo bench -p troupe-tests --bench languages`.

use std::time::{Duration, Instant};

use serde_json::json;
use troupe::host::{Host, load_steps};
use troupe::runtime::Runtime;
use troupe_tests::{TestApp, build, event, repo, step};

const VARIANTS: [(&str, &str); 4] = [
    ("rust", "shipping-dispatch"),
    ("python", "shipping-dispatch-py"),
    ("js", "shipping-dispatch-js"),
    ("c", "shipping-dispatch-c"),
];

fn app(instances: &str) -> TestApp {
    let mut m = String::new();
    for (lang, dir) in VARIANTS {
        let component = build(&repo().join("plugins").join(dir));
        m += &step(
            &format!("ship-{lang}"),
            &component,
            &format!("instances = \"{instances}\"\nlimits = {{ memory_mb = 128 }}"),
        );
    }
    TestApp::new(&m)
}

fn per_message(iters: u32, f: impl Fn()) -> Duration {
    for _ in 0..iters.min(20) {
        f();
    }
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed() / iters
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let fresh = app("fresh");

    // Start: cold, then warm, each in a new runtime (a new process's view).
    let t = Instant::now();
    let cold_rt = Runtime::new().unwrap();
    load_steps(&cold_rt, &fresh.app()).unwrap();
    let cold = t.elapsed();
    drop(cold_rt);
    let mut warm = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = Runtime::new().unwrap();
        load_steps(&r, &fresh.app()).unwrap();
        warm.push(t.elapsed());
    }
    warm.sort();
    // Warm, the whole host: runtime, steps, broker open, workers started.
    let host_start = rt.block_on(async {
        let t = Instant::now();
        let host = Host::start(fresh.app()).await.unwrap();
        let took = t.elapsed();
        host.shutdown().await;
        took
    });
    println!("start of an app with steps in 4 languages:");
    println!(
        "  cold (compile all 4 in parallel): {:.2} s",
        cold.as_secs_f64()
    );
    println!(
        "  warm (load precompiled), median of 5: {:.1} ms",
        warm[2].as_secs_f64() * 1e3
    );
    println!(
        "  warm, whole host (broker, workers): {:.1} ms",
        host_start.as_secs_f64() * 1e3
    );

    println!();
    println!("| language | component | fresh instance per message | reused instance |");
    println!("|---|---|---|---|");
    let reuse = app("reuse");
    let r = Runtime::new().unwrap();
    let fresh_steps = load_steps(&r, &fresh.app()).unwrap();
    let reuse_steps = load_steps(&r, &reuse.app()).unwrap();
    let paid = event(
        "payment.charged",
        json!({"order_id": "o-1", "customer": "ada", "amount_cents": 5}),
    );
    for (lang, dir) in VARIANTS {
        let name = format!("ship-{lang}");
        let pick = |steps: &[std::sync::Arc<troupe::runtime::step::LoadedStep>]| {
            steps.iter().find(|s| **s.name() == *name).unwrap().clone()
        };
        let (f, u) = (pick(&fresh_steps), pick(&reuse_steps));
        let iters = if lang == "python" || lang == "js" {
            300
        } else {
            3000
        };
        let fresh_cost = per_message(iters, || {
            f.handle(&paid, 1).unwrap();
        });
        let reuse_cost = per_message(iters * 10, || {
            u.handle(&paid, 1).unwrap();
        });
        let size = std::fs::metadata(build(&repo().join("plugins").join(dir)))
            .unwrap()
            .len();
        println!(
            "| {lang} | {:.1} MB | {:.1} µs | {:.1} µs |",
            size as f64 / 1e6,
            fresh_cost.as_secs_f64() * 1e6,
            reuse_cost.as_secs_f64() * 1e6
        );
    }
}
