//! Benchmark: a soak of the order example (nine steps in Rust, Python, C
//! and JavaScript, the payment provider called over HTTP) at a steady
//! rate, the host as its own process (`troupe run`), watched from outside.
//!
//! For each broker (`BENCH_BROKER`: `embedded`, `nats` or `both`, the
//! default) and each instance mode (`reuse`: the example as written, its
//! Python and JavaScript steps on reused instances; `fresh`: every step on
//! a fresh instance per message), orders are published through the HTTP
//! API in batches at `BENCH_SOAK_RATE` orders/s (default 200; fresh
//! instances at `BENCH_SOAK_RATE_FRESH`, default 80, as they cost more) for
//! `BENCH_SOAK_SECS` (default 120). Every two seconds the host's resident
//! memory (`VmRSS`), its CPU time and the orders finished (the last step's
//! handled count, from `/metrics`) are sampled. Printed per run:
//!
//! - **RSS slope**: a least-squares line of RSS against orders finished,
//!   over the samples after the first third (warm-up), in MB per 1,000
//!   orders; and RSS at the start and end of that window; and the same
//!   slope of each part of RSS: the guests' linear memories (mappings of
//!   1 GiB or more, from `/proc/PID/smaps`), file-backed pages
//!   (`RssFile`), and the rest, the host's own heap;
//! - **host CPU** per 1,000 orders over the same window;
//! - **disk**: the slope of the store's bytes (embedded: database and
//!   WAL; NATS: the namespace's streams) against orders finished, per
//!   1,000 orders.
//!
//! `BENCH_SOAK_MODES` picks the instance modes (default `reuse,fresh`).
//! Then, on each broker (unless `BENCH_SKIP_PRUNING` is set), **the cost
//! of pruning** side by side:
//! the same soak with retention at its defaults (nothing old enough to
//! prune) and with `[retention] events = runs = "20s"` (pruning all the
//! time), host CPU per 1,000 orders of each and their ratio, and the
//! store's size at the end of each (bounded with retention on).
//!
//! The payment step runs 8 at a time (`BENCH_SOAK_PAYMENTS`): it waits on
//! the provider, and at the example's default it caps the app near 45
//! orders/s. A run that falls behind says so, as its slope is then the
//! backlog's.
//!
//! Run: `cargo bench -p troupe-tests --bench soak`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use troupe_tests::process::HostProcess;
use troupe_tests::{Backend, TestApp, example_app_on};

