//! Runs across a SIGKILL of the host (`troupe run` as a child process):
//! what was acknowledged completes, each step's effect happens under one
//! command id, timings and attempts come out right however long the host
//! stayed down, and a producer that retries a start it got no answer to
//! starts one run, not two.

use std::time::Duration;

use serde_json::Value;
use troupe_tests::{Backend, TestApp, guest, plugin_steps, step};

use super::orchestration::{FULFIL, app, order, state};

/// A `troupe run` child process; SIGKILLed when dropped, so a failed
/// assertion does not leave a host running.
struct Child(std::process::Child);

impl Child {
    /// SIGKILL, and reap.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run `troupe run` on `app` as a child process (to SIGKILL it), and a
/// client of its API.
fn spawn_host(app: &TestApp) -> (Child, troupe::client::Client) {
    use std::process::{Command, Stdio};
    let api = app.path().join(".troupe/api.json");
    let _ = std::fs::remove_file(&api);
    let child = Child(
        Command::new(troupe_tests::troupe_bin())
            .args([
                "run",
                app.path().to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .env(
                "TROUPE_LOG",
                std::env::var("TEST_HOST_LOG").unwrap_or("error".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = std::time::Instant::now();
    while !api.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the host did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    (
        child,
        troupe::client::Client::for_app(app.path(), None).unwrap(),
    )
}

/// On the embedded broker a reply-driven transition does not rewrite the
/// run's record (the reply is in the log): after a SIGKILL the host must
/// rebuild those transitions from the replies. If it did not, the steps
/// that completed before the kill would show `dispatched` again and their
/// commands (deduplicated by id) would never be answered.
#[test]
fn a_restart_rebuilds_runs_from_their_replies() {
    // ship spins ("slow") until its 1.5 s timeout; no retry: the run
    // fails there and undoes charge and reserve.
    let flow = FULFIL
        .replace("timeout_ms = 300", "timeout_ms = 1500")
        .replace(
            "retry = { max_attempts = 3, backoff_ms = 20 }",
            "retry = { max_attempts = 1 }",
        );
    let app = app(Backend::Embedded, &[("fulfil", &flow)]);
    let (mut host, client) = spawn_host(&app);
    let id = client.start("fulfil", &order("o-9", "slow")).unwrap();
    let t = std::time::Instant::now();
    let before = loop {
        let run = client.status(&id).unwrap();
        if state(&run, "ship") == "dispatched" {
            break run;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{run:#}");
        std::thread::sleep(Duration::from_millis(10));
    };
    host.kill(); // SIGKILL while ship runs
    for s in ["validate", "reserve", "charge"] {
        assert_eq!(state(&before, s), "completed", "{before:#}");
    }
    let (mut host, client) = spawn_host(&app);
    let after = client.status(&id).unwrap();
    for s in ["validate", "reserve", "charge"] {
        assert!(
            matches!(state(&after, s), "completed" | "compensated"),
            "{s} after the restart: {after:#}"
        );
        assert_eq!(after["steps"][s]["attempts"], 1, "{s}: {after:#}");
        assert_eq!(
            after["steps"][s]["output"], before["steps"][s]["output"],
            "{s}"
        );
    }
    let run = client.wait(&id, Duration::from_secs(30), |_| {}).unwrap();
    host.kill();
    assert_eq!(run["state"], "compensated", "{run:#}");
    assert_eq!(state(&run, "ship"), "timed_out", "{run:#}");
    assert_eq!(run["steps"]["validate"]["attempts"], 1);
    // Timings survive the restart: every step that finished took less than
    // the whole test, whether it finished before the kill or after.
    for (s, rec) in run["steps"].as_object().unwrap() {
        if let Some(ms) = rec["duration_ms"].as_u64() {
            assert!(ms < 60_000, "{s} took {ms} ms: {run:#}");
        }
    }
    // Undone in reverse order of completion, as the replayed replies say
    // (when the two finished in the same millisecond, either order is).
    let done = |s: &str| before["steps"][s]["finished"].as_str().unwrap().to_string();
    let (first, last) = if done("reserve") < done("charge") {
        ("reserve", "charge")
    } else {
        ("charge", "reserve")
    };
    let undo = |s: &str, at: &str| {
        run["steps"][format!("{s}~undo")][at]
            .as_str()
            .unwrap_or_else(|| panic!("{s} not undone: {run:#}"))
            .to_string()
    };
    if done(first) != done(last) {
        assert!(undo(last, "finished") <= undo(first, "started"), "{run:#}");
    }
}

/// The app of the SIGKILL tests: flow `crash` (validate, charge, ship,
/// then `record` with the `sink` guest, which appends a line to
/// `out/<run id>.<command id>` per handling), every flow step with `extra`.
/// One worker per step: starts outpace the steps, so runs queue up and
/// many are in flight when the host dies.
fn crash_app(extra: &str) -> TestApp {
    let mut m = String::from("name = \"shop\"\n");
    m += &plugin_steps(
        &["order-validate", "payment-charge", "shipping-dispatch"],
        "concurrency = 1",
    );
    m += &step(
        "sink",
        &guest("sink"),
        "concurrency = 1\ngrants.dirs = [{ host = \"out\", guest = \"/out\", write = true }]",
    );
    let app = TestApp::new(&m);
    std::fs::create_dir(app.path().join("out")).unwrap();
    std::fs::create_dir(app.path().join("flows")).unwrap();
    let mut flow = String::from("input = \"order.placed\"\n");
    for (id, step, input) in [
        ("validate", "order-validate", None),
        ("charge", "payment-charge", Some("validate")),
        ("ship", "shipping-dispatch", Some("charge")),
        ("record", "sink", Some("ship")),
    ] {
        flow += &format!("\n[steps.{id}]\nstep = \"{step}\"\n{extra}\n");
        if let Some(input) = input {
            flow += &format!("input = \"{input}\"\n");
        }
    }
    std::fs::write(app.path().join("flows/crash.toml"), flow).unwrap();
    app
}

/// What the `sink` recorded: per run, the number of lines (handlings) of
/// each command it got, and the order id it saw.
fn sink_effects(app: &TestApp) -> std::collections::HashMap<String, Vec<(usize, String)>> {
    let mut files: std::collections::HashMap<String, Vec<(usize, String)>> = Default::default();
    for f in std::fs::read_dir(app.path().join("out")).unwrap() {
        let name = f.unwrap().file_name().into_string().unwrap();
        let (run, _command) = name.split_once('.').unwrap();
        let text = std::fs::read_to_string(app.path().join("out").join(&name)).unwrap();
        // A SIGKILL can leave a file empty, or its last line cut short.
        let order = text
            .lines()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .and_then(|v| v["order_id"].as_str().map(str::to_string))
            .unwrap_or_default();
        files
            .entry(run.to_string())
            .or_default()
            .push((text.lines().count(), order));
    }
    files
}

/// Producers start `runs` runs of `crash` (orders `PREFIX-i`) from
/// `threads` threads until all are started or the host stops answering;
/// the ids acknowledged so far, and the producers to join.
fn produce(
    client: &troupe::client::Client,
    prefix: &'static str,
    runs: usize,
    threads: usize,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    Vec<std::thread::JoinHandle<()>>,
) {
    let acked: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let producers = (0..threads)
        .map(|p| {
            let (client, acked) = (client.clone(), acked.clone());
            std::thread::spawn(move || {
                for i in (p..runs).step_by(threads) {
                    match client.start("crash", &order(&format!("{prefix}-{i}"), "ada")) {
                        Ok(id) => acked.lock().unwrap().push(id),
                        Err(_) => return, // the host is gone: not acknowledged
                    }
                }
            })
        })
        .collect();
    (acked, producers)
}

/// SIGKILL the host with a few hundred runs in flight, start it again, and
/// every run the API acknowledged reaches a final state; the last step's
/// effects are keyed by command id, so a duplicate is recognisable.
#[test]
fn runs_survive_sigkill() {
    use std::collections::{HashMap, HashSet};

    const RUNS: usize = 1000;
    let app = crash_app("");

    let (mut host, client) = spawn_host(&app);
    let (acked, producers) = produce(&client, "c", RUNS, 8);
    while acked.lock().unwrap().len() < RUNS / 2 {
        std::thread::sleep(Duration::from_millis(2));
    }
    host.kill(); // SIGKILL, runs in flight
    let done_at_kill = std::fs::read_dir(app.path().join("out")).unwrap().count();
    for p in producers {
        p.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let (mut host, client) = spawn_host(&app);
    let mut states: HashMap<String, String> = HashMap::new();
    for id in &acked {
        let run = client.wait(id, Duration::from_secs(60), |_| {}).unwrap();
        states.insert(id.clone(), run["state"].as_str().unwrap().to_string());
    }
    host.kill();
    let not_done: Vec<_> = states.iter().filter(|(_, s)| *s != "completed").collect();
    assert!(
        not_done.is_empty(),
        "{} of {} acknowledged runs did not complete: {:?}",
        not_done.len(),
        acked.len(),
        &not_done[..not_done.len().min(3)]
    );
    // One effect file per run (one command id), lines = handlings.
    let files = sink_effects(&app);
    let acked_set: HashSet<&String> = acked.iter().collect();
    for id in &acked {
        assert_eq!(
            files.get(id).map(Vec::len),
            Some(1),
            "run {id}: one command to the last step"
        );
    }
    let dups = files.values().flatten().filter(|(n, _)| *n > 1).count();
    assert!(
        done_at_kill < acked.len(),
        "runs were in flight at the kill"
    );
    eprintln!(
        "{} runs acknowledged, {done_at_kill} finished before SIGKILL, all completed after restart; {dups} last-step commands handled twice (same command id); {} runs started by unacknowledged requests",
        acked.len(),
        files.keys().filter(|k| !acked_set.contains(k)).count()
    );
}

/// Start `flow` with `input` under `Idempotency-Key: key` on the host at
/// `base` (plain HTTP, as any producer would): the status and the run id,
/// or `None` when no answer came (the host is down, or died mid-request).
fn start_keyed(
    base: &str,
    token: &str,
    flow: &str,
    input: &Value,
    key: &str,
) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut res = agent
        .post(&format!("{base}/v1/flows/{flow}/runs"))
        .header("Authorization", &format!("Bearer {token}"))
        .header("Idempotency-Key", key)
        .send_json(input)
        .ok()?;
    let status = res.status().as_u16();
    let body: Value = res.body_mut().read_json().unwrap_or(Value::Null);
    Some((
        status,
        body["run_id"].as_str().unwrap_or_default().to_string(),
    ))
}

/// The host's API address and token, as `troupe run` wrote them.
fn api_of(app: &TestApp) -> (String, String) {
    let state = app.path().join(".troupe");
    let api: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("api.json")).unwrap()).unwrap();
    let token = troupe::client::token_for(&state, false).unwrap();
    (api["url"].as_str().unwrap().to_string(), token)
}

/// A host that stays down longer than a step's timeout (2 s; it stays down
/// 3 s) does not count the time it was down against the steps in flight:
/// every acknowledged run completes with every step handled in one
/// attempt, and the last step's effect happens under one command id.
#[test]
fn a_host_down_longer_than_a_step_timeout_runs_each_step_once() {
    const RUNS: usize = 120;
    let app = crash_app("timeout_ms = 2000");
    let (mut host, client) = spawn_host(&app);
    let (acked, producers) = produce(&client, "d", RUNS, 4);
    while acked.lock().unwrap().len() < RUNS / 2 {
        std::thread::sleep(Duration::from_millis(2));
    }
    host.kill();
    for p in producers {
        p.join().unwrap();
    }
    let in_flight = acked.lock().unwrap().len() - sink_effects(&app).len();
    std::thread::sleep(Duration::from_secs(3));
    let acked = acked.lock().unwrap().clone();
    let (mut host, client) = spawn_host(&app);
    let (mut twice, mut long) = (Vec::new(), Vec::new());
    for id in &acked {
        let run = client.wait(id, Duration::from_secs(60), |_| {}).unwrap();
        assert_eq!(run["state"], "completed", "{run:#}");
        for (s, rec) in run["steps"].as_object().unwrap() {
            if rec["attempts"] != 1 {
                twice.push(format!("{id} {s}: {}", rec["errors"]));
            }
            let ms = rec["duration_ms"].as_u64().unwrap();
            if ms > 60_000 {
                long.push(format!("{id} {s}: {ms} ms"));
            }
        }
    }
    host.kill();
    assert!(in_flight > 0, "runs were in flight at the kill");
    assert!(
        twice.is_empty(),
        "{} steps ran more than one attempt: {:?}",
        twice.len(),
        &twice[..twice.len().min(3)]
    );
    assert!(
        long.is_empty(),
        "{} steps took too long: {long:?}",
        long.len()
    );
    let effects = sink_effects(&app);
    for id in &acked {
        assert_eq!(
            effects.get(id).map(Vec::len),
            Some(1),
            "run {id}: one command to the last step"
        );
    }
}

/// Producers that retry every start they got no answer to, with the same
/// `Idempotency-Key`, across a SIGKILL of the host: exactly one run per
/// key, and every answer for a key names that run.
#[test]
fn starts_retried_across_a_sigkill_start_one_run_per_key() {
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex, RwLock};
    const RUNS: usize = 400;
    let app = crash_app("");
    let (mut host, _) = spawn_host(&app);
    let api = Arc::new(RwLock::new(api_of(&app)));
    let answers: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let producers: Vec<_> = (0..8)
        .map(|p| {
            let (api, answers) = (api.clone(), answers.clone());
            std::thread::spawn(move || {
                for i in (p..RUNS).step_by(8) {
                    let key = format!("k-{i}");
                    let t = std::time::Instant::now();
                    loop {
                        let (base, token) = api.read().unwrap().clone();
                        match start_keyed(&base, &token, "crash", &order(&key, "ada"), &key) {
                            Some((200 | 202, id)) => {
                                answers.lock().unwrap().push((key, id));
                                break;
                            }
                            Some((status, _)) if status != 503 => panic!("{key}: {status}"),
                            _ => {
                                assert!(t.elapsed() < Duration::from_secs(90), "{key}");
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    while answers.lock().unwrap().len() < RUNS / 3 {
        std::thread::sleep(Duration::from_millis(2));
    }
    host.kill();
    let (mut host, client) = spawn_host(&app);
    *api.write().unwrap() = api_of(&app);
    for p in producers {
        p.join().unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    assert_eq!(answers.len(), RUNS);
    for (_, id) in &answers {
        let run = client.wait(id, Duration::from_secs(60), |_| {}).unwrap();
        assert_eq!(run["state"], "completed", "{run:#}");
    }
    // Runs begun by starts that got no answer go on too: let them finish.
    std::thread::sleep(Duration::from_secs(2));
    host.kill();
    let mut runs_of: HashMap<String, HashSet<String>> = HashMap::new();
    for (run, effects) in sink_effects(&app) {
        for (_, order) in effects {
            runs_of.entry(order).or_default().insert(run.clone());
        }
    }
    let mut twice = Vec::new();
    for (key, id) in &answers {
        let runs = runs_of.get(key).cloned().unwrap_or_default();
        if runs.len() != 1 {
            twice.push(format!("{key}: {} runs", runs.len()));
        } else {
            assert!(runs.contains(id), "{key}: answered {id}, ran {runs:?}");
        }
    }
    assert!(
        twice.is_empty(),
        "{} keys started more than one run: {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
}

/// SIGTERM with runs in flight: the host stops within a bound (the HTTP
/// server, the orchestrator and the step workers, each awaited), exits 0,
/// and leaves everything settled or for redelivery: after a restart every
/// acknowledged run completes, each last step under one command id.
#[test]
fn sigterm_with_runs_in_flight_stops_in_bounded_time_and_loses_nothing() {
    const RUNS: usize = 400;
    let app = crash_app("");
    let (mut host, client) = spawn_host(&app);
    let (acked, producers) = produce(&client, "t", RUNS, 4);
    while acked.lock().unwrap().len() < RUNS / 2 {
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &host.0.id().to_string()])
        .status();
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = host.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "SIGTERM did not stop the host"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = t.elapsed();
    for p in producers {
        p.join().unwrap();
    }
    assert!(status.success(), "{status}");
    let acked = acked.lock().unwrap().clone();
    let done_at_stop = sink_effects(&app).len();
    let (mut host, client) = spawn_host(&app);
    for id in &acked {
        let run = client.wait(id, Duration::from_secs(60), |_| {}).unwrap();
        assert_eq!(run["state"], "completed", "{run:#}");
    }
    host.kill();
    let effects = sink_effects(&app);
    for id in &acked {
        assert_eq!(effects.get(id).map(Vec::len), Some(1), "run {id}");
    }
    eprintln!(
        "SIGTERM with {} runs acknowledged, {done_at_stop} done: stopped in {took:.1?}",
        acked.len()
    );
}
