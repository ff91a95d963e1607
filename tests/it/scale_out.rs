//! Several hosts of one app on NATS share the work and survive one of them
//! dying: three `troupe run` processes on the real NATS server, a few
//! thousand order cascades and a few hundred runs of a three-step flow;
//! the host that drives the flows (it holds the app's orchestrator lease)
//! is killed with SIGKILL part-way. Every cascade and every run
//! completes, none is lost, another host takes the flows over, and each
//! step's work was done by both survivors.
//!
//! A host that loses the lease (another took it) stops driving, stands
//! by, and drives again once the lease is free.
//!
//! Each host runs from a directory of its own with the same `troupe.toml`
//! (same app name, so the same consumers), and its `sink` step writes into
//! that directory: which host finished which cascade is on disk.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use troupe::client::Client;
use troupe_tests::{
    ApiHost, Backend, ORDER_STEPS, TestApp, orders_with_sink, publish_orders, troupe_bin,
};

const ORDERS: usize = 3000;
const RUNS: usize = 200;
const HOSTS: usize = 3;
/// A run's time limit is generous: a run acknowledged just before the kill
/// waits for the lease to pass (up to 8 s) and for the commands the dead
/// host held to come back (the 30 s ack wait), behind the cascades'
/// backlog; on a machine busy with other tests that passed the default
/// 60 s once (the point here is that every run completes, not how fast).
const FLOW: &str = "input = \"order.placed\"\ntimeout_ms = 150000\n\n[steps.validate]\nstep = \"order-validate\"\n\n[steps.charge]\nstep = \"payment-charge\"\ninput = \"validate\"\n\n[steps.ship]\nstep = \"shipping-dispatch\"\ninput = \"charge\"\n";

/// A host process, killed when dropped (also when the test fails).
struct HostProcess(Option<Child>);

