//! The sandbox: limits and grants, and components that are broken or
//! hostile. Each test runs a real guest compiled from `tests/guests/`.

use std::time::{Duration, Instant};

use serde_json::json;
use troupe::host::{Host, HostError, LoadError};
use troupe::protocol::FailureClass;
use troupe::runtime::RuntimeError;
use troupe_tests::{TestApp, data, event, eventually, guest, step};

const IDLE: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread")]
async fn an_infinite_loop_is_stopped_by_the_deadline() {
    let m = step(
        "looper",
        &guest("looper"),
        "limits = { timeout_ms = 50 }\nretry = { max_attempts = 2, backoff_ms = 10 }",
    ) + &step("echo", &guest("echo"), "");
    let app = TestApp::new(&m);
    let host = app.start().await;
    let ping = event("test.ping", json!({"n": 1}));
    let start = Instant::now();
    host.broker
        .publish(vec![event("test.loop", json!({})), ping.clone()])
        .await
        .unwrap();
    let dead = eventually(Duration::from_secs(10), "the loop in the DLQ", async || {
        host.broker.dlq_list().await.unwrap().pop()
    })
    .await;
    let took = start.elapsed();
    assert_eq!((dead.class, dead.attempts), (FailureClass::Timeout, 2));
    assert!(
        dead.message.contains("time limit of 50 ms"),
        "{}",
        dead.message
    );
    assert!(
        took >= Duration::from_millis(100),
        "two deliveries of 50 ms: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "stopped promptly: {took:?}");
    // The host kept serving meanwhile.
    assert_eq!(host.broker.trace(&ping.id).await.unwrap().len(), 2);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_bomb_is_refused_by_the_limit() {
    let m = step(
        "membomb",
        &guest("membomb"),
        "limits = { memory_mb = 16 }\nretry = { max_attempts = 1 }",
    );
    let app = TestApp::new(&m);
    let host = app.start().await;
    host.broker
        .publish(vec![event("test.bomb", json!({}))])
        .await
        .unwrap();
    host.wait_idle(IDLE).await.unwrap();
    let dlq = host.broker.dlq_list().await.unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].class, FailureClass::Limit);
    assert!(
        dlq[0].message.contains("memory limit of 16 MiB"),
        "{}",
        dlq[0].message
    );
    host.shutdown().await;
}

/// `instances = "reuse"` keeps an instance across messages (what it left
/// in memory is seen by the next one) until it has handled
/// `recycle_after` of them; `fresh` gives every message a new one. The
/// relay guest counts the messages its instance has handled.
#[tokio::test(flavor = "multi_thread")]
async fn a_reused_instance_is_replaced_after_recycle_after_messages() {
    let relay = guest("relay");
    let env = |out: &str| {
        format!(
            "grants.env = {{ IN = \"test.count\", OUT = \"{out}\", CALLS = \"1\" }}\nconcurrency = 1"
        )
    };
    let m = step(
        "reused",
        &relay,
        &format!(
            "{}\ninstances = \"reuse\"\nrecycle_after = 3",
            env("test.reused")
        ),
    ) + &step("fresh", &relay, &env("test.fresh"));
    let app = TestApp::new(&m);
    let host = app.start().await;
    let mut seen = std::collections::BTreeMap::<String, Vec<u64>>::new();
    // One at a time: with one message in flight the step has one instance.
    for i in 0..7 {
        let e = event("test.count", json!({"i": i}));
        host.broker.publish(vec![e.clone()]).await.unwrap();
        let outs = eventually(Duration::from_secs(10), "both steps' answers", async || {
            let t = host.broker.trace(&e.id).await.unwrap();
            (t.len() == 3).then_some(t)
        })
        .await;
        for o in outs.iter().filter(|o| o.id != e.id) {
            let calls = data(o)["calls"].as_u64().expect("calls");
            seen.entry(o.kind.clone()).or_default().push(calls);
        }
    }
    assert_eq!(seen["test.reused"], [1, 2, 3, 1, 2, 3, 1]);
    assert_eq!(seen["test.fresh"], [1; 7]);
    host.shutdown().await;
}

async fn probe(extra: &str, app: &TestApp) -> serde_json::Value {
    std::fs::write(
        app.path().join("troupe.toml"),
        step("prober", &guest("prober"), extra),
    )
    .unwrap();
    let host = app.start().await;
    let e = event("test.probe", json!({}));
    host.broker.publish(vec![e.clone()]).await.unwrap();
    host.wait_idle(IDLE).await.unwrap();
    let trace = host.broker.trace(&e.id).await.unwrap();
    host.shutdown().await;
    data(
        trace
            .iter()
            .find(|x| x.kind == "test.probed")
            .expect("a report"),
    )
}

