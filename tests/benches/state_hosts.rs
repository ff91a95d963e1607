//! Benchmark: step state on NATS with one host and with three sharing the
//! app (three `troupe run` processes on this machine), in one run. Each
//! event increments a key of its own (`done/o-N`: a get and a put, every
//! key in one of the app's 16 partitions); the hosts share the partitions
//! and each applies the commits of its own. Prints state commits per
//! second for each, and the ratio; every event must be counted exactly
//! once.
//!
//! Run: `cargo bench -p troupe-tests --bench state_hosts` (`BENCH_ORDERS`
//! sets the events, default 3000; NATS at 127.0.0.1:4222).

use std::process::Command;
use std::time::{Duration, Instant};

use troupe_tests::process::HostProcess;
use troupe_tests::{Backend, TestApp, guest, publish_lines, troupe_bin, wait_for};

/// `troupe ARGS` on `app`'s broker: its standard output.
fn cli(app: &TestApp, args: &[&str]) -> String {
    let broker = app.broker().to_string();
    let out = Command::new(troupe_bin())
        .args(["--broker", broker.as_str()])
        .args(args)
        .current_dir(app.path())
        .env("TROUPE_LOG", "warn")
        .output()
        .expect("troupe runs");
    assert!(
        out.status.success(),
        "troupe {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The events, one a line: each increments its own key.
fn events(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let ops = serde_json::json!({"main": {"ops": [
                {"op": "incr", "bucket": "done", "key": format!("o-{i:05}")},
            ]}});
            serde_json::json!({"type": "test.kv", "data": ops}).to_string()
        })
        .collect()
}

/// Keys of bucket `done` now.
fn done(app: &TestApp) -> usize {
    let v: serde_json::Value =
        serde_json::from_str(&cli(app, &["--json", "kv", "list", "done"])).unwrap();
    v["keys"].as_array().unwrap().len()
}

/// `n` events through `hosts` hosts sharing one app: commits per second.
fn run(hosts: usize, n: usize) -> f64 {
    let manifest = format!(
        "name = \"hosts\"\n[steps.keeper]\ncomponent = {:?}\ngrants.env = {{ ROLE = \"main\" }}\n\
         grants.kv = [\"done\"]\nconcurrency = 16\n",
        guest("keeper").display().to_string()
    );
    let first = TestApp::on(Backend::Nats, &manifest);
    let rest: Vec<TestApp> = (1..hosts)
        .map(|_| TestApp::beside(&first, &manifest))
        .collect();
    let quiet = [("TROUPE_LOG", "error")];
    let procs: Vec<HostProcess> = std::iter::once(&first)
        .chain(&rest)
        .map(|app| HostProcess::start(app, &quiet, Duration::from_secs(120)))
        .collect();
    let shares = wait_for(
        Duration::from_secs(60),
        "the hosts share the partitions",
        || {
            let p: Vec<u64> = procs
                .iter()
                .map(|h| h.client.get("/readyz").ok()?["broker"]["state_partitions"].as_u64())
                .collect::<Option<_>>()?;
            (p.iter().sum::<u64>() == 16 && p.iter().all(|&k| k > 0)).then_some(p)
        },
    );
    let lines = events(n);
    let broker = first.broker().to_string();
    let start = Instant::now();
    publish_lines(first.path(), &lines, &["--broker", &broker]);
    wait_for(Duration::from_secs(600), "every event counted", || {
        (done(&first) >= n).then_some(())
    });
    let elapsed = start.elapsed();
    assert_eq!(done(&first), n);
    for i in [0, n / 2, n - 1] {
        let v = cli(&first, &["kv", "get", "done", &format!("o-{i:05}")]);
        assert_eq!(v, "1", "event {i} counted once");
    }
    let per_second = n as f64 / elapsed.as_secs_f64();
    println!(
        "{hosts} host(s), partitions led {shares:?}: {n} commits in {:.2} s, {per_second:.0} \
         commits/s",
        elapsed.as_secs_f64()
    );
    drop(procs);
    per_second
}

fn main() {
    let n: usize = std::env::var("BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    println!("# step state on NATS: {n} events, one commit each (get + put, a key each)");
    let one = run(1, n);
    let three = run(3, n);
    println!(
        "three hosts / one: {:.2}x ({three:.0} against {one:.0} commits/s)",
        three / one
    );
}
