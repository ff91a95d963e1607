//! Benchmark: a three-step orchestrated flow on the embedded broker, beside
//! the same three steps in choreography, in the same run.
//!
//! The steps are the order example's Rust steps (order-validate ->
//! payment-charge -> shipping-dispatch), fresh instances. Orchestrated runs
//! are started through the orchestrator (the call the HTTP handler makes)
//! and are done when the orchestrator reports them finished; each run is
//! one start commit plus three command/reply round trips through the
//! durable broker. The choreographed chain is measured as in `chain.rs`.
//!
//! Run: `cargo bench -p troupe-tests --bench flow` (`BENCH_RUNS`, default
//! 10000; `BENCH_ONLY=orchestration` or `choreography` to profile one).
//! Both modes run in each of `BENCH_ROUNDS` rounds (default 3), one after
//! the other, and the ratio of their throughputs is taken per round; the
//! median ratio is printed last, since a shared VM's speed drifts.

use troupe_tests::{TestApp, bench};

const FLOW: &str = "input = \"order.placed\"\n\n[steps.validate]\nstep = \"order-validate\"\n\n[steps.charge]\nstep = \"payment-charge\"\ninput = \"validate\"\n\n[steps.ship]\nstep = \"shipping-dispatch\"\ninput = \"charge\"\n";

fn main() {
    let n: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let m = bench::order_manifest("");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::var("BENCH_ONLY").ok();
    let want = |mode: &str| only.as_deref().is_none_or(|o| o == mode);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    println!("three steps, fresh instances, durable embedded broker, {n} each, {rounds} rounds:");
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let (chor, orch) = rt.block_on(async {
            let chor = if want("choreography") {
                let app = TestApp::new(&m);
                let host = app.start().await;
                let r = bench::order_chain(&host, n).await;
                host.shutdown().await;
                Some(r)
            } else {
                None
            };
            let orch = if want("orchestration") {
                let app = TestApp::new(&m);
                std::fs::create_dir(app.path().join("flows")).unwrap();
                std::fs::write(app.path().join("flows/chain.toml"), FLOW).unwrap();
                let host = app.start().await;
                let r = bench::orchestration(&host, "chain", n, bench::order).await;
                host.shutdown().await;
                Some(r)
            } else {
                None
            };
            (chor, orch)
        });
        println!("round {round}:");
        if let Some(c) = &chor {
            println!("  choreography:  {c}");
        }
        if let Some(o) = &orch {
            println!("  orchestration: {o}");
        }
        if let (Some(c), Some(o)) = (chor, orch) {
            let ratio = o.per_second / c.per_second;
            println!("  orchestration / choreography throughput: {ratio:.2}");
            ratios.push(ratio);
        }
    }
    if !ratios.is_empty() {
        ratios.sort_by(f64::total_cmp);
        let all: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "orchestration / choreography throughput, median of {} rounds: {:.2} (each: {})",
            ratios.len(),
            ratios[ratios.len() / 2],
            all.join(", ")
        );
    }
}