fn denied(report: &serde_json::Value, probe: &str) -> bool {
    report[probe]
        .as_str()
        .is_some_and(|s| s.starts_with("denied"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_with_no_grants_reaches_no_file_socket_or_variable() {
    let app = TestApp::new("");
    let r = probe("", &app).await;
    for p in [
        "read_etc_passwd",
        "read_relative",
        "write_tmp",
        "list_root",
        "tcp_connect",
        "tcp_listen",
        "udp_bind",
        "granted_read",
        "granted_write",
    ] {
        assert!(denied(&r, p), "{p}: {}", r[p]);
    }
    assert_eq!(r["env_vars"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_open_exactly_what_they_name() {
    let app = TestApp::new("");
    let dir = app.path().join("shared");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), "hi").unwrap();
    let ro = "grants.dirs = [{ host = \"shared\", guest = \"/granted\" }]\ngrants.env = { REGION = \"eu\" }";
    let r = probe(ro, &app).await;
    assert_eq!(r["granted_read"], "ok");
    assert!(
        denied(&r, "granted_write"),
        "read-only grant: {}",
        r["granted_write"]
    );
    assert!(denied(&r, "read_etc_passwd") && denied(&r, "tcp_connect"));
    assert_eq!(r["env_vars"], 1);
    let rw = "grants.dirs = [{ host = \"shared\", guest = \"/granted\", write = true }]";
    let r = probe(rw, &app).await;
    assert_eq!(r["granted_write"], "ok");
    assert_eq!(
        std::fs::read_to_string(dir.join("written.txt")).unwrap(),
        "from the guest"
    );
}

async fn start_err(component: &std::path::Path) -> HostError {
    let app = TestApp::new(&step("s", component, ""));
    match Host::start(app.app()).await {
        Ok(_) => panic!("{} loaded", component.display()),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_components_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.wasm");
    let e = start_err(&missing).await;
    assert!(
        matches!(
            e,
            HostError::Load(LoadError::Load {
                error: RuntimeError::Read { .. },
                ..
            })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("missing.wasm"), "{e}");

    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"this is not wasm").unwrap();
    let e = start_err(&junk).await;
    assert!(
        matches!(
            e,
            HostError::Load(LoadError::Load {
                error: RuntimeError::Compile { .. },
                ..
            })
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("not a valid WebAssembly component"),
        "{e}"
    );

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let e = start_err(&core).await;
    assert!(
        e.to_string().contains("not a valid WebAssembly component"),
        "{e}"
    );

    let other_world =
        troupe_tests::build(&troupe_tests::repo().join("tests/conformance/not-a-step"));
    let e = start_err(&other_world).await;
    assert!(
        matches!(
            e,
            HostError::Load(LoadError::Load {
                error: RuntimeError::World { .. },
                ..
            })
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("does not implement the `troupe:step` world"),
        "{e}"
    );
}

#[test]
fn components_are_compiled_once_and_loaded_precompiled_after() {
    use troupe::runtime::Runtime;
    use troupe::runtime::cache::{ArtifactCache, Origin};
    let dir = tempfile::tempdir().unwrap();
    let component = guest("echo");
    let rt = Runtime::new().unwrap();
    let cache = ArtifactCache::new(rt.engine(), dir.path());
    let first = cache.load(rt.engine(), &component).unwrap();
    assert_eq!(first.origin, Origin::Compiled);
    // A new engine (a new process) with the same settings finds the artifact.
    let rt2 = Runtime::new().unwrap();
    let again = ArtifactCache::new(rt2.engine(), dir.path())
        .load(rt2.engine(), &component)
        .unwrap();
    assert_eq!(again.origin, Origin::Cached);
    assert_eq!(again.hash, first.hash);
    let artifacts: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    assert!(artifacts[0].to_string_lossy().starts_with(&first.hash));
    // A corrupted artifact is compiled again, not trusted.
    drop((first, again, rt, rt2));
    std::fs::write(dir.path().join(&artifacts[0]), b"garbage").unwrap();
    let rt3 = Runtime::new().unwrap();
    let rebuilt = ArtifactCache::new(rt3.engine(), dir.path())
        .load(rt3.engine(), &component)
        .unwrap();
    assert_eq!(rebuilt.origin, Origin::Compiled);
}
