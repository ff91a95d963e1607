//! Benchmark: what the CLI's read-only commands cost on the orders example
//! (9 steps in Rust, Python, C and JavaScript), as a user runs them: the
//! `troupe` binary, one process per command.
//!
//! - `publish` of one event with its contract checked against every
//!   consuming step, against `publish --no-check` in the same run (the
//!   baseline: the same process with no contract at all);
//! - `check`, `graph` and `docs`.
//!
//! Each command runs once first (which compiles the components and fills
//! the contract cache, as `troupe run` would), then `BENCH_RUNS` times
//! (default 20): wall time (median, p99) and peak resident memory.
//!
//! Run: `cargo bench -p troupe-tests --bench cli`.

use std::process::Command;
use std::time::{Duration, Instant};

use troupe_tests::bench::{ms, quantiles};
use troupe_tests::{example_app, troupe_bin};

/// Run `troupe ARGS` in `dir`: its wall time and peak RSS (KiB).
fn timed(args: &[&str], dir: &std::path::Path) -> (Duration, u64) {
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(troupe_bin())
        .args(args)
        .current_dir(dir)
        .env("TROUPE_LOG", "warn")
        .output()
        .expect("troupe runs");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "troupe {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rss = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    (took, rss)
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    troupe_bin(); // built before anything is timed
    let app = example_app("orders");
    let d = app.path().to_str().unwrap().to_string();
    let order =
        r#"{"order_id":"o-1","customer":"ada","lines":[{"sku":"tea","qty":1,"price_cents":5}]}"#;
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "publish --no-check (baseline)",
            vec!["publish", &d, "order.placed", "--data", order, "--no-check"],
        ),
        (
            "publish (contract checked)",
            vec!["publish", &d, "order.placed", "--data", order],
        ),
        ("check", vec!["check", &d]),
        ("graph", vec!["graph", &d]),
        ("docs", vec!["docs", &d]),
    ];
    let mut baseline = None;
    println!("{runs} runs each, after one that fills the caches");
    for (name, args) in &cases {
        let (first, first_rss) = timed(args, app.path());
        let mut times = Vec::new();
        let mut peak = 0;
        for _ in 0..runs {
            let (t, rss) = timed(args, app.path());
            times.push(t);
            peak = peak.max(rss);
        }
        let (p50, p99) = quantiles(times);
        let ratio = match baseline {
            None => {
                baseline = Some(p50);
                String::new()
            }
            Some(b) => format!("  {:.2}x the baseline", p50.as_secs_f64() / b.as_secs_f64()),
        };
        println!(
            "{name:<32} median {} p99 {}  peak {} MiB  (first run {}, {} MiB){ratio}",
            ms(p50),
            ms(p99),
            peak / 1024,
            ms(first),
            first_rss / 1024
        );
    }
}
