//! Deployments (docs/deploys.md): a new version deployed while work is in
//! flight, the gate, rollback, a deploy cut short by SIGKILL, and hosts of
//! one app on NATS following each other's deploys. What handled each
//! message is read from the traces (the deployment and component stamped
//! on every reply and emitted event), never from the host's counters.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use troupe::deploy::sha256;
use troupe::protocol::{COMPONENT, DEPLOYMENT};
use troupe_tests::process::{HostProcess, troupe_within};
use troupe_tests::{ApiHost, Backend, TestApp, puppet, replace_file, revision};

const GO: &str = "deploy.go";
const T: &str = "deploy.t";
const OPT: &str = r#"{"type":"object","properties":{"amount":{"type":"integer"}}}"#;
const REQ: &str =
    r#"{"type":"object","required":["amount"],"properties":{"amount":{"type":"integer"}}}"#;

/// A producer puppet: takes `deploy.go`, emits `deploy.t` under `schema`.
fn producer(schema: &str) -> PathBuf {
    puppet(&json!({
        "consumes": [{"kind": GO, "version": "1.0.0", "schema": "{}"}],
        "produces": [{"kind": T, "version": "1.0.0", "schema": schema}],
    }))
}

/// A consumer puppet: takes `deploy.t` under `schema`, emits nothing.
fn consumer(schema: &str) -> PathBuf {
    puppet(&json!({
        "consumes": [{"kind": T, "version": "1.0.0", "schema": schema}],
        "produces": [],
    }))
}

/// Steps `p` and `c` from the app's own `comp/` folder, which a deploy
/// replaces; a flow `two` (p, then c) that runs slowly on request.
const MANIFEST: &str = r#"
name = "deploys"
[steps.p]
component = "comp/p.wasm"
[steps.c]
component = "comp/c.wasm"
"#;
const FLOW: &str = r#"
input = "deploy.go"
timeout_ms = 60000
[steps.first]
step = "p"
timeout_ms = 20000
[steps.second]
step = "c"
input = "first"
timeout_ms = 20000
"#;

/// An app of `p` and `c` (as `p` and `c` components) on `b`, with the
/// flow.
fn app_of(b: Backend, p: &Path, c: &Path) -> TestApp {
    let app = TestApp::on(b, MANIFEST);
    put_files(&app, p, c);
    app
}

/// Put the components `p` and `c` in `app`'s files, with the flow.
fn put_files(app: &TestApp, p: &Path, c: &Path) {
    let comp = app.path().join("comp");
    std::fs::create_dir_all(&comp).unwrap();
    std::fs::create_dir_all(app.path().join("flows")).unwrap();
    std::fs::write(app.path().join("flows/two.toml"), FLOW).unwrap();
    replace_file(p, &comp.join("p.wasm"));
    replace_file(c, &comp.join("c.wasm"));
}

fn digest(p: &Path) -> String {
    sha256(&std::fs::read(p).unwrap())
}

/// `troupe ARGS` in the app's folder (`--app .`): its output, and whether
/// it succeeded.
fn troupe(app: &TestApp, args: &[&str]) -> (bool, String) {
    let out = troupe_within(args, app.path(), &[], Duration::from_secs(120)).expect("it finishes");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The base URL of the API of the host serving `app` (`.troupe/api.json`).
fn api_url(app: &TestApp) -> String {
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(app.path().join(".troupe/api.json")).unwrap(),
    )
    .unwrap();
    v["url"].as_str().unwrap().to_string()
}

/// The events of `id`'s trace (a cascade or a run), through the API.
fn trace(client: &troupe::client::Client, id: &str) -> Vec<Value> {
    client
        .get(&format!("/v1/traces/{id}"))
        .expect("a trace")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The replies in run `id`'s trace: what each step answered its commands.
fn replies(client: &troupe::client::Client, id: &str) -> Vec<Value> {
    trace(client, id)
        .into_iter()
        .filter(|e| e["type"] == "troupe.step.completed")
        .collect()
}

/// The step whose worker emitted `e` (`troupe://APP/step/NAME`).
fn emitter(e: &Value) -> Option<String> {
    let source = e["source"].as_str()?;
    Some(source.rsplit_once("/step/")?.1.to_string())
}

/// Each deployment's component digest of each step, from the API.
fn components_by_deployment(
    client: &troupe::client::Client,
) -> BTreeMap<u64, BTreeMap<String, String>> {
    let v = client.get("/v1/deployments").expect("the deployments");
    v["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let steps = d["steps"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(n, s)| (n.clone(), s["component"].as_str().unwrap().to_string()))
                .collect();
            (d["number"].as_u64().unwrap(), steps)
        })
        .collect()
}

