//! Flows that wait, fan out and recur, with the host (`troupe run` as a
//! child process) killed while they do, on each broker, against the order
//! example: sleeping runs are parked in the store and wake once; a
//! for-each step killed half way sends each element once per attempt; a
//! schedule's ticks each start one run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use troupe_tests::process::{HostProcess, troupe_check};
use troupe_tests::{
    ApiHost, Backend, TestApp, example_app_scheduled, on_each_broker_blocking, wait_for,
};

on_each_broker_blocking!(
    sleeping_runs_are_parked_and_wake_once_across_a_sigkill,
    a_for_each_killed_half_way_sends_each_element_once_per_attempt,
    a_schedule_starts_one_run_per_tick_across_a_sigkill,
);

const STARTUP: Duration = Duration::from_secs(120);
/// How long the `nap` flow sleeps: long enough for a restart in between.
const NAP_MS: u64 = 20_000;

/// A flow that validates an order, sleeps, then picks each of its lines.
fn nap() -> String {
    format!(
        "input = \"order.placed\"\ntimeout_ms = 120000\n\
         [steps.validate]\nstep = \"order-validate\"\n\
         [steps.nap]\nsleep_ms = {NAP_MS}\nafter = [\"validate\"]\n\
         [steps.pick]\nstep = \"line-pick\"\nfor_each = \"validate.lines\"\nafter = [\"nap\"]\n"
    )
}

/// A flow that picks each line of an order, two at a time.
const MANY: &str = "input = \"order.placed\"\ntimeout_ms = 120000\n\
    [steps.validate]\nstep = \"order-validate\"\n\
    [steps.pick]\nstep = \"line-pick\"\nfor_each = \"validate.lines\"\nmax_parallel = 2\n";

/// The order example with its flows and schedules, and `flows`.
fn app(b: Backend, extra: &str, flows: &[(&str, &str)]) -> TestApp {
    let app = example_app_scheduled(b, "orders", extra);
    for (name, text) in flows {
        std::fs::write(app.path().join("flows").join(format!("{name}.toml")), text).unwrap();
    }
    app
}

fn order(i: usize, lines: usize) -> Value {
    let lines: Vec<Value> = (0..lines)
        .map(|n| json!({"sku": format!("sku-{n}"), "qty": 1 + n % 3, "price_cents": 100}))
        .collect();
    json!({"order_id": format!("o-{i}"), "customer": "ada", "lines": lines})
}

fn ended(host: &HostProcess, ids: &[String], within: Duration) -> Vec<Value> {
    ids.iter()
        .map(|id| {
            wait_for(within, "runs ended", || {
                let run = host.client.status(id).ok()?;
                (!matches!(run["state"].as_str(), Some("running" | "compensating"))).then_some(run)
            })
        })
        .collect()
}

/// A gauge of the host's `/metrics`.
fn gauge(host: &HostProcess, name: &str) -> u64 {
    let m = host.client.get("/metrics").unwrap();
    let text = m.as_str().expect("metrics are text");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in {text}"))
}

/// Schedule `name` as `GET /v1/schedules` shows it.
fn schedule(host: &HostProcess, name: &str) -> Value {
    let all = host.client.get("/v1/schedules").unwrap();
    all["schedules"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("schedule {name} in {all}"))
}

/// The commands the orchestrator sent for run `id`, by flow step and
/// attempt: their ids (as the broker kept them: once each).
fn commands(host: &HostProcess, id: &str) -> BTreeMap<(String, String), BTreeSet<String>> {
    let trace = host.client.get(&format!("/v1/traces/{id}")).unwrap();
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for e in trace.as_array().into_iter().flatten() {
        // A command: addressed to a step (a reply, to the orchestrator,
        // is of a `troupe.` type).
        let reply = e["type"].as_str().is_none_or(|t| t.starts_with("troupe."));
        if e["troupeto"].is_string()
            && !reply
            && let (Some(step), Some(attempt)) =
                (e["troupestep"].as_str(), e["troupeattempt"].as_str())
        {
            out.entry((step.to_string(), attempt.to_string()))
                .or_default()
                .insert(e["id"].as_str().unwrap_or_default().to_string());
        }
    }
    out
}

