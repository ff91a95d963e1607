//! A flow step's timeout runs from when a worker starts its command
//! (Temporal's start-to-close), with a separate bound on the time the
//! command may wait in the queue first (`queue_timeout_ms`). A burst of
//! 600 runs once made the slow `charge` step's commands wait past the
//! flow step's 10 s: attempt 2 was sent while attempt 1 still waited, and
//! both ran (166 runs charged twice).

use std::time::{Duration, Instant};

use serde_json::json;
use troupe_tests::{ApiHost, TestApp};

use super::state::{committed, keeper, op};

/// Runs started at once on a step that handles one command at a time.
const BURST: usize = 40;

/// A flow whose one step takes 100 ms a command, with `extra` flow-step
/// settings, and a burst of runs started at once: how many times the step
/// ran for each run, and how each run ended.
fn burst(extra: &str) -> (Vec<u64>, Vec<String>) {
    let app = TestApp::new(&keeper(
        "keeper",
        "main",
        "choreography = false\nconcurrency = 1",
    ));
    std::fs::create_dir(app.path().join("flows")).unwrap();
    std::fs::write(
        app.path().join("flows/slow.toml"),
        format!(
            "input = \"test.kv\"\ntimeout_ms = 120000\n[steps.slow]\nstep = \"keeper\"\n\
             timeout_ms = 500\nretry = {{ max_attempts = 3, backoff_ms = 10 }}\n{extra}"
        ),
    )
    .unwrap();
    let api = ApiHost::start(&app);
    // Each run counts its own executions, under a key of its own.
    let ids: Vec<String> = (0..BURST)
        .map(|i| {
            let input =
                json!({"main": {"ops": [op("incr", "", &format!("ran-{i}"))], "sleep_ms": 100}});
            api.client.start("slow", &input).expect("started")
        })
        .collect();
    let start = Instant::now();
    let states = loop {
        let states: Vec<String> = ids
            .iter()
            .map(|id| {
                let s = api.client.get(&format!("/v1/runs/{id}")).expect("a status");
                s["state"].as_str().unwrap_or_default().to_string()
            })
            .collect();
        if states.iter().all(|s| s != "running") {
            break states;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "runs still running"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // What ran is committed (a superseded attempt's writes stand).
    std::thread::sleep(Duration::from_millis(500));
    let host = api.host.as_ref().unwrap();
    let ran = (0..BURST)
        .map(|i| {
            api.block_on(committed(host, "keeper", &format!("ran-{i}")))
                .map_or(0, |v| v.parse().unwrap())
        })
        .collect();
    (ran, states)
}

#[test]
fn a_burst_waits_in_the_queue_and_runs_each_command_once() {
    // 40 commands of 100 ms each, one at a time: the last waits ~4 s in
    // the queue, eight times its step's 500 ms. Each runs once, and every
    // run completes.
    let (ran, states) = burst("");
    assert!(states.iter().all(|s| s == "completed"), "{states:?}");
    assert!(
        ran.iter().all(|&n| n == 1),
        "each run's command ran once: {ran:?}"
    );
}

#[test]
fn a_command_past_its_queue_bound_is_not_run() {
    // A queue bound of 1 s: the commands still waiting then are not run
    // (their attempts fail as timeouts, and are retried while the run may),
    // and none runs twice.
    let (ran, states) = burst("queue_timeout_ms = 1000\n");
    assert!(
        states.iter().any(|s| s != "completed"),
        "every run completed: {states:?}"
    );
    for (n, state) in ran.iter().zip(&states) {
        let once = if state == "completed" { 1 } else { 0 };
        assert_eq!(
            *n, once,
            "a {state} run's command ran {n} times: {ran:?} {states:?}"
        );
    }
}
