//! The hostile-guest suite: components written to hurt the host, each run
//! next to a well-behaved step, on the embedded broker and on NATS.
//!
//! The host runs as a process of its own (`troupe run`), watched from
//! outside as an operator would: the well-behaved step must keep answering
//! within a bound, every hostile message must reach the DLQ with the right
//! class within a bound, the host's resident memory must stay within its
//! steps' limits, its log must stay bounded and unforgeable, SIGTERM must
//! stop it promptly, and nothing of the host (its files, its environment)
//! may appear in any output. Commands that load steps must fail with a
//! clear error, never hang, on guests that misbehave in `describe`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use troupe_tests::process::{HostProcess, broker_arg, troupe_within};
use troupe_tests::{Backend, TestApp, build, guest, on_each_broker_blocking, repo, step};

/// A value in the host's environment that no output may ever show.
const CANARY: &str = "canary-6f1d2c9e-do-not-leak";
/// Longest any one command may take before it counts as hung.
const HUNG: Duration = Duration::from_secs(60);

/// How each attack must end: its DLQ class, and text its message holds.
const ATTACKS: &[(&str, &str, &str)] = &[
    ("hostile.spin", "timeout", "time limit"),
    ("hostile.sleep", "timeout", "time limit"),
    ("hostile.membomb", "limit", "memory limit"),
    ("hostile.huge-emit", "limit", "bytes"),
    ("hostile.flood", "limit", "emitted 10000 events"),
    ("hostile.undeclared", "contract", "hostile.nope"),
    ("hostile.bad-data", "contract", "schema"),
    ("hostile.forge-alert", "contract", "troupe.alert.contract"),
    ("hostile.ctype-text", "contract", "text/plain"),
    ("hostile.ctype-upper", "contract", "schema"),
    ("hostile.ctype-xml", "contract", "application/xml"),
    ("hostile.big-subject", "limit", "subject"),
    ("hostile.big-ctype", "limit", "content type"),
    ("hostile.subject-control", "contract", "subject"),
    ("hostile.control", "rejected", "FORGED"),
    ("hostile.big-reject", "rejected", "rrrr"),
    ("hostile.big-retry", "retry", "yyyy"),
    ("hostile.log-flood", "timeout", "time limit"),
    ("hostile.escape", "rejected", "denied"),
    ("trap.panic", "trap", ""),
    ("trap.abort", "trap", ""),
    ("trap.oob", "trap", ""),
    ("trap.stack", "trap", ""),
    ("trap.indirect", "trap", ""),
    ("trap.utf8", "trap", ""),
    ("trap.pointer", "trap", ""),
    ("test.spin", "timeout", "time limit"),
];

/// The hostile steps' limits, and the bounds the host must keep.
const TIMEOUT_MS: u64 = 300;
const HOSTILE_MEMORY_MB: u64 = 32;
const HOSTILE_CONCURRENCY: u64 = 4;

fn spinner_py() -> std::path::PathBuf {
    build(&repo().join("tests/hostile/spinner-py"))
}

fn hostile_app(b: Backend) -> TestApp {
    let limits =
        format!("limits = {{ timeout_ms = {TIMEOUT_MS}, memory_mb = {HOSTILE_MEMORY_MB} }}");
    let m = step(
        "hostile",
        &guest("hostile"),
        &format!(
            "concurrency = {HOSTILE_CONCURRENCY}\n{limits}\nretry = {{ max_attempts = 2, backoff_ms = 10 }}"
        ),
    ) + &step("echo", &guest("echo"), "concurrency = 2")
        + &step(
            "spinner-py",
            &spinner_py(),
            &format!("concurrency = 1\n{limits}\nretry = {{ max_attempts = 1 }}"),
        );
    TestApp::on(b, &m)
}

/// Everything a host can show: its log and output, the DLQ with each
/// entry's event, and the traces of `ids`.
fn everything_shown(host: &HostProcess, ids: &[String]) -> String {
    let mut all = host.log_text();
    all += &std::fs::read_to_string(&host.out).unwrap_or_default();
    if let Ok(list) = host.client.get("/v1/dlq") {
        for d in list.as_array().into_iter().flatten() {
            if let Ok(full) = host
                .client
                .get(&format!("/v1/dlq/{}", d["id"].as_str().unwrap_or("")))
            {
                all += &full.to_string();
            }
        }
    }
    for id in ids {
        if let Ok(t) = host.client.get(&format!("/v1/traces/{id}")) {
            all += &t.to_string();
        }
    }
    all
}

