//! Step state (`wasi:keyvalue`): buckets whose writes commit with the
//! message, driven through a real guest (tests/guests/keeper) on each
//! broker, the CLI and the HTTP API included, and across SIGKILLs.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use troupe::event::Event;
use troupe::host::{Host, load_steps};
use troupe::runtime::Runtime;
use troupe_tests::{
    ApiHost, Backend, TestApp, build, data, event, eventually, guest, on_each_broker,
    on_each_broker_blocking, output_of, troupe_bin,
};

use super::cli::{ok, troupe};

on_each_broker!(
    writes_are_seen_by_later_events_and_only_granted_buckets_open,
    the_writes_of_a_failed_attempt_are_discarded,
    steps_with_a_shared_grant_see_each_others_writes_and_no_one_else_does,
    concurrent_deliveries_on_one_hot_key_end_with_the_exact_count,
    every_step_of_a_chain_keeps_its_own_count,
);

/// On NATS, with every core kept busy by this test: the chain's 600 commits
/// on 10 hot keys finish before any host gives up waiting for a verdict
/// (20 s), so none of their deliveries waits out the ack wait to run
/// again. The applier used to stall for 35 s at a time here (async-nats,
/// pulling one log entry at a time, lost count of its open pull request
/// under CPU contention): 38 s and 77 s for what takes 2 s idle.
#[tokio::test(flavor = "multi_thread")]
async fn state_commits_on_nats_do_not_stall_when_the_cores_are_busy() {
    let app = TestApp::on(
        Backend::Nats,
        &troupe_tests::bench::relay_chain(&guest("relay"), true, "concurrency = 4"),
    );
    let host = app.start().await;
    let _busy = Spinners::on_every_core();
    let events: Vec<Event> = (0..200)
        .map(|i| event("chain.a", json!({"i": i})))
        .collect();
    host.broker.publish(events).await.unwrap();
    let reader = host.broker.kv_reader().unwrap();
    // Less than a host waits for a verdict before giving its delivery up.
    let deadline = std::time::Instant::now() + Duration::from_secs(18);
    for step in ["relay-a", "relay-b", "relay-c"] {
        for k in 0..10 {
            let key = format!("k{k}");
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            eventually(left, &format!("{step}/{key} = 20"), async || {
                let v = reader.kv_get(step, &key).await.unwrap()?;
                (v.0 == b"20").then_some(())
            })
            .await;
        }
    }
    host.shutdown().await;
}

/// Processes that keep every core busy (`sh -c 'while :; do :; done'`)
/// until dropped (a failed assertion included). Other processes: threads
/// of this one spinning did not bring the stall out.
struct Spinners(Vec<std::process::Child>);

impl Spinners {
    fn on_every_core() -> Spinners {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Spinners(
            (0..cores)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("sh")
                })
                .collect(),
        )
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The tests that drive a host from outside (the CLI, the API, SIGKILL).
mod from_outside {
    use super::*;
    on_each_broker_blocking!(
        operators_read_and_mend_buckets_and_the_trace_names_the_keys_written,
        sigkill_at_random_points_loses_no_write_and_applies_none_twice,
        a_flow_step_keeps_state_with_its_reply,
    );
}

/// `troupe ARGS` for `app`, on its broker.
fn cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    let broker = app.broker().to_string();
    let mut all = vec!["--broker", broker.as_str()];
    all.extend_from_slice(args);
    troupe(&all, app.path())
}

const WAIT: Duration = Duration::from_secs(20);
/// The chain's wait: generous, as a test machine may be busy with others.
const CHAIN_WAIT: Duration = Duration::from_secs(90);

/// A `keeper` step named `name` with role `role` and `extra` TOML lines.
pub(crate) fn keeper(name: &str, role: &str, extra: &str) -> String {
    format!(
        "[steps.{name}]\ncomponent = {:?}\ngrants.env = {{ ROLE = {role:?} }}\n{extra}\n",
        guest("keeper").display().to_string()
    )
}