fn sleeping_runs_are_parked_and_wake_once_across_a_sigkill(b: Backend) {
    let app = app(b, "", &[("nap", &nap())]);
    let host = HostProcess::start(&app, &[], STARTUP);
    let ids: Vec<String> = (0..12)
        .map(|i| host.client.start("nap", &order(i, 2)).unwrap())
        .collect();
    // All asleep, and let go of: parked in the store.
    for id in &ids {
        wait_for(Duration::from_secs(30), "the run sleeps", || {
            let run = host.client.status(id).ok()?;
            (run["steps"]["nap"]["state"] == "sleeping").then_some(())
        });
    }
    wait_for(Duration::from_secs(10), "the sleeping runs parked", || {
        (gauge(&host, "troupe_runs_parked") == 12).then_some(())
    });
    assert_eq!(gauge(&host, "troupe_runs_active"), 0);
    // Its status comes from the store, with its wake-up time.
    let run = host.client.status(&ids[0]).unwrap();
    assert_eq!(run["state"], "running", "{run:#}");
    assert!(run["steps"]["nap"]["wakes"].is_string(), "{run:#}");
    drop(host); // SIGKILL while they sleep
    let host = HostProcess::start(&app, &[], STARTUP);
    // Taken up parked, not held (on NATS, once the lease of the host
    // killed has run out); a cancel reaches one of them.
    wait_for(Duration::from_secs(30), "the runs taken up parked", || {
        (gauge(&host, "troupe_runs_parked") == 12).then_some(())
    });
    assert_eq!(gauge(&host, "troupe_runs_active"), 0);
    let (status, v) = host
        .client
        .post(
            &format!("/v1/runs/{}/cancel", ids[0]),
            Some(&json!({"by": "ops"})),
        )
        .unwrap();
    assert!(status == 200 || status == 202, "{status} {v}");
    let runs = ended(&host, &ids, Duration::from_secs(120));
    assert_eq!(runs[0]["state"], "cancelled", "{:#}", runs[0]);
    assert_eq!(runs[0]["steps"]["nap"]["state"], "cancelled");
    for (id, run) in ids.iter().zip(&runs).skip(1) {
        assert_eq!(run["state"], "completed", "{run:#}");
        let nap = &run["steps"]["nap"];
        assert!(nap["duration_ms"].as_u64().unwrap() >= NAP_MS, "{nap}");
        // Woken once: each element was sent once, as its first attempt.
        let sent = commands(&host, id);
        for i in 0..2 {
            let element = (format!("pick[{i}]"), "1".to_string());
            assert_eq!(
                sent.get(&element).map(BTreeSet::len),
                Some(1),
                "{id}: {sent:?}"
            );
        }
        assert_eq!(sent.len(), 3, "validate and two lines: {sent:?}");
    }
    assert_eq!(gauge(&host, "troupe_runs_parked"), 0);
}

fn a_for_each_killed_half_way_sends_each_element_once_per_attempt(b: Backend) {
    const LINES: usize = 120;
    let app = app(b, "", &[("many", MANY)]);
    let host = HostProcess::start(&app, &[], STARTUP);
    let ids: Vec<String> = (0..3)
        .map(|i| host.client.start("many", &order(i, LINES)).unwrap())
        .collect();
    wait_for(
        Duration::from_secs(60),
        "a third of the lines picked",
        || {
            let run = host.client.status(&ids[0]).ok()?;
            (run["steps"]["pick"]["elements"]["settled"].as_u64()? >= (LINES / 3) as u64)
                .then_some(())
        },
    );
    drop(host); // SIGKILL, elements in flight
    let host = HostProcess::start(&app, &[], STARTUP);
    for (id, run) in ids.iter().zip(ended(&host, &ids, Duration::from_secs(180))) {
        assert_eq!(run["state"], "completed", "{run:#}");
        let pick = &run["steps"]["pick"];
        assert_eq!(
            pick["elements"],
            json!({"total": LINES, "sent": LINES, "settled": LINES, "failed": 0})
        );
        let out = pick["output"].as_array().expect("an array of outputs");
        assert_eq!(out.len(), LINES);
        for (i, o) in out.iter().enumerate() {
            assert_eq!(o["sku"], format!("sku-{i}"), "in the input's order: {o}");
        }
        // One command per element and attempt, however often it was sent.
        let sent = commands(&host, id);
        for i in 0..LINES {
            let step = format!("pick[{i}]");
            let attempts: Vec<_> = sent.iter().filter(|((s, _), _)| *s == step).collect();
            assert!(!attempts.is_empty(), "{step} was sent");
            for (_, ids) in attempts {
                assert_eq!(ids.len(), 1, "{step}: {ids:?}");
            }
        }
    }
}