fn var(k: &str, d: f64) -> f64 {
    std::env::var(k)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

/// One sample of the host.
#[derive(Debug, Clone, Copy)]
struct Sample {
    orders: f64,
    rss_mb: f64,
    /// Of `rss_mb`: the guests' linear memories, and file-backed pages.
    guest_mb: f64,
    file_mb: f64,
    cpu_s: f64,
    disk: f64,
    backlog: f64,
}

/// What one soak measured.
struct Soak {
    slope_mb_per_1k: f64,
    /// The slopes of the guests' memory, of file-backed pages, and of the
    /// rest (the host's own heap).
    parts_per_1k: (f64, f64, f64),
    rss_window: (f64, f64),
    backlog_window: (f64, f64),
    cpu_ms_per_order: f64,
    disk_per_1k: Option<f64>,
    disk_end: Option<u64>,
    finished: f64,
    published: usize,
}

/// The host's CPU time (user + system), from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parens.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident MB of the process `pid` in its guests' linear memories
/// (wasmtime reserves each in a mapping of at least 1 GiB, which nothing
/// else in the host maps) and in file-backed pages, from
/// `/proc/PID/smaps`.
fn guest_and_file_mb(pid: u32) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let kib = |l: &str, f: &str| -> Option<f64> {
        l.strip_prefix(f)?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let (mut guest, mut size) = (0.0, 0.0);
    for l in text.lines() {
        if let Some(v) = kib(l, "Size:") {
            size = v;
        } else if let Some(v) = kib(l, "Rss:")
            && size >= (1 << 20) as f64
        {
            guest += v;
        }
    }
    let file = proc_kib(pid, "RssFile");
    (guest / 1024.0, file / 1024.0)
}

fn proc_kib(pid: u32, field: &str) -> f64 {
    troupe_tests::process::proc_status_kib(pid, field).unwrap_or(0) as f64
}

/// A series of the host's `/metrics` (0 if it cannot be read).
fn metric(host: &HostProcess, series: &str) -> f64 {
    let text = match host.client.get("/metrics") {
        Ok(Value::String(s)) => s,
        _ => return 0.0,
    };
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Orders the last step (customer-notify) has handled.
fn finished(host: &HostProcess) -> f64 {
    metric(host, "troupe_step_handled_total{step=\"customer-notify\"}")
}

/// Bytes the app's broker keeps: under the app's state folder (the
/// embedded store and its WAL), or in the app's namespace's streams on
/// the NATS server (events, dead letters, the state buckets, the commit
/// log).
fn disk(app: &TestApp) -> u64 {
    if let Some(ns) = &app.namespace {
        return nats_bytes(ns);
    }
    let dir = app.path().join(troupe::app::STATE_DIR);
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("broker"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn nats_bytes(ns: &str) -> u64 {
    use futures_util::StreamExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(troupe_tests::nats_server())
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let prefixes = [format!("{}_", ns.to_uppercase()), format!("KV_{ns}_")];
        let mut names = js.stream_names();
        let mut bytes = 0;
        while let Some(Ok(n)) = names.next().await {
            if prefixes.iter().any(|p| n.starts_with(p.as_str()))
                && let Ok(mut s) = js.get_stream(&n).await
                && let Ok(i) = s.info().await
            {
                bytes += i.state.bytes;
            }
        }
        bytes
    })
}

/// Least-squares slope of y against x.
fn slope(xy: &[(f64, f64)]) -> f64 {
    let n = xy.len() as f64;
    let (mx, my) = (
        xy.iter().map(|p| p.0).sum::<f64>() / n,
        xy.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = xy.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let var: f64 = xy.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

fn order(i: usize) -> Value {
    let skus = ["tea", "cup", "pot", "kettle"];
    json!({
        "specversion": "1.0",
        "id": format!("soak-{i}"),
        "source": "bench/soak",
        "type": "order.placed",
        "subject": format!("ord-{i}"),
        "datacontenttype": "application/json",
        "data": {
            "order_id": format!("ord-{i}"),
            "customer": "ada",
            "lines": [{"sku": skus[i % skus.len()], "qty": 1, "price_cents": 450}]
        }
    })
}

fn soak(backend: Backend, mode: &str, retention: Option<&str>) -> Soak {
    // Fresh instances cost ~5x the CPU of reused ones per order (Python
    // starts an interpreter for each): a rate this machine keeps up with.
    let rate = if mode == "fresh" {
        var("BENCH_SOAK_RATE_FRESH", 80.0)
    } else {
        var("BENCH_SOAK_RATE", 200.0)
    };
    let secs = var("BENCH_SOAK_SECS", 120.0);
    let app = example_app_on(backend, "orders");
    let path = app.path().join("troupe.toml");
    let mut manifest = std::fs::read_to_string(&path).unwrap();
    // The payment step waits on the provider over HTTP (~20 ms a call):
    // with the default two at a time it caps the app near 45 orders/s, and
    // a backlog (held in memory) would grow under any useful rate.
    let concurrency = var("BENCH_SOAK_PAYMENTS", 8.0) as u32;
    manifest = manifest.replace(
        "[steps.payment-charge]\n",
        &format!("[steps.payment-charge]\nconcurrency = {concurrency}\n"),
    );
    if mode == "fresh" {
        manifest = manifest.replace("instances = \"reuse\"", "");
    }
    if let Some(r) = retention {
        manifest.push_str(&format!("\n[retention]\n{r}\n"));
    }
    std::fs::write(&path, manifest).unwrap();
    let host = HostProcess::start(&app, &[("TROUPE_LOG", "warn")], Duration::from_secs(300));
    let pid = host.pid();
    let state = app.path().join(troupe::app::STATE_DIR);
    let base =
        serde_json::from_str::<Value>(&std::fs::read_to_string(state.join("api.json")).unwrap())
            .unwrap()["url"]
            .as_str()
            .unwrap()
            .to_string();
    let token = troupe::client::token_for(&state, false).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    // Batches every 100 ms, on this thread; samples every 2 s.
    const TICK: Duration = Duration::from_millis(100);
    let per_tick = (rate * TICK.as_secs_f64()).round().max(1.0) as usize;
    let start = Instant::now();
    let mut next_sample = start;
    let mut samples: Vec<Sample> = Vec::new();
    let mut published = 0;
    let mut refused = 0;
    let mut tick = start;
    while start.elapsed().as_secs_f64() < secs {
        let batch: Vec<Value> = (published..published + per_tick).map(order).collect();
        let res = agent
            .post(format!("{base}/v1/events"))
            .header("Authorization", &format!("Bearer {token}"))
            .header("Content-Type", "application/cloudevents-batch+json")
            .send(serde_json::to_vec(&batch).unwrap());
        match res {
            Ok(r) if r.status().is_success() => published += per_tick,
            _ => refused += 1,
        }
        if Instant::now() >= next_sample {
            let (guest_mb, file_mb) = guest_and_file_mb(pid);
            samples.push(Sample {
                orders: finished(&host),
                rss_mb: host.status_kib("VmRSS") as f64 / 1024.0,
                guest_mb,
                file_mb,
                cpu_s: cpu_seconds(pid),
                disk: disk(&app) as f64,
                backlog: metric(&host, "troupe_broker_backlog"),
            });
            next_sample += Duration::from_secs(2);
        }
        tick += TICK;
        if let Some(d) = tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let end = finished(&host);
    // Every step's count: a step off the path to customer-notify (the
    // stock keeper, inventory-reserve) can fall behind while every order
    // finishes, and the backlog is then its.
    let text = match host.client.get("/metrics") {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    };
    let handled: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("troupe_step_handled_total{step=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(step, n)| format!("{step} {n}"))
        .collect();
    println!("  handled per step: {}", handled.join(", "));
    if refused > 0 {
        eprintln!("  ({refused} batches refused)");
    }
    if end < 0.9 * published as f64 {
        // A backlog grows (and the memory holding it): the slope is then
        // not a leak's. Show where the work waits.
        let text = match host.client.get("/metrics") {
            Ok(Value::String(s)) => s,
            _ => String::new(),
        };
        eprintln!(
            "  the host fell behind ({end} of {published} finished): lower BENCH_SOAK_RATE\n{}",
            text.lines()
                .filter(|l| !l.starts_with('#')
                    && (l.contains("handled")
                        || l.contains("retried")
                        || l.contains("dead")
                        || l.contains("backlog")))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let window = &samples[samples.len() / 3..];
    let (first, last) = (window[0], window[window.len() - 1]);
    let xy: Vec<(f64, f64)> = window.iter().map(|s| (s.orders, s.rss_mb)).collect();
    let done = (last.orders - first.orders).max(1.0);
    let store = Some(disk(&app));
    let on_disk: Vec<(f64, f64)> = window.iter().map(|s| (s.orders, s.disk)).collect();
    Soak {
        slope_mb_per_1k: slope(&xy) * 1000.0,
        parts_per_1k: {
            let part = |f: fn(&Sample) -> f64| {
                let xy: Vec<(f64, f64)> = window.iter().map(|s| (s.orders, f(s))).collect();
                slope(&xy) * 1000.0
            };
            (
                part(|s| s.guest_mb),
                part(|s| s.file_mb),
                part(|s| s.rss_mb - s.guest_mb - s.file_mb),
            )
        },
        rss_window: (first.rss_mb, last.rss_mb),
        backlog_window: (first.backlog, last.backlog),
        cpu_ms_per_order: (last.cpu_s - first.cpu_s) * 1000.0 / done,
        disk_per_1k: store.map(|_| slope(&on_disk) * 1000.0),
        disk_end: store,
        finished: end,
        published,
    }
}

fn report(backend: Backend, mode: &str, s: &Soak) {
    println!(
        "{:<8} {:<6} orders {:>6} published, {:>6} finished, backlog {:.0} -> {:.0} | RSS {:.0} -> {:.0} MB, slope {:+.3} MB per 1,000 orders (guests {:+.3}, files {:+.3}, host heap {:+.3}) | host CPU {:.2} ms/order{}",
        format!("{backend:?}").to_lowercase(),
        mode,
        s.published,
        s.finished,
        s.backlog_window.0,
        s.backlog_window.1,
        s.rss_window.0,
        s.rss_window.1,
        s.slope_mb_per_1k,
        s.parts_per_1k.0,
        s.parts_per_1k.1,
        s.parts_per_1k.2,
        s.cpu_ms_per_order,
        s.disk_per_1k
            .map(|d| format!(" | store {:.2} MB per 1,000 orders", d / 1e6))
            .unwrap_or_default()
    );
}

fn main() {
    let which = std::env::var("BENCH_BROKER").unwrap_or_else(|_| "both".into());
    let mut backends = Vec::new();
    if which != "nats" {
        backends.push(Backend::Embedded);
    }
    if which != "embedded" {
        // The server of the tests (`TROUPE_TEST_NATS`, else 127.0.0.1:4222).
        backends.push(Backend::Nats);
    }
    println!(
        "soak: the order example, {} orders/s ({} with fresh instances) for {} s per run",
        var("BENCH_SOAK_RATE", 200.0),
        var("BENCH_SOAK_RATE_FRESH", 80.0),
        var("BENCH_SOAK_SECS", 120.0)
    );
    let modes = std::env::var("BENCH_SOAK_MODES").unwrap_or_else(|_| "reuse,fresh".into());
    for &b in &backends {
        for mode in modes.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let s = soak(b, mode, None);
            report(b, mode, &s);
        }
    }
    if std::env::var("BENCH_SKIP_PRUNING").is_ok() {
        return;
    }
    for &b in &backends {
        let name = format!("{b:?}").to_lowercase();
        println!("pruning cost ({name}, reused instances):");
        let off = soak(b, "reuse", None);
        report(b, "reuse", &off);
        let on = soak(b, "reuse", Some("events = \"20s\"\nruns = \"20s\""));
        report(b, "reuse", &on);
        println!(
            "  host CPU per order, pruning on / off: {:.3} ({:.2} vs {:.2} ms); store at the end {:.1} MB on, {:.1} MB off",
            on.cpu_ms_per_order / off.cpu_ms_per_order,
            on.cpu_ms_per_order,
            off.cpu_ms_per_order,
            on.disk_end.unwrap_or(0) as f64 / 1e6,
            off.disk_end.unwrap_or(0) as f64 / 1e6,
        );
    }
}