/// Publish `input` and return the results reported by `role`.
pub(crate) async fn ask(host: &Host, input: Value, role: &str) -> Vec<Value> {
    let e = event("test.kv", input);
    host.broker.publish(vec![e.clone()]).await.unwrap();
    results_of(host, &e, role).await
}

async fn results_of(host: &Host, e: &Event, role: &str) -> Vec<Value> {
    eventually(WAIT, "test.kv.done", async || {
        if let Some(dead) = host.broker.dlq_list().await.unwrap().pop() {
            panic!("dead-lettered: {}: {}", dead.class, dead.message);
        }
        host.broker
            .trace(&e.id)
            .await
            .unwrap()
            .iter()
            .filter(|x| x.kind == "test.kv.done")
            .map(data)
            .find(|d| d["role"] == role)
    })
    .await["results"]
        .as_array()
        .unwrap()
        .clone()
}

pub(crate) fn op(op: &str, bucket: &str, key: &str) -> Value {
    json!({"op": op, "bucket": bucket, "key": key})
}

pub(crate) fn set(bucket: &str, key: &str, value: &str) -> Value {
    json!({"op": "set", "bucket": bucket, "key": key, "value": value})
}

/// The committed value of `bucket`/`key`, read from the broker.
pub(crate) async fn committed(host: &Host, bucket: &str, key: &str) -> Option<String> {
    host.broker
        .kv_reader()
        .expect("the broker keeps state")
        .kv_get(bucket, key)
        .await
        .unwrap()
        .map(|(v, _)| String::from_utf8(v).unwrap())
}

async fn writes_are_seen_by_later_events_and_only_granted_buckets_open(b: Backend) {
    let app = TestApp::on(b, &keeper("keeper", "main", "grants.kv = [\"stock\"]"));
    let host = app.start().await;
    let first = ask(
        &host,
        json!({"main": {"ops": [
            set("stock", "tea", "5"),
            set("", "seen", "o-1"),
            op("get", "stock", "tea"),
            op("incr", "stock", "orders"),
            op("incr", "stock", "orders"),
        ]}}),
        "main",
    )
    .await;
    // Within the invocation, its own writes are seen at once.
    assert_eq!(first[2], json!({"ok": "5"}));
    assert_eq!(first[4], json!({"ok": 2}));
    let second = ask(
        &host,
        json!({"main": {"ops": [
            op("get", "stock", "tea"),
            op("get", "keeper", "seen"),
            op("keys", "stock", ""),
            op("open", "secret", ""),
            op("exists", "stock", "coffee"),
        ]}}),
        "main",
    )
    .await;
    assert_eq!(second[0], json!({"ok": "5"}));
    assert_eq!(second[1], json!({"ok": "o-1"}), "its own bucket by name");
    assert_eq!(second[2], json!({"ok": ["orders", "tea"]}));
    let denied = second[3]["error"].as_str().unwrap();
    assert!(
        denied.contains("\"secret\"") && denied.contains("grants.kv"),
        "{denied}"
    );
    assert_eq!(second[4], json!({"ok": false}));
    assert_eq!(
        committed(&host, "stock", "orders").await.as_deref(),
        Some("2")
    );
    host.shutdown().await;
}