fn a_schedule_starts_one_run_per_tick_across_a_sigkill(b: Backend) {
    let extra = "[schedules.often]\nflow = \"audit\"\nevery = \"2s\"\n\
                 input = { skus = [\"tea\"], below = 3 }\noverlap = \"allow\"\n";
    let app = app(b, extra, &[]);
    let host = HostProcess::start(&app, &[], STARTUP);
    // This schedule's runs (the example's own stock-audit schedule starts
    // runs of the same flow every 10 s: not paused here, not counted).
    let runs_of = |host: &HostProcess| -> Vec<Value> {
        let page = host.client.get("/v1/runs?flow=audit&limit=500").unwrap();
        let all = page["runs"].as_array().cloned().unwrap_or_default();
        all.into_iter()
            .filter(|r| {
                r["key"]
                    .as_str()
                    .is_some_and(|k| k.starts_with("schedule:often:"))
            })
            .collect()
    };
    wait_for(Duration::from_secs(30), "three ticks", || {
        (runs_of(&host)
            .iter()
            .filter(|r| {
                r["key"]
                    .as_str()
                    .is_some_and(|k| k.starts_with("schedule:often:"))
            })
            .count()
            >= 3)
            .then_some(())
    });
    drop(host); // SIGKILL across the ticks
    std::thread::sleep(Duration::from_secs(3));
    let host = HostProcess::start(&app, &[], STARTUP);
    let before = runs_of(&host).len();
    wait_for(Duration::from_secs(30), "three more ticks", || {
        (runs_of(&host).len() >= before + 3).then_some(())
    });
    // Paused: no tick starts a run; a trigger does.
    let (status, v) = host
        .client
        .post(
            "/v1/schedules/often/pause",
            Some(&json!({"by": "ops", "reason": "maintenance"})),
        )
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["paused"].clone(), v["paused_by"].clone()),
        (json!(true), json!("ops"))
    );
    // A tick decided just before the pause may still be starting its run.
    std::thread::sleep(Duration::from_secs(1));
    let paused_at = runs_of(&host).len();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        runs_of(&host).len(),
        paused_at,
        "nothing started while paused"
    );
    let (status, v) = host
        .client
        .post("/v1/schedules/often/trigger", None)
        .unwrap();
    assert_eq!(status, 202, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    let often = schedule(&host, "often");
    assert_eq!(often["paused"], true, "{often:#}");
    assert_eq!(often["next"], json!([]), "no next tick while paused");
    host.client
        .post("/v1/schedules/often/resume", Some(&json!({"by": "ops"})))
        .unwrap();
    ended(&host, &[run], Duration::from_secs(30));
    wait_for(Duration::from_secs(30), "ticks again", || {
        (runs_of(&host).len() >= paused_at + 3).then_some(())
    });
    // Each tick started one run: no key twice, every tick on the 2 s grid.
    let mut ticks = BTreeSet::new();
    for r in runs_of(&host) {
        let Some(key) = r["key"].as_str() else {
            continue;
        };
        let Some(tick) = key.strip_prefix("schedule:often:") else {
            continue;
        };
        if tick.starts_with("trigger:") {
            continue;
        }
        assert!(ticks.insert(tick.to_string()), "tick {tick} started twice");
        let ms = troupe::clock::epoch_ms(tick).expect("an RFC 3339 tick");
        assert_eq!(ms % 2_000, 0, "{tick}");
    }
    assert!(ticks.len() >= 6, "{ticks:?}");
    let often = schedule(&host, "often");
    // Counted by the host that started each: a start whose count was
    // lost to the kill is not counted again.
    let started = often["started"].as_u64().unwrap();
    assert!(
        started + 2 >= ticks.len() as u64 && started <= ticks.len() as u64 + 1,
        "{often:#} {ticks:?}"
    );
}