/// Every event a step emitted in `events` (replies too) carries the
/// deployment and the component of its step in that deployment, as
/// recorded; the deployments seen.
fn check_stamps(
    events: &[Value],
    recorded: &BTreeMap<u64, BTreeMap<String, String>>,
) -> BTreeSet<u64> {
    let mut seen = BTreeSet::new();
    for e in events {
        let Some(step) = emitter(e) else { continue };
        let n: u64 = e[DEPLOYMENT]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no deployment stamped on {e}"));
        let component = e[COMPONENT].as_str().expect("a component stamped");
        assert_eq!(
            Some(component),
            recorded[&n].get(&step).map(String::as_str),
            "{step} emitted {e} with a component that is not deployment {n}'s"
        );
        seen.insert(n);
    }
    seen
}

/// The gate and rollback through the CLI, against a running host: a
/// breaking change refused with its names (and by `troupe check
/// --against`), a passive one deployed without a restart, then a return
/// to deployment 1; what handled each event is read from its trace.
#[test]
fn a_breaking_deploy_is_refused_by_name_a_passive_one_taken_and_rolled_back() {
    let (p1, c1) = (producer(OPT), consumer(OPT));
    let app = app_of(Backend::Embedded, &p1, &c1);
    let host = HostProcess::start(&app, &[], Duration::from_secs(60));
    let (ok, text) = troupe(&app, &["deployments", "list"]);
    assert!(ok && text.contains("current"), "{text}");
    let go = |n: u64| -> Vec<Value> {
        let id = host
            .client
            .publish(&json!({"type": GO, "source": "t", "id": format!("go-{n}"),
                "data": {"emit": [{"kind": T, "data": {"amount": n}}]}}))
            .expect("published");
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let t = trace(&host.client, &id);
            if t.iter().any(|e| e["type"] == T) {
                return t;
            }
            assert!(Instant::now() < until, "no {T} for {id}: {t:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let stamp = |t: &[Value]| {
        let e = t.iter().find(|e| e["type"] == T).unwrap();
        (
            e[DEPLOYMENT].as_str().unwrap().to_string(),
            e[COMPONENT].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(stamp(&go(1)), ("1".into(), digest(&p1)));

    // `c` now requires `amount`: the new `p` always sends it (the files
    // hold together), but `p` of deployment 1 may leave it out, and `c` of
    // deployment 1 accepted events without it from outside.
    replace_file(&producer(REQ), &app.path().join("comp/p.wasm"));
    replace_file(&consumer(REQ), &app.path().join("comp/c.wasm"));
    let (ok, text) = troupe(&app, &["check", ".", "--against", "1"]);
    assert!(!ok, "{text}");
    let (ok, refused) = troupe(&app, &["deploy"]);
    assert!(!ok, "{refused}");
    for name in [T, "`p` (deployment 1)", "`c` (this deploy)", "/amount"] {
        assert!(refused.contains(name), "{name} in {refused}");
        assert!(text.contains(name), "{name} in {text}");
    }
    // CI with no host: against a checkout of what is deployed.
    let deployed = app_of(Backend::Embedded, &p1, &c1);
    let dir = deployed.path().display().to_string();
    let (ok, text) = troupe(&app, &["check", ".", "--against", &dir]);
    assert!(!ok, "{text}");
    for name in [T, "`p` (as deployed)", "`c` (this deploy)", "/amount"] {
        assert!(text.contains(name), "{name} in {text}");
    }
    let (ok, text) = troupe(&deployed, &["check", ".", "--against", &dir]);
    assert!(ok && text.contains("passive against"), "{text}");
    let listed = host.client.get("/v1/deployments").unwrap();
    assert_eq!(
        listed["deployments"].as_array().unwrap().len(),
        1,
        "{listed}"
    );
    // Over HTTP the findings are data too.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let token = std::fs::read_to_string(app.path().join(".troupe/api-token")).unwrap();
    let mut r = agent
        .post(format!("{}/v1/deployments", api_url(&app)))
        .header("Authorization", format!("Bearer {}", token.trim()))
        .send_empty()
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert!(
        v["breaks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["type"] == T
                && b["mode"] == "backward"
                && b["producer"]["step"] == "p"
                && b["producer"]["deployment"] == 1
                && b["consumer"]["step"] == "c"
                && b["problem"].as_str().unwrap().contains("/amount")),
        "{v}"
    );
    assert_eq!(stamp(&go(2)), ("1".into(), digest(&p1)), "nothing changed");

    // Passive: `p` promises more (it always sends `amount`); `c` as before.
    let p2 = producer(REQ);
    replace_file(&p2, &app.path().join("comp/p.wasm"));
    replace_file(&c1, &app.path().join("comp/c.wasm"));
    let (ok, text) = troupe(&app, &["check", ".", "--against", "1"]);
    assert!(ok, "{text}");
    let (ok, text) = troupe(&app, &["deploy", "--dry-run"]);
    assert!(ok && text.contains("would be deployment 2"), "{text}");
    let (ok, text) = troupe(&app, &["deploy"]);
    assert!(ok && text.contains("deployment 2 is current"), "{text}");
    assert!(text.contains("step `p`: component"), "{text}");
    assert_eq!(stamp(&go(3)), ("2".into(), digest(&p2)));
    let (ok, text) = troupe(&app, &["deploy"]);
    assert!(ok && text.contains("nothing to deploy"), "{text}");
    // A dead letter says which deployment and build could not handle it.
    host.client
        .publish(&json!({"type": GO, "source": "t", "id": "bad",
            "data": {"emit": [{"kind": T, "data": {"amount": "ten"}}]}}))
        .unwrap();
    let dead = troupe_tests::wait_for(Duration::from_secs(30), "a dead letter", || {
        host.dead_letters().into_iter().next()
    });
    assert_eq!(dead["class"], "contract", "{dead}");
    assert_eq!(dead["deployment"], 2, "{dead}");
    assert_eq!(dead["component"], digest(&p2).as_str(), "{dead}");
    let id = dead["id"].as_str().unwrap();
    let (ok, text) = troupe(&app, &["dlq", "show", id]);
    assert!(ok && text.contains("handled by: deployment 2"), "{text}");

    // Back to 1: a deployment of its own, through the same gate.
    let (ok, text) = troupe(&app, &["deploy", "--to", "1"]);
    assert!(ok && text.contains("deployment 3 is current"), "{text}");
    assert_eq!(stamp(&go(4)), ("3".into(), digest(&p1)));
    let (ok, text) = troupe(&app, &["deployments", "show", "3"]);
    assert!(ok && text.contains("returns to deployment 1"), "{text}");
    assert!(text.contains(&digest(&p1)), "{text}");
    let (ok, text) = troupe(&app, &["deploy", "--to", "9"]);
    assert!(!ok && text.contains("no deployment 9"), "{text}");
    assert_eq!(host.dead_letters().len(), 1, "{:?}", host.dead_letters());
}

/// A host killed at points all through a deploy: what its store holds
/// afterwards is deployments whole (each record names one version of each
/// step, numbered without a gap), the component files it kept are each
/// what their names say, and the restarted host runs exactly its current
/// deployment's components (read from the stamps on what they emit).
#[test]
fn sigkill_during_a_deploy_leaves_the_old_or_the_new_deployment_never_a_mix() {
    let (p1, c1) = (producer(OPT), consumer(OPT));
    let app = app_of(Backend::Embedded, &p1, &c1);
    let mut known = BTreeSet::from([digest(&p1)]);
    let delays = [0u64, 30, 80, 150, 300, 600];
    for (i, delay) in delays.iter().enumerate() {
        let host = HostProcess::start(&app, &[], Duration::from_secs(60));
        let next = revision(&p1, i as u32 + 2);
        known.insert(digest(&next));
        replace_file(&next, &app.path().join("comp/p.wasm"));
        let client = host.client.clone();
        let deploying = std::thread::spawn(move || {
            let _ = client.deploy(&json!({}));
        });
        std::thread::sleep(Duration::from_millis(*delay));
        drop(host); // SIGKILL
        let _ = deploying.join();
        // The records, read from the store as the kill left it.
        let db = rusqlite::Connection::open(app.path().join(".troupe/broker.db")).unwrap();
        let mut stmt = db
            .prepare("SELECT key, value FROM state WHERE key LIKE 'deploy/%' ORDER BY key")
            .unwrap();
        let rows: Vec<(String, Vec<u8>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (n, (key, value)) in rows.iter().enumerate() {
            let d: Value = serde_json::from_slice(value).expect("a whole record");
            assert_eq!(d["number"], n as u64 + 1, "{key}: numbered without a gap");
            let p = d["steps"]["p"]["component"].as_str().unwrap();
            assert!(
                known.contains(p),
                "{key} names a component never deployed: {p}"
            );
            assert_eq!(d["steps"]["c"]["component"].as_str().unwrap(), digest(&c1));
        }
        drop(stmt);
        drop(db);
        for f in std::fs::read_dir(app.path().join(".troupe/deployments/components")).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if let Some(d) = name.strip_suffix(".wasm") {
                assert_eq!(
                    sha256(&std::fs::read(&f).unwrap()),
                    d,
                    "{name} is what it says"
                );
            }
        }
        // Restarted: the files are deployed (or were), and what runs is
        // the current deployment's.
        let host = HostProcess::start(&app, &[], Duration::from_secs(60));
        let recorded = components_by_deployment(&host.client);
        let current = host.client.get("/v1/deployments").unwrap()["current"]
            .as_u64()
            .unwrap();
        assert_eq!(recorded[&current]["p"], digest(&next));
        let id = host
            .client
            .publish(&json!({"type": GO, "source": "t", "id": format!("k-{i}"),
                "data": {"emit": [{"kind": T, "data": {}}]}}))
            .unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        let t = loop {
            let t = trace(&host.client, &id);
            if t.iter().any(|e| e["type"] == T) {
                break t;
            }
            assert!(Instant::now() < until, "no {T}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(check_stamps(&t, &recorded), BTreeSet::from([current]));
        drop(host);
    }
}

/// Two hosts of one app on NATS. A deploy on one is taken up by the
/// other; runs started before it stay on their deployment to their end,
/// whichever host handles their commands; a host that cannot load a
/// deployment (a component not on its machine) says so in `/readyz` and
/// takes no work until the component arrives.
#[test]
fn hosts_on_nats_follow_each_others_deploys_and_keep_runs_pinned() {
    let (p1, c1) = (producer(OPT), consumer(OPT));
    let a = app_of(Backend::Nats, &p1, &c1);
    let b = TestApp::beside(&a, MANIFEST);
    put_files(&b, &p1, &c1);
    let ha = ApiHost::try_start_app(a.app()).expect("host A starts");
    let hb = ApiHost::try_start_app(b.app()).expect("host B starts");
    let slow = |n: u64| {
        json!({"sleep_ms": 700, "n": n,
               "emit": [{"kind": T, "data": {"amount": n, "sleep_ms": 500}}]})
    };
    let before: Vec<String> = (0..8)
        .map(|n| ha.client.start("two", &slow(n)).expect("a run starts"))
        .collect();
    // A new build of `p`, on both machines; deployed on A.
    let p2 = revision(&p1, 2);
    replace_file(&p2, &a.path().join("comp/p.wasm"));
    replace_file(&p2, &b.path().join("comp/p.wasm"));
    let (status, v) = ha.client.deploy(&json!({})).expect("deployed");
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["deployment"]["number"], 2);
    troupe_tests::wait_for(Duration::from_secs(10), "B to take up deployment 2", || {
        let r = hb.client.get("/readyz").ok()?;
        (r["deployments"]["serving"] == 2).then_some(())
    });
    let after: Vec<String> = (10..16)
        .map(|n| ha.client.start("two", &slow(n)).expect("a run starts"))
        .collect();
    let recorded = components_by_deployment(&ha.client);
    assert_eq!(recorded[&2]["p"], digest(&p2));
    for (runs, n) in [(&before, 1u64), (&after, 2)] {
        for id in runs {
            let run = ha
                .client
                .wait(id, Duration::from_secs(60), |_| {})
                .expect("a status");
            assert_eq!(run["state"], "completed", "{run}");
            assert_eq!(run["deployment"], n, "{run}");
            let replies = replies(&ha.client, id);
            assert_eq!(replies.len(), 2, "{replies:?}");
            assert_eq!(
                check_stamps(&replies, &recorded),
                BTreeSet::from([n]),
                "run {id}"
            );
            assert_eq!(
                run["steps"]["first"]["component"],
                recorded[&n]["p"].as_str()
            );
        }
    }
    // Deployment 3: a build of `p` only on A's machine. B says why it
    // takes no work, and takes it up once the component is there.
    let p3 = revision(&p1, 3);
    replace_file(&p3, &a.path().join("comp/p.wasm"));
    let (status, _) = ha.client.deploy(&json!({})).expect("deployed");
    assert_eq!(status, 201);
    let why =
        troupe_tests::wait_for(
            Duration::from_secs(10),
            "B to say it cannot load 3",
            || match hb.client.get("/readyz") {
                Err(troupe::client::ClientError::Status {
                    status: 503,
                    message,
                    ..
                }) => Some(message),
                _ => None,
            },
        );
    let short = &digest(&p3)[..12];
    assert!(why.contains("`p`") && why.contains(short), "{why}");
    let ids: Vec<String> = (20..24)
        .map(|n| {
            ha.client
                .start(
                    "two",
                    &json!({"n": n, "emit": [{"kind": T, "data": {"amount": n}}]}),
                )
                .unwrap()
        })
        .collect();
    let handled_by_b = hb.host.as_ref().unwrap().deployer.stats().steps["p"]
        .snapshot()
        .handled;
    for id in &ids {
        let run = ha.client.wait(id, Duration::from_secs(60), |_| {}).unwrap();
        assert_eq!(
            (run["state"].as_str(), run["deployment"].as_u64()),
            (Some("completed"), Some(3))
        );
    }
    assert_eq!(
        hb.host.as_ref().unwrap().deployer.stats().steps["p"]
            .snapshot()
            .handled,
        handled_by_b,
        "B took no work while it could not load the current deployment"
    );
    replace_file(&p3, &b.path().join("comp/p.wasm"));
    troupe_tests::wait_for(Duration::from_secs(15), "B to take up deployment 3", || {
        let r = hb.client.get("/readyz").ok()?;
        (r["deployments"]["serving"] == 3).then_some(())
    });
    // B restarted on its old files (a rolling restart before they were
    // updated): they are deployment 1's, and B does not take the app back
    // to it; it serves deployment 3, whose component it kept.
    drop(hb);
    replace_file(&p1, &b.path().join("comp/p.wasm"));
    let hb = ApiHost::try_start_app(b.app()).expect("host B starts again");
    let r = hb.client.get("/readyz").expect("B is ready");
    assert_eq!(r["deployments"]["serving"], 3, "{r}");
    let listed = ha.client.get("/v1/deployments").unwrap();
    assert_eq!(
        listed["deployments"].as_array().unwrap().len(),
        3,
        "{listed}"
    );
}

/// Runs of the orders example, and orders through its cascade, at a
/// steady rate for 30 s; half-way, a deploy of new builds of the flow's
/// steps. Nothing is lost, nothing is handled twice, every run ends on the
/// deployment it started on (each reply in its trace says so), and every
/// event of the cascade was emitted by the deployment it says.
fn a_deploy_in_the_middle_of_a_steady_load_loses_nothing(b: Backend) {
    let app = troupe_tests::example_app_on(b, "orders");
    let comps = pin_components(&app);
    let h = ApiHost::try_start_app(app.app()).expect("the example starts");
    let order = |id: &str| {
        json!({"order_id": id, "customer": "ada",
               "lines": [{"sku": "tea", "qty": 1, "price_cents": 450}]})
    };
    let start = Instant::now();
    let mut runs = Vec::new();
    let mut cascades = Vec::new();
    let mut deployed = None;
    // Runs go on for 15 s after the deploy answered, however long it took
    // (compiling four components on a loaded machine can take as long as
    // the load before it).
    let mut until = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    while Instant::now() < until {
        if deployed.is_none() && start.elapsed() > Duration::from_secs(15) {
            for name in [
                "order-validate",
                "payment-charge",
                "shipping-dispatch",
                "inventory-reserve",
            ] {
                let next = revision(&comps[name], 2);
                replace_file(&next, &comps[name]);
            }
            let (status, v) = h.client.deploy(&json!({})).expect("deployed");
            assert_eq!(status, 201, "{v}");
            deployed = Some(v["deployment"]["number"].as_u64().unwrap());
            until = Instant::now() + Duration::from_secs(15);
        }
        let id = format!("o-{i}");
        // A steady producer: a `503` (not now, a loaded machine's broker
        // timed out) is tried again, as the host asks; the run's key and
        // the event's id make a second try start and publish nothing new.
        let patience = Duration::from_secs(60);
        let run = h
            .client
            .start_patiently("fulfil", &order(&id), Some(&id), patience, |why, _| {
                eprintln!("start {id}: {why}; trying again")
            })
            .expect("a run starts");
        runs.push(run);
        let e = json!({"type": "order.placed", "source": "t", "id": format!("c-{i}"), "subject": id,
                       "data": order(&format!("c-{i}"))});
        cascades.push(publish_patiently(&h.client, &e, patience));
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let deployed = deployed.expect("deployed half-way");
    let recorded = components_by_deployment(&h.client);
    let mut on = BTreeMap::<u64, usize>::new();
    for id in &runs {
        let run = h
            .client
            .wait(id, Duration::from_secs(120), |_| {})
            .expect("a status");
        assert_eq!(run["state"], "completed", "{run}");
        let n = run["deployment"].as_u64().expect("pinned");
        *on.entry(n).or_default() += 1;
        // Once, or again only after its time limit ran out (a loaded
        // machine: the first attempt's reply never came, see the replies
        // below), never run twice for any other reason.
        for (sid, s) in run["steps"].as_object().unwrap() {
            let errors = s["errors"].as_array().map_or(&[][..], Vec::as_slice);
            assert!(
                s["attempts"] == 1
                    || (s["attempts"].as_u64() == Some(errors.len() as u64 + 1)
                        && errors
                            .iter()
                            .all(|e| e.as_str().is_some_and(|e| e.contains(": timeout: ")))),
                "{sid} of {id} ran once, or again after a timeout: {run}"
            );
        }
        let replies = replies(&h.client, id);
        assert_eq!(replies.len(), 4, "{id}: one reply per step: {replies:?}");
        assert_eq!(
            check_stamps(&replies, &recorded),
            BTreeSet::from([n]),
            "run {id}"
        );
    }
    assert!(on.get(&1).is_some_and(|n| *n > 10), "runs on 1: {on:?}");
    assert!(
        on.get(&deployed).is_some_and(|n| *n > 10),
        "runs on {deployed}: {on:?}"
    );
    let mut seen = BTreeSet::new();
    for id in &cascades {
        let until = Instant::now() + Duration::from_secs(120);
        let t = loop {
            let t = trace(&h.client, id);
            if t.iter().any(|e| e["type"] == "customer.notified") {
                break t;
            }
            assert!(Instant::now() < until, "cascade {id} did not finish: {t:?}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let ids: BTreeSet<&str> = t.iter().filter_map(|e| e["id"].as_str()).collect();
        assert_eq!(ids.len(), t.len(), "no event twice in {id}");
        seen.extend(check_stamps(&t, &recorded));
    }
    assert_eq!(seen, BTreeSet::from([1, deployed]), "cascades ran on both");
    let dead = h.client.get("/v1/dlq").unwrap();
    assert_eq!(dead, json!([]), "nothing dead-lettered");
}

troupe_tests::on_each_broker_blocking!(a_deploy_in_the_middle_of_a_steady_load_loses_nothing);

/// Point each `plugin = DIR` step of `app` at a copy of its built
/// component in the app's `comp/` folder (which a deploy then replaces);
/// the copies, by step.
/// Publish `e`, trying again while the host answers `503` (not now), up
/// to `patience`; its id.
fn publish_patiently(client: &troupe::client::Client, e: &Value, patience: Duration) -> String {
    let until = Instant::now() + patience;
    loop {
        match client.publish(e) {
            Err(troupe::client::ClientError::Status {
                status: 503,
                message,
                ..
            }) if Instant::now() < until => {
                eprintln!("publish {}: {message}; trying again", e["id"]);
                std::thread::sleep(Duration::from_millis(500));
            }
            other => return other.expect("published"),
        }
    }
}

fn pin_components(app: &TestApp) -> BTreeMap<String, PathBuf> {
    let flows = troupe_tests::repo().join("examples/orders/flows");
    std::fs::create_dir_all(app.path().join("flows")).unwrap();
    for f in std::fs::read_dir(flows).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, app.path().join("flows").join(f.file_name().unwrap())).unwrap();
    }
    let path = app.path().join("troupe.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let comp = app.path().join("comp");
    std::fs::create_dir_all(&comp).unwrap();
    let mut out = BTreeMap::new();
    let mut step = String::new();
    let mut lines = Vec::new();
    for line in text.lines() {
        if let Some(name) = line
            .strip_prefix("[steps.")
            .and_then(|l| l.strip_suffix(']'))
        {
            step = name.to_string();
        }
        match line
            .strip_prefix("plugin = \"")
            .and_then(|l| l.strip_suffix('"'))
        {
            Some(dir) => {
                let built = troupe::builder::prepare(Path::new(dir)).expect("the plugin builds");
                let to = comp.join(format!("{step}.wasm"));
                replace_file(&built.component, &to);
                lines.push(format!("component = \"comp/{step}.wasm\""));
                out.insert(step.clone(), to);
            }
            None => lines.push(line.to_string()),
        }
    }
    std::fs::write(&path, lines.join("\n")).unwrap();
    out
}

/// The current deployment of the host behind `client`, once it is `n`.
fn current_becomes(client: &troupe::client::Client, n: u64, what: &str) {
    troupe_tests::wait_for(Duration::from_secs(30), what, || {
        let v = client.get("/v1/deployments").ok()?;
        (v["current"] == n).then_some(())
    });
}

/// SIGHUP deploys the app's files as they are now; `troupe run --watch`
/// deploys each change of them, with no command at all.
#[test]
fn sighup_and_watch_deploy_what_changed() {
    let (p1, c1) = (producer(OPT), consumer(OPT));
    let app = app_of(Backend::Embedded, &p1, &c1);
    let mut host = HostProcess::start(&app, &[], Duration::from_secs(60));
    let p2 = revision(&p1, 2);
    replace_file(&p2, &app.path().join("comp/p.wasm"));
    host.signal("HUP");
    current_becomes(&host.client, 2, "SIGHUP to deploy");
    let d = host.client.get("/v1/deployments/2").unwrap();
    assert_eq!(d["origin"]["how"], "signal", "{d}");
    assert_eq!(d["steps"]["p"]["component"], digest(&p2).as_str());
    host.terminate(Duration::from_secs(30)).expect("it stops");

    let host = HostProcess::start_with(&app, &["--watch"], &[], Duration::from_secs(60));
    let listed = host.client.get("/v1/deployments").unwrap();
    assert_eq!(listed["current"], 2, "the files are deployment 2: {listed}");
    let p3 = revision(&p1, 3);
    replace_file(&p3, &app.path().join("comp/p.wasm"));
    current_becomes(&host.client, 3, "--watch to deploy the change");
    let d = host.client.get("/v1/deployments/3").unwrap();
    assert_eq!(d["origin"]["how"], "watch", "{d}");
    // A change the gate refuses is not deployed; the log says why.
    replace_file(&consumer(REQ), &app.path().join("comp/c.wasm"));
    replace_file(&producer(REQ), &app.path().join("comp/p.wasm"));
    troupe_tests::wait_for(Duration::from_secs(30), "the refusal in the log", || {
        host.log_text().contains("not deployed").then_some(())
    });
    assert!(host.log_text().contains("/amount"), "{}", host.log_text());
    let listed = host.client.get("/v1/deployments").unwrap();
    assert_eq!(listed["current"], 3, "{listed}");
}