async fn the_writes_of_a_failed_attempt_are_discarded(b: Backend) {
    let app = TestApp::on(
        b,
        &keeper(
            "keeper",
            "main",
            "grants.kv = [\"stock\"]\nretry = { max_attempts = 2, backoff_ms = 10 }\n\
         limits.kv = { max_keys = 3 }",
        ),
    );
    let host = app.start().await;
    ask(
        &host,
        json!({"main": {"ops": [set("stock", "tea", "5")]}}),
        "main",
    )
    .await;
    // Each way an attempt can fail: a retry (twice, then the DLQ), a
    // trap, a reject, and a commit over the bucket's quota (`limit`).
    let failing = [
        (
            "retry",
            json!({"ops": [set("stock", "tea", "4")], "then": "retry"}),
        ),
        (
            "trap",
            json!({"ops": [set("stock", "tea", "3")], "then": "trap"}),
        ),
        (
            "rejected",
            json!({"ops": [set("stock", "tea", "2")], "then": "reject"}),
        ),
        (
            "limit",
            json!({"ops": [set("stock", "tea", "1"), set("stock", "a", "x"), set("stock", "b", "x"), set("stock", "c", "x")]}),
        ),
    ];
    for (i, (class, part)) in failing.iter().enumerate() {
        host.broker
            .publish(vec![event("test.kv", json!({"main": part}))])
            .await
            .unwrap();
        let dead = eventually(WAIT, "a dead letter", async || {
            let d = host.broker.dlq_list().await.unwrap();
            (d.len() > i).then(|| d[i].clone())
        })
        .await;
        assert_eq!(dead.class.as_str(), *class, "{}", dead.message);
        if *class == "limit" {
            assert!(
                dead.message.contains("over its limit of 3"),
                "{}",
                dead.message
            );
        }
        assert_eq!(committed(&host, "stock", "tea").await.as_deref(), Some("5"));
    }
    assert_eq!(committed(&host, "stock", "a").await, None);
    host.shutdown().await;
}

async fn steps_with_a_shared_grant_see_each_others_writes_and_no_one_else_does(b: Backend) {
    let m = [
        keeper("writer", "a", "grants.kv = [\"shared\"]"),
        keeper("reader", "b", "grants.kv = [\"shared\"]"),
        keeper("outsider", "c", ""),
    ]
    .concat();
    let app = TestApp::on(b, &m);
    let host = app.start().await;
    ask(
        &host,
        json!({"a": {"ops": [set("shared", "k", "1"), set("", "mine", "a")]}}),
        "a",
    )
    .await;
    let input = json!({
        "b": {"ops": [op("get", "shared", "k"), op("get", "writer", "mine")]},
        "c": {"ops": [op("get", "shared", "k"), op("get", "writer", "mine")]},
    });
    let e = event("test.kv", input);
    host.broker.publish(vec![e.clone()]).await.unwrap();
    let b = results_of(&host, &e, "b").await;
    let c = results_of(&host, &e, "c").await;
    assert_eq!(b[0], json!({"ok": "1"}));
    // A step's own bucket is its own: a grant names shared buckets only.
    assert!(
        b[1]["error"].as_str().unwrap().contains("\"writer\""),
        "{b:?}"
    );
    for r in &c {
        assert!(r["error"].as_str().unwrap().contains("grants.kv"), "{c:?}");
    }
    host.shutdown().await;
}

async fn concurrent_deliveries_on_one_hot_key_end_with_the_exact_count(b: Backend) {
    const STOCK: u64 = 100;
    const ORDERS: usize = 130;
    let app = TestApp::on(
        b,
        &keeper("keeper", "main", "grants.kv = [\"stock\"]\nconcurrency = 8"),
    );
    let host = app.start().await;
    ask(
        &host,
        json!({"main": {"ops": [set("stock", "tea", &STOCK.to_string())]}}),
        "main",
    )
    .await;
    let take = json!({"main": {"ops": [{"op": "take", "bucket": "stock", "key": "tea", "qty": 1}], "sleep_ms": 2}});
    let orders: Vec<Event> = (0..ORDERS)
        .map(|_| event("test.kv", take.clone()))
        .collect();
    host.broker.publish(orders.clone()).await.unwrap();
    let mut taken = 0;
    let mut short = 0;
    for e in &orders {
        let r = results_of(&host, e, "main").await;
        match &r[0] {
            Value::Object(o) if o["ok"].get("short").is_some() => short += 1,
            Value::Object(o) if o["ok"].is_u64() => taken += 1,
            other => panic!("unexpected result {other}"),
        }
    }
    assert_eq!(taken, STOCK, "every unit taken once");
    assert_eq!(short, ORDERS as u64 - STOCK);
    assert_eq!(committed(&host, "stock", "tea").await.as_deref(), Some("0"));
    let conflicts = host.stats.steps["keeper"]
        .kv_conflicts
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{ORDERS} orders on one key, concurrency 8: {conflicts} runs again");
    assert!(
        conflicts > 0,
        "eight workers on one key collided at least once"
    );
    host.shutdown().await;
}

