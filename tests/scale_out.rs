//! Several hosts of one app on NATS share the work, and the app survives
//! one of them dying: three `troupe run` processes on the real NATS server,
//! a few thousand order cascades, SIGKILL one host half-way; every cascade
//! completes, none is lost, and each step's work was done by several hosts.
//!
//! And flows move: of two hosts with flows, one drives them (it holds the
//! app's orchestrator lease); SIGKILL it with runs in flight, and the
//! other takes the lease and finishes every run.
//!
//! Each host runs from a directory of its own with the same `troupe.toml`
//! (same app name, so the same consumers), and its `sink` step writes into
//! that directory: which host finished which cascade is on disk.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use troupe_tests::{Backend, ORDER_STEPS, TestApp, guest, plugin_steps, step, troupe_bin};

const ORDERS: usize = 3000;
const HOSTS: usize = 3;

fn manifest() -> String {
    let mut m = String::from("name = \"orders\"\n");
    m += &plugin_steps(&ORDER_STEPS, "");
    m += &step(
        "sink",
        &guest("sink"),
        "grants.dirs = [{ host = \"out\", guest = \"/out\", write = true }]",
    );
    m
}

fn host(dir: &Path, broker: &str) -> Child {
    Command::new(troupe_bin())
        .args(["--json", "--broker", broker, "run"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("TROUPE_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// (correlation id, event id) of every cascade the sink of `dir` finished.
fn finished(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|f| {
            let name = f.unwrap().file_name().into_string().unwrap();
            let (c, e) = name.split_once('.').unwrap();
            (c.to_string(), e.to_string())
        })
        .collect()
}

#[test]
fn three_hosts_share_the_work_and_survive_one_being_killed() {
    // Three directories with the same manifest, in one NATS namespace.
    let first = TestApp::on(Backend::Nats, &manifest());
    let mut apps: Vec<TestApp> = (1..HOSTS)
        .map(|_| TestApp::beside(&first, &manifest()))
        .collect();
    apps.insert(0, first);
    let broker = apps[0].broker().to_string();
    for a in &apps {
        std::fs::create_dir(a.path().join("out")).unwrap();
    }
    let mut hosts: Vec<Option<Child>> = Vec::new();
    for a in &apps {
        hosts.push(Some(host(a.path(), &broker)));
        // Let the first compile the components; the others load them
        // from their own caches, compiled once more here (a few seconds).
        std::thread::sleep(Duration::from_millis(300));
    }

    let lines: Vec<String> = (0..ORDERS)
        .map(|i| {
            serde_json::json!({"type": "order.placed", "subject": format!("o-{i}"), "data": {
                "order_id": format!("o-{i}"), "customer": "c",
                "lines": [{"sku": "tea", "qty": 1 + i % 3, "price_cents": 100}]
            }})
            .to_string()
        })
        .collect();
    let file = apps[0].path().join("orders.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let published = Command::new(troupe_bin())
        .args(["--json", "--broker", &broker, "publish"])
        .arg(apps[0].path())
        .arg("--file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let ids: HashSet<String> = serde_json::from_slice::<serde_json::Value>(&published.stdout)
        .unwrap()["published"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), ORDERS);

    let done = || -> HashSet<String> {
        apps.iter()
            .flat_map(|a| finished(a.path()))
            .map(|(c, _)| c)
            .collect()
    };
    let start = Instant::now();
    while done().len() < ORDERS / 3 {
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut victim = hosts[1].take().unwrap();
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    let at_kill = done().len();
    let by_victim = finished(apps[1].path()).len();
    assert!(
        at_kill < ORDERS,
        "killed half-way ({at_kill} of {ORDERS} done)"
    );

    // What the dead host held unacknowledged goes to the others after the
    // consumers' ack wait (30 s).
    while done().len() < ORDERS {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "{} of {ORDERS} cascades completed",
            done().len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let completed = done();
    assert!(
        completed.is_subset(&ids) && completed.len() == ORDERS,
        "every published cascade completed, and nothing else"
    );

    // Stop the survivors; each prints what its steps handled.
    let mut handled: Vec<BTreeMap<String, u64>> = Vec::new();
    for (i, h) in hosts.iter_mut().enumerate() {
        let Some(child) = h.take() else { continue };
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "host {i} stopped cleanly");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["dlq"], serde_json::json!([]), "nothing dead-lettered");
        handled.push(
            v["steps"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, s)| (k.clone(), s["handled"].as_u64().unwrap()))
                .collect(),
        );
    }
    for s in ORDER_STEPS.iter().chain(["sink"].iter()) {
        let per_host: Vec<u64> = handled.iter().map(|h| h[*s]).collect();
        assert!(
            per_host.iter().all(|n| *n > 0),
            "step {s}: every live host did some of the work ({per_host:?})"
        );
        assert!(
            per_host.iter().sum::<u64>() >= (ORDERS - at_kill) as u64,
            "step {s}: the survivors handled what was left ({per_host:?})"
        );
    }
    let dups: usize = apps
        .iter()
        .flat_map(|a| finished(a.path()))
        .map(|(c, _)| c)
        .collect::<Vec<_>>()
        .len()
        - ORDERS;
    eprintln!(
        "{ORDERS} cascades on {HOSTS} hosts: {at_kill} done when host 1 was killed (it had finished {by_victim}); \
         all done after {:.1} s; sink work per survivor {:?}; {dups} cascades finished by two hosts (same event id)",
        start.elapsed().as_secs_f64(),
        handled.iter().map(|h| h["sink"]).collect::<Vec<_>>()
    );
}

const RUNS: usize = 200;
const FLOW: &str = "input = \"order.placed\"\n\n[steps.validate]\nstep = \"order-validate\"\n\n[steps.charge]\nstep = \"payment-charge\"\ninput = \"validate\"\n\n[steps.ship]\nstep = \"shipping-dispatch\"\ninput = \"charge\"\n";

/// A client for the host serving `dir`, once its API is up.
fn client(dir: &Path) -> troupe::client::Client {
    let start = Instant::now();
    loop {
        if let Ok(c) = troupe::client::Client::for_app(dir, None)
            && c.get("/v1/openapi.json").is_ok()
        {
            return c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the host's API did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn flows_move_to_another_host_when_the_one_driving_them_dies() {
    let manifest = String::from("name = \"shop\"\n")
        + &plugin_steps(
            &["order-validate", "payment-charge", "shipping-dispatch"],
            "",
        );
    let first = TestApp::on(Backend::Nats, &manifest);
    let second = TestApp::beside(&first, &manifest);
    for a in [&first, &second] {
        std::fs::create_dir(a.path().join("flows")).unwrap();
        std::fs::write(a.path().join("flows/chain.toml"), FLOW).unwrap();
    }
    let broker = first.broker().to_string();
    let mut leader = host(first.path(), &broker);
    let a = client(first.path());
    let mut standby = host(second.path(), &broker);
    let b = client(second.path());

    let order = |i: usize| {
        serde_json::json!({"order_id": format!("o-{i}"), "customer": "c",
            "lines": [{"sku": "tea", "qty": 1, "price_cents": 100}]})
    };
    let refused = b.start("chain", &order(0)).unwrap_err().to_string();
    assert!(refused.contains("stands by"), "{refused}");
    let ids: Vec<String> = (0..RUNS)
        .map(|i| a.start("chain", &order(i)).expect("the leader starts runs"))
        .collect();
    leader.kill().unwrap(); // SIGKILL, with runs in flight
    leader.wait().unwrap();
    let killed = Instant::now();

    // The standby takes the lease once the dead host's runs out, and the
    // runs the dead host held replies for finish once those come back.
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for id in &ids {
        let run = b
            .wait(id, Duration::from_secs(120), |_| {})
            .expect("the run's status, from the other host");
        *states
            .entry(run["state"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(states.get("completed"), Some(&RUNS), "{states:?}");
    let took = killed.elapsed();
    // The new holder starts runs of its own.
    let id = b
        .start("chain", &order(RUNS))
        .expect("the new leader starts runs");
    let run = b.wait(&id, Duration::from_secs(30), |_| {}).unwrap();
    assert_eq!(run["state"], "completed", "{run:#}");
    eprintln!(
        "{RUNS} runs started on the lease holder, which was killed at once; all completed on the other host {:.1} s later",
        took.as_secs_f64()
    );
    Command::new("kill")
        .args(["-TERM", &standby.id().to_string()])
        .status()
        .unwrap();
    standby.wait().unwrap();
}