impl Drop for HostProcess {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn host(dir: &Path, broker: &str) -> HostProcess {
    HostProcess(Some(
        Command::new(troupe_bin())
            .args(["--json", "--broker", broker, "run"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .env("TROUPE_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ))
}

/// A client for the host serving `dir`, once its API answers.
fn client(dir: &Path) -> Client {
    let start = Instant::now();
    loop {
        if let Ok(c) = Client::for_app(dir, None)
            && c.get("/v1/openapi.json").is_ok()
        {
            return c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the host's API did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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

fn order(i: usize) -> serde_json::Value {
    serde_json::json!({"order_id": format!("r-{i}"), "customer": "c",
        "lines": [{"sku": "tea", "qty": 1, "price_cents": 100}]})
}

#[test]
fn three_hosts_share_cascades_and_runs_and_survive_the_flow_driver_being_killed() {
    // Three directories with the same manifest and flow, one namespace.
    let first = TestApp::on(Backend::Nats, &orders_with_sink());
    let mut apps: Vec<TestApp> = (1..HOSTS)
        .map(|_| TestApp::beside(&first, &orders_with_sink()))
        .collect();
    apps.insert(0, first);
    let broker = apps[0].broker().to_string();
    for a in &apps {
        std::fs::create_dir(a.path().join("out")).unwrap();
        std::fs::create_dir(a.path().join("flows")).unwrap();
        std::fs::write(a.path().join("flows/chain.toml"), FLOW).unwrap();
    }
    // The first host up takes the orchestrator lease; the others stand by.
    let mut hosts: Vec<HostProcess> = vec![host(apps[0].path(), &broker)];
    client(apps[0].path()); // up, and holding the lease
    for a in &apps[1..] {
        hosts.push(host(a.path(), &broker));
    }
    let others: Vec<Client> = apps[1..].iter().map(|a| client(a.path())).collect();
    let refused = others[0].start("chain", &order(0)).unwrap_err().to_string();
    assert!(refused.contains("stands by"), "{refused}");

    // Runs are started on the lease holder (four clients at once) while
    // the orders are checked and published; the holder is killed as soon as
    // the cascades are under way. Every run it acknowledged must complete.
    let starters: Vec<_> = (0..4)
        .map(|t| {
            let c = client(apps[0].path());
            std::thread::spawn(move || {
                (t..RUNS)
                    .step_by(4)
                    .map_while(|i| c.start("chain", &order(i)).ok()) // ends at the kill
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let ids = publish_orders(apps[0].path(), ORDERS, &["--broker", &broker]);
    let done = || -> HashSet<String> {
        apps.iter()
            .flat_map(|a| finished(a.path()))
            .map(|(c, _)| c)
            .collect()
    };
    let start = Instant::now();
    while done().len() < ORDERS / 10 {
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut victim = hosts[0].0.take().unwrap();
    victim.kill().unwrap(); // SIGKILL the flow driver
    victim.wait().unwrap();
    let killed = Instant::now();
    let at_kill = done().len();
    let by_victim = finished(apps[0].path()).len();
    let runs: Vec<String> = starters
        .into_iter()
        .flat_map(|s| s.join().unwrap())
        .collect();
    assert!(!runs.is_empty(), "runs were started before the kill");
    let killed_at = troupe::event::now_rfc3339();

    // What the dead host held unacknowledged goes to the others after the
    // consumers' ack wait (30 s); its lease runs out within 6 s.
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    let mut after_kill = 0;
    let deadline = Instant::now() + Duration::from_secs(150);
    for id in &runs {
        let left = deadline.saturating_duration_since(Instant::now());
        let run = others[0]
            .wait(id, left, |_| {})
            .expect("the run's status, from a surviving host");
        if run["finished"]
            .as_str()
            .is_some_and(|f| f > killed_at.as_str())
        {
            after_kill += 1;
        }
        *states
            .entry(run["state"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        states.get("completed"),
        Some(&runs.len()),
        "every acknowledged run completed: {states:?}"
    );
    let runs_done = killed.elapsed();
    assert!(
        at_kill < ORDERS || after_kill > 0,
        "the host died with work in flight ({at_kill} of {ORDERS} cascades done, {after_kill} runs unfinished)"
    );
    while done().len() < ORDERS {
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "{} of {ORDERS} cascades completed",
            done().len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let cascades_done = killed.elapsed();
    let completed = done();
    assert!(
        completed.is_subset(&ids) && completed.len() == ORDERS,
        "every published cascade completed, and nothing else"
    );
    // A survivor now drives the flows: it starts runs of its own.
    let after = others
        .iter()
        .find_map(|c| c.start("chain", &order(RUNS)).ok())
        .expect("a surviving host took the flows over");

    // Stop the survivors; each prints what its steps handled.
    let mut handled: Vec<BTreeMap<String, u64>> = Vec::new();
    let waited = others.iter().any(|c| {
        c.wait(&after, Duration::from_secs(30), |_| {})
            .is_ok_and(|r| r["state"] == "completed")
    });
    assert!(waited, "the run started after the takeover completed");
    for (i, h) in hosts.iter_mut().enumerate() {
        let Some(child) = h.0.take() else { continue };
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
            "step {s}: every surviving host did some of the work ({per_host:?})"
        );
    }
    let twice = apps.iter().flat_map(|a| finished(a.path())).count() - ORDERS;
    eprintln!(
        "{ORDERS} cascades and {} runs on {HOSTS} hosts: the flow driver was killed with {at_kill} cascades done \
         (it had finished {by_victim}) and {after_kill} runs unfinished; every run completed {:.1} s and every cascade {:.1} s after the kill; \
         sink work per survivor {:?}; {twice} cascades finished by two hosts (same event id)",
        runs.len(),
        runs_done.as_secs_f64(),
        cascades_done.as_secs_f64(),
        handled.iter().map(|h| h["sink"]).collect::<Vec<_>>()
    );
}

#[test]
fn a_host_that_loses_the_lease_stands_by_then_drives_again() {
    use crate::orchestration::{FULFIL, app, order};
    let app = app(Backend::Nats, &[("fulfil", FULFIL)]);
    let h = ApiHost::start(&app);
    let standing = || h.client.get("/readyz").expect("ready")["orchestrator"].clone();
    assert_eq!(standing()["driving"], true, "{}", standing());
    assert_eq!(h.run("fulfil", order("l-1", "ada"))["state"], "completed");

    // Another holder takes the lease for 8 s (as a host whose renewal
    // came first would).
    let bucket =
        troupe::broker::nats::Names::new(app.namespace.as_ref().unwrap(), "shop").state_bucket();
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 8_000;
    h.block_on(async {
        let client = async_nats::connect(troupe_tests::nats_server())
            .await
            .unwrap();
        let kv = async_nats::jetstream::new(client)
            .get_key_value(bucket)
            .await
            .unwrap();
        let lease = serde_json::json!({"holder": "another host", "until_ms": until});
        kv.put("lease/orchestrator", lease.to_string().into())
            .await
            .unwrap();
    });
    // At its next renewal the host finds the lease taken: it stops driving
    // and stands by, still ready (it runs its steps).
    let start = Instant::now();
    while standing()["driving"] == true {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still driving after losing the lease: {}",
            standing()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(standing()["lost"], 1, "{}", standing());
    let refused = h.client.start("fulfil", &order("l-2", "ada")).unwrap_err();
    assert!(refused.to_string().contains("stands by"), "{refused}");
    let metrics = h.client.get("/metrics").unwrap();
    let metrics = metrics.as_str().unwrap_or_default();
    assert!(
        metrics.contains("troupe_orchestrator_driving 0")
            && metrics.contains("troupe_orchestrator_lease_lost_total 1"),
        "{metrics}"
    );

    // Once the other holder's lease runs out, this host takes it back and
    // drives again.
    while standing()["driving"] == false {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "did not take the lease back: {}",
            standing()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(h.run("fulfil", order("l-3", "ada"))["state"], "completed");
}