#[test]
fn without_a_state_store_every_bucket_call_fails_inside_the_guest() {
    // A step run with no broker (the conformance kit, a direct call): the
    // guest is told, and handles the event as it chooses.
    let app = TestApp::new(&keeper("keeper", "main", ""));
    let rt = Runtime::new().unwrap();
    let steps = load_steps(&rt, &app.app()).unwrap();
    let e = event("test.kv", json!({"main": {"ops": [op("get", "", "k")]}}));
    let out = steps[0].handle(&e, 1).unwrap();
    let results = &serde_json::from_slice::<Value>(&out[0].data).unwrap()["results"];
    let error = results[0]["error"].as_str().unwrap();
    assert!(error.contains("not available here"), "{error}");
}

fn operators_read_and_mend_buckets_and_the_trace_names_the_keys_written(b: Backend) {
    let app = TestApp::on(b, &keeper("keeper", "main", "grants.kv = [\"stock\"]"));
    let api = ApiHost::start(&app);
    let host = api.host.as_ref().unwrap();
    let e = event(
        "test.kv",
        json!({"main": {"ops": [set("stock", "tea", "5"), set("stock", "sku/oolong", "2")]}}),
    );
    api.block_on(async {
        host.broker.publish(vec![e.clone()]).await.unwrap();
        results_of(host, &e, "main").await
    });
    // The CLI, beside the running host.
    assert_eq!(
        ok(&cli(&app, &["kv", "list", "stock"])),
        "sku/oolong\ntea\n"
    );
    assert_eq!(ok(&cli(&app, &["kv", "get", "stock", "tea"])), "5");
    let trace = ok(&cli(&app, &["trace", &e.id]));
    assert!(
        trace.contains("kv wrote stock: sku/oolong, tea (attempt 1, by keeper)"),
        "{trace}"
    );
    ok(&cli(&app, &["kv", "put", "stock", "tea", "9"]));
    ok(&cli(&app, &["kv", "delete", "stock", "sku/oolong"]));
    let missing = cli(&app, &["kv", "get", "stock", "sku/oolong"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("has no key \"sku/oolong\""));
    let bad = cli(&app, &["kv", "list", "Not A Bucket"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a bucket name"));
    // What the operator wrote is what the next event reads.
    let read = api.block_on(ask(
        host,
        json!({"main": {"ops": [op("get", "stock", "tea")]}}),
        "main",
    ));
    assert_eq!(read[0], json!({"ok": "9"}));
    // The API: read-only, behind the token.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |path: &str, token: Option<&str>| {
        let mut req = agent.get(format!("{}{path}", api.url));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut r = req.call().unwrap();
        let status = r.status().as_u16();
        (
            status,
            r.body_mut().read_json::<Value>().unwrap_or(Value::Null),
        )
    };
    let token = Some(api.token.as_str());
    assert_eq!(get("/v1/kv/stock", None).0, 401);
    assert_eq!(get("/v1/kv/stock/tea", None).0, 401);
    assert_eq!(
        get("/v1/kv/stock", token),
        (200, json!({"bucket": "stock", "keys": ["tea"]}))
    );
    let (status, tea) = get("/v1/kv/stock/tea", token);
    assert_eq!((status, &tea["value"]), (200, &json!("9")));
    assert!(tea["version"].as_u64().unwrap() > 0);
    assert_eq!(get("/v1/kv/stock/sku%2Foolong", token).0, 404);
    assert_eq!(get("/v1/kv/Bad!/x", token).0, 400);
}

async fn every_step_of_a_chain_keeps_its_own_count(b: Backend) {
    let app = TestApp::on(
        b,
        &troupe_tests::bench::relay_chain(&guest("relay"), true, "concurrency = 4"),
    );
    let host = app.start().await;
    let events: Vec<Event> = (0..200)
        .map(|i| event("chain.a", json!({"i": i})))
        .collect();
    host.broker.publish(events).await.unwrap();
    let reader = host.broker.kv_reader().unwrap();
    for step in ["relay-a", "relay-b", "relay-c"] {
        // 200 events over 10 keys: 20 each, whatever ran concurrently.
        for k in 0..10 {
            let key = format!("k{k}");
            eventually(CHAIN_WAIT, &format!("{step}/{key} = 20"), async || {
                let v = reader.kv_get(step, &key).await.unwrap()?;
                (v.0 == b"20").then_some(())
            })
            .await;
        }
    }
    host.shutdown().await;
}

/// The keeper's protocol, in Python (`troupe_kv`) and JavaScript
/// (`wasi:keyvalue` as componentize-js binds it): writes seen by later
/// events, an ungranted bucket refused with its name, a retry's writes
/// discarded, a bucket shared with the Rust keeper.
#[tokio::test(flavor = "multi_thread")]
async fn python_and_javascript_steps_keep_state_too() {
    let built = tokio::task::spawn_blocking(|| {
        ["py-kv", "js-kv"].map(|d| build(&troupe_tests::repo().join("tests/callers").join(d)))
    })
    .await
    .unwrap();
    let mut m = keeper("rust", "rust", "grants.kv = [\"stock\"]");
    for (name, component) in ["python", "javascript"].iter().zip(&built) {
        m += &format!(
            "[steps.{name}]\ncomponent = {:?}\ngrants.kv = [\"stock\"]\ngrants.env = {{ ROLE = \"main\" }}\n\
             instances = \"reuse\"\nlimits = {{ memory_mb = 128 }}\nretry = {{ max_attempts = 2, backoff_ms = 10 }}\n",
            component.display().to_string()
        );
    }
    let app = TestApp::new(&m);
    let host = app.start().await;
    // Rust sets the shared count; each of the others reads it, counts in
    // its own bucket and writes one key of the shared bucket.
    ask(
        &host,
        json!({"rust": {"ops": [set("stock", "tea", "7")]}}),
        "rust",
    )
    .await;
    for round in 1..=2u64 {
        let e = event(
            "test.kv",
            json!({"main": {"ops": [
                op("get", "stock", "tea"),
                op("incr", "", "runs"),
                op("open", "secret", ""),
                op("keys", "stock", ""),
            ]}}),
        );
        host.broker.publish(vec![e.clone()]).await.unwrap();
        // Both steps take the same event; their answers are told apart by
        // their source.
        let answers = eventually(WAIT, "two answers", async || {
            let done: Vec<Event> = host
                .broker
                .trace(&e.id)
                .await
                .unwrap()
                .into_iter()
                .filter(|x| x.kind == "test.kv.done")
                .collect();
            (done.len() == 2).then_some(done)
        })
        .await;
        for a in &answers {
            let r = &data(a)["results"];
            let who = &a.source;
            assert_eq!(r[0], json!({"ok": "7"}), "{who}");
            assert_eq!(r[1], json!({"ok": round}), "{who}: its own counter");
            let denied = r[2]["error"].as_str().unwrap_or_default();
            assert!(
                denied.contains("\"secret\"") && denied.contains("grants.kv"),
                "{who}: {r}"
            );
            assert_eq!(r[3], json!({"ok": ["tea"]}), "{who}");
        }
    }
    for step in ["python", "javascript"] {
        assert_eq!(
            committed(&host, step, "runs").await.as_deref(),
            Some("2"),
            "{step}"
        );
    }
    // A retry's writes are discarded (the budget spent, the DLQ).
    host.broker
        .publish(vec![event(
            "test.kv",
            json!({"main": {"ops": [set("stock", "tea", "0")], "then": "retry"}}),
        )])
        .await
        .unwrap();
    eventually(WAIT, "two dead letters", async || {
        (host.broker.dlq_list().await.unwrap().len() == 2).then_some(())
    })
    .await;
    assert_eq!(committed(&host, "stock", "tea").await.as_deref(), Some("7"));
    host.shutdown().await;
}

/// A C step keeps state through wit-bindgen's C bindings of the
/// `step-kv` world: its own bucket and a granted one, an ungranted one
/// refused with its name, a retry's writes discarded.
#[tokio::test(flavor = "multi_thread")]
async fn a_c_step_keeps_state_too() {
    // Its sources, beside the order example's small JSON helper.
    let src = tempfile::tempdir().unwrap();
    let repo = troupe_tests::repo();
    std::fs::copy(
        repo.join("tests/callers/c-kv/step.c"),
        src.path().join("step.c"),
    )
    .unwrap();
    for f in ["json.c", "json.h"] {
        std::fs::copy(
            repo.join("plugins/shipping-dispatch-c").join(f),
            src.path().join(f),
        )
        .unwrap();
    }
    let dir = src.path().to_path_buf();
    let component = tokio::task::spawn_blocking(move || build(&dir))
        .await
        .unwrap();
    let app = TestApp::new(&format!(
        "[steps.c-kv]\ncomponent = {:?}\ngrants.kv = [\"stock\"]\n\
         retry = {{ max_attempts = 2, backoff_ms = 10 }}\n",
        component.display().to_string()
    ));
    let host = app.start().await;
    let done = async |input: Value| {
        let e = event("test.ckv", input);
        host.broker.publish(vec![e.clone()]).await.unwrap();
        data(&output_of(&host, &e, "test.ckv.done", WAIT).await)
    };
    let first = done(json!({"key": "tea", "value": "5"})).await;
    assert_eq!(first["old"], Value::Null, "{first}");
    assert_eq!(first["runs"], 1, "{first}");
    assert_eq!(first["keys"], json!(["tea"]), "{first}");
    let denied = first["denied"].as_str().unwrap();
    assert!(
        denied.contains("\"secret\"") && denied.contains("grants.kv"),
        "{denied}"
    );
    let second = done(json!({"key": "tea", "value": "7"})).await;
    assert_eq!((&second["old"], &second["runs"]), (&json!("5"), &json!(2)));
    // A retry's writes are discarded (the budget spent, the DLQ).
    host.broker
        .publish(vec![event(
            "test.ckv",
            json!({"key": "tea", "value": "9", "then": "retry"}),
        )])
        .await
        .unwrap();
    eventually(WAIT, "a dead letter", async || {
        (host.broker.dlq_list().await.unwrap().len() == 1).then_some(())
    })
    .await;
    assert_eq!(committed(&host, "stock", "tea").await.as_deref(), Some("7"));
    assert_eq!(committed(&host, "c-kv", "runs").await.as_deref(), Some("2"));
    host.shutdown().await;
}

/// `n` events (JSON lines for `troupe publish --file`) for a `keeper`
/// step of role `main`: each takes one unit from `stock`/`count` and sets
/// `stock`/`done/o-NNNN`.
pub(crate) fn taking_orders(n: usize) -> String {
    (0..n)
        .map(|i| {
            let ops = json!({"main": {"ops": [
                {"op": "take", "bucket": "stock", "key": "count", "qty": 1},
                set("stock", &format!("done/o-{i:04}"), "1"),
            ]}});
            format!("{}\n", json!({"type": "test.kv", "data": ops}))
        })
        .collect()
}

/// How many of [`taking_orders`] are done, from `troupe --json kv list
/// stock`.
pub(crate) fn orders_done(listing: &str) -> usize {
    let v: Value = serde_json::from_str(listing).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k.as_str().unwrap().starts_with("done/"))
        .count()
}

/// SIGKILL `troupe run` at random moments while 2,000 orders each take
/// one unit from a counter and mark themselves done in the same bucket:
/// afterwards every order is done, and the counter is the initial count
/// minus the orders done, exactly (no write lost, none applied twice, none
/// without the other).
fn sigkill_at_random_points_loses_no_write_and_applies_none_twice(b: Backend) {
    const STOCK: u64 = 10_000;
    const ORDERS: usize = 2_000;
    let app = TestApp::on(
        b,
        &keeper("keeper", "main", "grants.kv = [\"stock\"]\nconcurrency = 4"),
    );
    let dir = app.path();
    ok(&cli(
        &app,
        &["kv", "put", "stock", "count", &STOCK.to_string()],
    ));
    std::fs::write(dir.join("orders.jsonl"), taking_orders(ORDERS)).unwrap();
    ok(&cli(&app, &["publish", ".", "--file", "orders.jsonl"]));
    let done = || orders_done(&ok(&cli(&app, &["--json", "kv", "list", "stock"])));
    // A seed printed, so a failing run can be told apart.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    eprintln!("seed {seed}");
    let mut kills = 0;
    let mut at_kills: Vec<usize> = Vec::new();
    // Fewer on NATS, where each costs more (above) and a killed host's
    // unsettled deliveries wait out the 30 s ack wait.
    let most = if b == Backend::Nats { 3 } else { 6 };
    while kills < most {
        let mut host = Command::new(troupe_bin())
            .args(["--broker", &app.broker().to_string()])
            .args(["run", ".", "--listen", "127.0.0.1:0"])
            .current_dir(dir)
            .env("TROUPE_LOG", "error")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // The kill comes once a random share (10-60%) of the orders left
        // are done: by progress, not by the clock, so a fast machine
        // cannot finish them all before it and a slow one (or a host that
        // waits out a killed one's ack wait on NATS) is not killed idle.
        let before = at_kills.last().copied().unwrap_or(0);
        let target = before + 1 + (ORDERS - before) * (10 + (seed >> 33) as usize % 50) / 100;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while done() < target
            && std::time::Instant::now() < deadline
            && host.try_wait().unwrap().is_none()
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        host.kill().unwrap(); // SIGKILL
        host.wait().unwrap();
        kills += 1;
        let n = done();
        at_kills.push(n);
        if n == ORDERS {
            break;
        }
    }
    // Then run until every order is handled.
    ok(&cli(&app, &["run", ".", "--until-idle"]));
    let n = done();
    let count = ok(&cli(&app, &["kv", "get", "stock", "count"]));
    eprintln!(
        "orders done at each of {kills} SIGKILLs: {at_kills:?}; at the end {n}, count {count}"
    );
    assert_eq!(n, ORDERS, "every order completed");
    assert_eq!(
        count,
        (STOCK - ORDERS as u64).to_string(),
        "each order took exactly one"
    );
    assert!(
        at_kills.iter().any(|&d| d > 0 && d < ORDERS),
        "a SIGKILL came while orders were being handled: {at_kills:?}"
    );
}

/// A step in an orchestrated flow keeps state the same way: its writes
/// commit with its reply to the orchestrator, and a rejected command's
/// are discarded.
fn a_flow_step_keeps_state_with_its_reply(b: Backend) {
    let app = TestApp::on(
        b,
        &keeper(
            "keeper",
            "main",
            "grants.kv = [\"stock\"]\nchoreography = false",
        ),
    );
    std::fs::create_dir(app.path().join("flows")).unwrap();
    std::fs::write(
        app.path().join("flows/keep.toml"),
        "input = \"test.kv\"\n[steps.keep]\nstep = \"keeper\"\n",
    )
    .unwrap();
    let api = ApiHost::start(&app);
    let host = api.host.as_ref().unwrap();
    let run = api.run(
        "keep",
        json!({"main": {"ops": [set("stock", "tea", "5"), op("incr", "stock", "runs")]}}),
    );
    assert_eq!(run["state"], "completed", "{run}");
    let run = api.run(
        "keep",
        json!({"main": {"ops": [set("stock", "tea", "0")], "then": "reject"}}),
    );
    assert_eq!(run["state"], "failed", "{run}");
    let run = api.run(
        "keep",
        json!({"main": {"ops": [op("get", "stock", "tea"), op("incr", "stock", "runs")]}}),
    );
    assert_eq!(run["state"], "completed", "{run}");
    api.block_on(async {
        assert_eq!(committed(host, "stock", "tea").await.as_deref(), Some("5"));
        assert_eq!(committed(host, "stock", "runs").await.as_deref(), Some("2"));
    });
}