/// Pings the well-behaved step every 100 ms until stopped; the slowest
/// answer seen, and how many went unanswered within `bound`.
fn pinger(
    host: &HostProcess,
    stop: Arc<AtomicBool>,
    bound: Duration,
) -> std::thread::JoinHandle<(Duration, usize, usize)> {
    let client = host.client.clone();
    std::thread::spawn(move || {
        let (mut worst, mut late, mut sent) = (Duration::ZERO, 0, 0);
        while !stop.load(Ordering::Relaxed) {
            sent += 1;
            let start = Instant::now();
            let id = client
                .publish(&json!({"type": "test.ping", "data": {"n": sent}}))
                .expect("a ping is accepted");
            loop {
                let answered = client.get(&format!("/v1/traces/{id}")).is_ok_and(|t| {
                    t.as_array()
                        .is_some_and(|a| a.iter().any(|e| e["type"] == "test.pong"))
                });
                if answered {
                    worst = worst.max(start.elapsed());
                    break;
                }
                if start.elapsed() > bound {
                    late += 1;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (worst, late, sent)
    })
}

/// Every attack at once, a well-behaved step beside them.
fn attacks_are_contained(b: Backend) {
    let app = hostile_app(b);
    let host = HostProcess::start(&app, &[("TROUPE_TEST_CANARY", CANARY)], HUNG);
    // The baseline: the host up, every step loaded, one ping answered.
    let stop = Arc::new(AtomicBool::new(false));
    let warm = pinger(
        &host,
        Arc::new(AtomicBool::new(true)),
        Duration::from_secs(10),
    );
    warm.join().unwrap();
    let baseline_kib = host.status_kib("VmRSS");
    let pings = pinger(&host, stop.clone(), Duration::from_secs(2));

    let start = Instant::now();
    let mut ids = HashMap::new();
    for (kind, _, _) in ATTACKS {
        let id = host
            .client
            .publish(&json!({"type": kind, "data": {}}))
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        ids.insert(id, *kind);
    }
    // Every attack is in the DLQ, within a bound: two tries of the time
    // limit and the backoff, queued four at a time behind one another.
    let bound = Duration::from_secs(30);
    let mut seen: HashMap<String, Value> = HashMap::new();
    while seen.len() < ids.len() && start.elapsed() < bound {
        for d in host.dead_letters() {
            if let Some(id) = d["event_id"].as_str()
                && ids.contains_key(id)
            {
                seen.entry(id.to_string()).or_insert(d);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let (worst, late, sent) = pings.join().unwrap();
    let peak_kib = host.status_kib("VmHWM");

    let mut wrong = Vec::new();
    for (id, kind) in &ids {
        let (_, class, text) = ATTACKS.iter().find(|a| a.0 == *kind).unwrap();
        match seen.get(id) {
            None => wrong.push(format!("{kind}: not dead-lettered within {bound:?}")),
            Some(d) => {
                let message = d["message"].as_str().unwrap_or_default();
                if d["class"] != *class || !message.contains(text) {
                    wrong.push(format!(
                        "{kind}: {} {:.200}, expected {class} with {text:?}",
                        d["class"], message
                    ));
                }
                if message.len() > 8 * 1024 {
                    wrong.push(format!("{kind}: a message of {} bytes", message.len()));
                }
                if message.chars().any(|c| c.is_control()) {
                    wrong.push(format!("{kind}: control characters in {message:?}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "on {b:?}:\n  {}", wrong.join("\n  "));
    eprintln!(
        "{b:?}: {} attacks dead-lettered in {:.1?}; pings: {sent}, slowest {worst:.0?}; \
         RSS baseline {} MiB, peak {} MiB; log {} KiB",
        ids.len(),
        start.elapsed(),
        baseline_kib / 1024,
        peak_kib / 1024,
        host.log_bytes().len() / 1024
    );

    // The well-behaved step kept answering.
    assert_eq!(
        late, 0,
        "{late} of {sent} pings unanswered within 2 s (worst {worst:?})"
    );

    // Resident memory: the host's own, plus at most each step's workers'
    // limits (half again for what the allocator keeps).
    let steps_mib = HOSTILE_CONCURRENCY * HOSTILE_MEMORY_MB + HOSTILE_MEMORY_MB + 2 * 64;
    let bound_kib = baseline_kib + steps_mib * 1024 * 3 / 2;
    assert!(
        peak_kib <= bound_kib,
        "peak RSS {} MiB > baseline {} MiB + 1.5 x {steps_mib} MiB",
        peak_kib / 1024,
        baseline_kib / 1024
    );

    // Guest text: bounded, escaped, never a line of its own.
    let log = host.log_bytes();
    assert!(!log.contains(&0x1b), "an escape character reached the log");
    let text = String::from_utf8_lossy(&log);
    for line in text.lines() {
        assert!(
            !line.starts_with("2026-12-01T00:00:00.000000Z") && !line.starts_with("FORGED"),
            "a guest forged a log line: {line:?}"
        );
    }
    assert!(log.len() < 2 << 20, "the log grew to {} bytes", log.len());
    let metrics = host.client.get("/metrics").expect("metrics");
    let metrics = metrics.as_str().unwrap_or_default();
    let dropped = metrics
        .lines()
        .find(|l| l.starts_with("troupe_guest_log_dropped_total{step=\"hostile\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert!(
        dropped.is_some_and(|n| n > 0),
        "no dropped log lines counted:\n{metrics}"
    );
    // And the log says so, within a second or so of the last flood (a
    // flood that ended within its first second was never reported).
    let start = Instant::now();
    while !host
        .log_text()
        .contains("log lines dropped (limits.log_lines_per_second)")
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the log never says lines were dropped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // What the escaping guest saw: nothing.
    let escape = seen
        .values()
        .find(|d| d["event_type"] == "hostile.escape")
        .unwrap();
    let report: Value = serde_json::from_str(escape["message"].as_str().unwrap()).unwrap();
    for probe in ["passwd", "cwd", "root", "tcp", "udp"] {
        assert!(
            report[probe].as_str().unwrap().starts_with("denied"),
            "{probe}: {report}"
        );
    }
    assert_eq!(report["env"], json!([]), "{report}");
    let shown = everything_shown(&host, &ids.keys().cloned().collect::<Vec<_>>());
    assert!(!shown.contains(CANARY), "the host's environment leaked");
    assert!(!shown.contains("root:x:0:0"), "the host's files leaked");
    assert!(
        !shown.contains("STDOUT-FROM-GUEST"),
        "the guest reached stdout"
    );

    // It stops promptly.
    let mut host = host;
    let stopped = host.terminate(Duration::from_secs(15));
    assert!(
        stopped.is_some(),
        "SIGTERM did not stop the host within 15 s"
    );
}

/// A contract is enforced for every content type, at the HTTP door too.
fn foreign_content_types_are_refused_at_publish(b: Backend) {
    let app = TestApp::on(b, &step("hostile", &guest("hostile"), "concurrency = 1"));
    let host = HostProcess::start(&app, &[], HUNG);
    for (ct, data) in [
        ("application/xml", json!("<n>three</n>")),
        ("text/plain", json!("three")),
        ("Application/JSON", json!({"n": "three"})),
        ("application/json; charset=utf-8", json!({"n": "three"})),
    ] {
        let e = json!({"type": "hostile.out", "datacontenttype": ct, "data": data});
        match host.client.publish(&e) {
            Err(troupe::client::ClientError::Status { status: 422, .. }) => {}
            other => panic!("{ct}: {other:?}"),
        }
    }
    let good = json!({"type": "hostile.out", "datacontenttype": "application/json; charset=utf-8", "data": {"n": 3}});
    host.client
        .publish(&good)
        .expect("JSON with parameters is JSON");
}

/// A guest blocked in a host call with a long time limit does not hold up
/// SIGTERM; what it was handling is delivered again after a restart.
fn sigterm_stops_a_host_with_blocked_guests(b: Backend) {
    let long = "concurrency = 2\nlimits = { timeout_ms = 600000 }\nretry = { max_attempts = 1 }";
    let app = TestApp::on(
        b,
        &(step("hostile", &guest("hostile"), long) + &step("echo", &guest("echo"), "")),
    );
    let mut host = HostProcess::start(&app, &[], HUNG);
    let ids: Vec<String> = (0..2)
        .map(|_| {
            host.client
                .publish(&json!({"type": "hostile.sleep", "data": {}}))
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let stopped = host.terminate(Duration::from_secs(15));
    let (status, took) = stopped.expect("SIGTERM did not stop the host within 15 s");
    assert!(status.success(), "{status}: {}", host.log_text());
    // Nothing was lost: with a short limit, the next host dead-letters both.
    let short = "concurrency = 2\nlimits = { timeout_ms = 100 }\nretry = { max_attempts = 1 }";
    std::fs::write(
        app.path().join("troupe.toml"),
        step("hostile", &guest("hostile"), short) + &step("echo", &guest("echo"), ""),
    )
    .unwrap();
    let host = HostProcess::start(&app, &[], HUNG);
    let start = Instant::now();
    loop {
        let dead: Vec<String> = host
            .dead_letters()
            .iter()
            .filter(|d| d["class"] == "timeout")
            .filter_map(|d| d["event_id"].as_str().map(str::to_string))
            .collect();
        if ids.iter().all(|i| dead.contains(i)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the sleeping guests' events were not delivered again (stopped in {took:?}): {dead:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `troupe run` refuses a step that misbehaves at load, promptly, naming
/// why; the other commands that load steps do the same.
fn misbehaving_steps_are_refused_at_load(b: Backend) {
    let forged = tempfile::tempdir().unwrap();
    let many = forged.path().join("multimem.wasm");
    std::fs::write(&many, troupe_tests::forge::many_memories(7, 1000)).unwrap();
    let too_many = forged.path().join("too-many.wasm");
    std::fs::write(&too_many, troupe_tests::forge::many_memories(9, 1)).unwrap();
    let junk = forged.path().join("junk.wasm");
    std::fs::write(&junk, b"this is not wasm").unwrap();
    let core = forged.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "sleep in describe",
            step("stall", &guest("stall"), ""),
            "describe",
        ),
        (
            "spin in describe",
            step(
                "stall",
                &guest("stall"),
                "grants.env = { STALL = \"spin\" }",
            ),
            "describe",
        ),
        (
            "consumes a host type",
            step("usurper", &guest("usurper"), ""),
            "troupe.alert.contract",
        ),
        (
            "produces a host type",
            step(
                "usurper",
                &guest("usurper"),
                "grants.env = { USURP = \"produce\" }",
            ),
            "troupe.alert.contract",
        ),
        (
            "7 memories of 62.5 MiB",
            step("multimem", &many, "limits = { memory_mb = 64 }"),
            "memory limit of 64 MiB",
        ),
        (
            "10 memories",
            step("multimem", &too_many, ""),
            "10 Wasm linear memories",
        ),
        (
            "an invalid schema",
            step(
                "usurper",
                &guest("usurper"),
                "grants.env = { USURP = \"bad-schema\" }",
            ),
            "not a valid JSON Schema",
        ),
        (
            "not a component",
            step("junk", &junk, ""),
            "not a valid WebAssembly component",
        ),
        (
            "a core module",
            step("core", &core, ""),
            "not a valid WebAssembly component",
        ),
    ];
    let mut wrong = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(what, m, expect)| {
                s.spawn(move || {
                    let app = TestApp::on(b, &(m.clone() + &step("echo", &guest("echo"), "")));
                    let d = app.path().to_str().unwrap().to_string();
                    let broker = broker_arg(&app);
                    let mut out = Vec::new();
                    for args in [
                        vec!["--broker", &broker, "run", &d, "--until-idle"],
                        vec![
                            "--broker",
                            &broker,
                            "publish",
                            &d,
                            "test.ping",
                            "--data",
                            "{\"n\":1}",
                        ],
                    ] {
                        let start = Instant::now();
                        match troupe_within(&args, app.path(), &[], HUNG) {
                            None => out.push(format!("{what}: `{}` hung", args[2])),
                            Some(o) => {
                                let err = String::from_utf8_lossy(&o.stderr);
                                let named_twice = ["stall", "usurper", "multimem"]
                                    .iter()
                                    .any(|s| err.contains(&format!("step `{s}`: step `{s}`")));
                                if o.status.success() || !err.contains(expect) || named_twice {
                                    out.push(format!(
                                        "{what}: `{}` {} after {:?}: {err:.400}",
                                        args[2],
                                        o.status,
                                        start.elapsed()
                                    ));
                                }
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        for h in handles {
            wrong.extend(h.join().unwrap());
        }
    });
    assert!(wrong.is_empty(), "on {b:?}:\n  {}", wrong.join("\n  "));
}

on_each_broker_blocking!(
    attacks_are_contained,
    foreign_content_types_are_refused_at_publish,
    sigterm_stops_a_host_with_blocked_guests,
    misbehaving_steps_are_refused_at_load,
    memory_bombs_leave_nothing_resident,
);

/// No command that reads contracts hangs on a guest that never returns
/// from `describe`, or accepts one that claims the host's types.
#[test]
fn no_command_hangs_on_a_guest() {
    let stall = guest("stall");
    let usurper = guest("usurper");
    let cases = [(&stall, "describe"), (&usurper, "troupe.alert.contract")];
    let apps: Vec<TestApp> = cases
        .iter()
        .map(|(c, _)| TestApp::new(&(step("s", c, "") + &step("echo", &guest("echo"), ""))))
        .collect();
    let mut wrong = Vec::new();
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for ((component, expect), app) in cases.into_iter().zip(&apps) {
            let dir = app.path().to_str().unwrap().to_string();
            let c = component.to_str().unwrap().to_string();
            for args in [
                vec!["check".to_string(), dir.clone()],
                vec!["docs".to_string(), dir.clone()],
                vec!["graph".to_string(), dir.clone()],
                vec!["conformance".to_string(), c.clone()],
            ] {
                let (app_path, c) = (app.path().to_path_buf(), c.clone());
                handles.push(s.spawn(move || {
                    let a: Vec<&str> = args.iter().map(String::as_str).collect();
                    match troupe_within(&a, &app_path, &[], HUNG) {
                        None => Some(format!("`{}` hung on {c}", a[0])),
                        Some(o) => {
                            let all = String::from_utf8_lossy(&o.stderr).into_owned()
                                + &String::from_utf8_lossy(&o.stdout);
                            (o.status.success() || !all.contains(expect))
                                .then(|| format!("`{}` on {c}: {} {all:.400}", a[0], o.status))
                        }
                    }
                }));
            }
        }
        for h in handles {
            wrong.extend(h.join().unwrap());
        }
    });
    assert!(wrong.is_empty(), "\n  {}", wrong.join("\n  "));
}

/// NATS: an event as large as the server takes is stored; one byte more is
/// refused before it is sent (at the door, or as a step's `limit`), never
/// taken on and then failed forever.
#[tokio::test(flavor = "multi_thread")]
async fn events_up_to_the_servers_max_payload_fit_and_no_more() {
    let app = TestApp::on(Backend::Nats, &step("echo", &guest("echo"), ""));
    let broker = troupe::broker::open(
        &app.broker(),
        "fit",
        &app.path().join(".troupe"),
        &Default::default(),
    )
    .await
    .unwrap();
    let client = async_nats::connect(troupe_tests::nats_server())
        .await
        .unwrap();
    let max = client.server_info().max_payload;
    let mut e = troupe_tests::event("test.ping", json!({"n": 1}));
    e.content_type = "application/octet-stream".into();
    e.data = vec![b'x'; max];
    let over = match broker.check_size(&e) {
        Err(troupe::broker::BrokerError::TooLarge(m)) => m,
        other => panic!("{other:?}"),
    };
    let size: usize = over
        .split(" event of ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Exactly the largest message: fits, and the server stores it.
    e.data.truncate(max - (size - max));
    broker.check_size(&e).expect("fits");
    broker.publish(vec![e.clone()]).await.expect("stored");
    let mut bigger = e.clone();
    bigger.id = format!("{}-b", e.id);
    bigger.data.extend_from_slice(b"yy");
    assert!(matches!(
        broker.publish(vec![bigger]).await,
        Err(troupe::broker::BrokerError::TooLarge(_))
    ));
}

/// Memory a guest used is given back when its instance goes: many memory
/// bombs, two at a time, leave the host's resident memory within two
/// bombs' worth (and half again) of where it started.
fn memory_bombs_leave_nothing_resident(b: Backend) {
    let (bombs, concurrency, memory_mb) = (16, 2, 64);
    let m = step(
        "hostile",
        &guest("hostile"),
        &format!(
            "concurrency = {concurrency}\nlimits = {{ memory_mb = {memory_mb}, timeout_ms = 5000 }}\n\
             retry = {{ max_attempts = 1 }}"
        ),
    );
    let app = TestApp::on(b, &m);
    let host = HostProcess::start(&app, &[], HUNG);
    let baseline_kib = host.status_kib("VmRSS");
    let ids: Vec<String> = (0..bombs)
        .map(|_| {
            host.client
                .publish(&json!({"type": "hostile.membomb", "data": {}}))
                .unwrap()
        })
        .collect();
    let start = Instant::now();
    while host.dead_letters().len() < bombs {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the bombs were not all dead-lettered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let peak_kib = host.status_kib("VmHWM");
    for d in host.dead_letters() {
        assert!(ids.iter().any(|i| d["event_id"] == *i));
        assert_eq!(d["class"], "limit", "{d}");
    }
    let bound_kib = baseline_kib + concurrency * memory_mb * 1024 * 3 / 2;
    eprintln!(
        "{b:?}: {bombs} bombs of {memory_mb} MiB at concurrency {concurrency}: RSS baseline {} MiB, \
         peak {} MiB, bound {} MiB",
        baseline_kib / 1024,
        peak_kib / 1024,
        bound_kib / 1024
    );
    assert!(
        peak_kib <= bound_kib,
        "peak RSS {} MiB over the bound {} MiB",
        peak_kib / 1024,
        bound_kib / 1024
    );
}

/// NATS carries at most `max_payload` bytes a message. What would not fit
/// is refused before it is taken on: a step's output as `limit`, a run
/// whose record would outgrow a message as a failed step, and a dead
/// letter whose event nearly fills a message keeps the event's data by
/// reference.
#[test]
fn nats_keeps_every_record_within_a_message() {
    let m = step(
        "hostile",
        &guest("hostile"),
        "concurrency = 2\nlimits = { max_event_bytes = 8388608 }\nretry = { max_attempts = 1 }",
    );
    let app = TestApp::on(Backend::Nats, &m);
    std::fs::create_dir(app.path().join("flows")).unwrap();
    std::fs::write(
        app.path().join("flows/sized.toml"),
        "input = \"hostile.sized\"\ntimeout_ms = 20000\n\
         [steps.a]\nstep = \"hostile\"\n[steps.b]\nstep = \"hostile\"\n[steps.c]\nstep = \"hostile\"\n",
    )
    .unwrap();
    let host = HostProcess::start(&app, &[], HUNG);
    let max = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            async_nats::connect(troupe_tests::nats_server())
                .await
                .unwrap()
                .server_info()
                .max_payload
        })
    };

    // An output larger than a message: `limit`, at once.
    let huge = host
        .client
        .publish(&json!({"type": "hostile.huge-emit", "data": {"kb": 4096}}))
        .unwrap();
    // An event that nearly fills a message, rejected: its dead letter
    // keeps the data in a message of its own, and shows it whole.
    let big_text = "b".repeat(max - 1500);
    let big = host
        .client
        .publish(&json!({"type": "hostile.control", "data": big_text}))
        .unwrap();
    let start = Instant::now();
    let (huge_dl, big_dl) = loop {
        let dead = host.dead_letters();
        let find = |id: &str| dead.iter().find(|d| d["event_id"] == id).cloned();
        if let (Some(h), Some(b)) = (find(&huge), find(&big)) {
            break (h, b);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not dead-lettered: {dead:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(huge_dl["class"], "limit", "{huge_dl}");
    assert!(
        huge_dl["message"]
            .as_str()
            .unwrap()
            .contains("does not fit in a NATS message"),
        "{huge_dl}"
    );
    assert_eq!(big_dl["class"], "rejected", "{big_dl}");
    let shown = host
        .client
        .get(&format!("/v1/dlq/{}", big_dl["id"].as_str().unwrap()))
        .unwrap();
    assert_eq!(
        shown["event"]["data"],
        json!(big_text),
        "the dead letter's event, whole"
    );

    // A run whose outputs would outgrow its record: the step that would
    // overflow it fails (`limit`), and the run with it.
    let run = host
        .client
        .start("sized", &json!({"kb": max / 1024 / 3 + 16}))
        .expect("the run starts");
    let status = host
        .client
        .wait(&run, Duration::from_secs(30), |_| {})
        .unwrap();
    assert_eq!(status["state"], "failed", "{status:.600}");
    let errors = status["steps"].to_string();
    assert!(
        errors.contains("would grow the run's record"),
        "{errors:.2000}"
    );
    // An input too large for a run is refused at the door.
    let too_big = host
        .client
        .start("sized", &json!({"kb": 1, "pad": "p".repeat(max)}));
    assert!(
        matches!(
            too_big,
            Err(troupe::client::ClientError::Status { status: 413, .. })
        ),
        "{too_big:?}"
    );
}