/// `troupe check` and a host's start refuse what cannot be right in a
/// sleep, a for-each step or a schedule, and say where.
#[test]
fn bad_sleeps_for_eaches_and_schedules_are_refused_before_a_host_starts() {
    let flow = |steps: &str| {
        format!("input = \"order.placed\"\n[steps.a]\nstep = \"order-validate\"\n{steps}")
    };
    let cases = [
        (
            "a sleep longer than the run",
            flow("[steps.w]\nsleep_ms = 90000\nafter = [\"a\"]\n"),
            "",
            "the run would time out first",
        ),
        (
            "a misspelt until",
            flow("[steps.w]\nuntil = \"a.ship_aftr\"\n"),
            "",
            "the output of `a` has no field `ship_aftr`",
        ),
        (
            "until a number",
            flow("[steps.w]\nuntil = \"a.total_cents\"\n"),
            "",
            "`a.total_cents` is integer, not a string",
        ),
        (
            "a sleep that sends",
            flow("[steps.w]\nsleep_ms = 5\nstep = \"line-pick\"\n"),
            "",
            "takes no `step`",
        ),
        (
            "for each over a number",
            flow("[steps.p]\nstep = \"line-pick\"\nfor_each = \"a.total_cents\"\n"),
            "",
            "is integer, not an array",
        ),
        (
            "elements of the wrong type",
            flow("[steps.p]\nstep = \"order-validate\"\nfor_each = \"input.lines\"\n"),
            "",
            "its elements are not order.placed",
        ),
        (
            "max_parallel alone",
            flow("[steps.p]\nstep = \"line-pick\"\nmax_parallel = 3\n"),
            "",
            "`max_parallel` is for a for-each step",
        ),
        (
            "a for-each step's array as an input",
            flow(
                "[steps.p]\nstep = \"line-pick\"\nfor_each = \"a.lines\"\n[steps.q]\nstep = \"payment-charge\"\ninput = \"p\"\n",
            ),
            "",
            "which a step takes one by one",
        ),
        (
            "a timeout of more than ten years",
            "input = \"order.placed\"\ntimeout_ms = 9223372036854775807\n\
             [steps.a]\nstep = \"order-validate\"\n"
                .to_string(),
            "",
            "more than the longest a flow may wait",
        ),
        (
            "a bracket in a step's id",
            flow("[steps.\"p[1]\"]\nstep = \"line-pick\"\n"),
            "",
            "a step's id has no `[`",
        ),
        (
            "a schedule of no flow",
            String::new(),
            "[schedules.x]\nflow = \"nope\"\nevery = \"1m\"\n",
            "[schedules.x] flow \"nope\": the app has no such flow",
        ),
        (
            "a schedule's bad input",
            String::new(),
            "[schedules.x]\nflow = \"audit\"\nevery = \"1m\"\ninput = { skus = \"tea\" }\n",
            "[schedules.x] input: not a valid stock.audit-requested",
        ),
        (
            "a bad cron",
            String::new(),
            "[schedules.x]\nflow = \"audit\"\ncron = \"* * * *\"\n",
            "[schedules.x] cron \"* * * *\"",
        ),
    ];
    for (what, text, extra, message) in cases {
        let flows: Vec<(&str, &str)> = if text.is_empty() {
            vec![]
        } else {
            vec![("broken", text.as_str())]
        };
        let app = app(Backend::Embedded, "", &flows);
        let manifest = app.path().join("troupe.toml");
        let text_now = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(&manifest, format!("{text_now}\n{extra}")).unwrap();
        let (passed, said) = troupe_check(app.path());
        assert!(
            !passed && said.contains(message),
            "{what}: troupe check: {said}"
        );
        if !text.is_empty() {
            assert!(said.contains("broken.toml:"), "{what}: where: {said}");
        }
        // A host refuses it too: the manifest when it loads, or the flows
        // and schedules when it starts.
        let err = match troupe::app::App::load(app.path()) {
            Err(e) => e.to_string(),
            Ok(_) => ApiHost::try_start(&app)
                .err()
                .unwrap_or_else(|| panic!("{what}: accepted"))
                .to_string(),
        };
        assert!(err.contains(message), "{what}: {err}");
    }
}
