//! Steps in Rust, Python, JavaScript and C side by side: the order example's
//! cascade crosses all four; the same step in each language gives the same
//! answer; and `troupe new`, `troupe build`, `troupe conformance` work for
//! each language as generated.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use troupe::host::load_steps;
use troupe::runtime::Runtime;
use troupe_tests::{
    Backend, TestApp, build, data, event, eventually, example_app, example_app_on, on_each_broker,
    output_of, repo, step, troupe_bin,
};

#[tokio::test(flavor = "multi_thread")]
async fn the_order_cascade_crosses_four_languages() {
    let app = example_app("orders");
    let host = app.start().await;
    let mut placed = event(
        "order.placed",
        json!({"order_id": "o-7", "customer": "ada", "lines": [{"sku": "tea", "qty": 3, "price_cents": 250}]}),
    );
    placed.subject = Some("o-7".into());
    host.broker.publish(vec![placed.clone()]).await.unwrap();
    host.wait_idle(Duration::from_millis(300)).await.unwrap();
    let trace = host.broker.trace(&placed.id).await.unwrap();
    let by_kind = |k: &str| {
        trace
            .iter()
            .find(|e| e.kind == k)
            .unwrap_or_else(|| panic!("no {k} in the trace"))
    };
    // Rust -> Python -> C -> JavaScript, and Rust on the other branch.
    assert_eq!(
        by_kind("order.validated").source,
        "troupe://orders/step/order-validate"
    );
    let charged = by_kind("payment.charged");
    assert_eq!(charged.source, "troupe://orders/step/payment-charge");
    assert_eq!(data(charged)["amount_cents"], 750);
    let shipped = by_kind("order.shipped");
    assert_eq!(shipped.causation_id(), Some(charged.id.as_str()));
    assert!(
        data(shipped)["tracking"]
            .as_str()
            .unwrap()
            .starts_with("TRK")
    );
    let notified = by_kind("customer.notified");
    assert_eq!(notified.causation_id(), Some(shipped.id.as_str()));
    assert!(
        data(notified)["message"]
            .as_str()
            .unwrap()
            .contains("o-7 is on its way")
    );
    assert!(trace.iter().any(|e| e.kind == "inventory.reserved"));
    assert!(host.broker.dlq_list().await.unwrap().is_empty());
    host.shutdown().await;
}

/// A JavaScript step has what a step in any language has: a timer that
/// fires, clocks that tell the time, and random numbers that differ from
/// one instance to the next. componentize-js stubs out the engine features
/// it is told to leave out: built without `clocks`, a timer trapped (and so,
/// now and then, did an engine waiting on a slow `fetch`); built without
/// `random`, every fresh instance drew the same numbers.
#[tokio::test(flavor = "multi_thread")]
async fn a_javascript_step_has_timers_clocks_and_random_numbers() {
    let dir = repo().join("tests/callers/js-clock");
    let component = tokio::task::spawn_blocking(move || build(&dir))
        .await
        .unwrap();
    let app = TestApp::new(&step("clock", &component, "instances = \"fresh\""));
    let host = app.start().await;
    let ticks: Vec<_> = (0..2)
        .map(|_| event("test.tick", json!({"wait_ms": 30})))
        .collect();
    host.broker.publish(ticks.clone()).await.unwrap();
    let mut seen = vec![];
    for tick in &ticks {
        let report = output_of(&host, tick, "test.tocked", Duration::from_secs(20)).await;
        seen.push(data(&report));
    }
    host.shutdown().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    for r in &seen {
        assert!(
            r["waited_ms"].as_f64().unwrap() >= 25.0,
            "the timer waited: {r}"
        );
        let told = r["now_ms"].as_f64().unwrap();
        assert!(
            (told - now).abs() < 60_000.0,
            "Date.now() tells the time: {r}"
        );
    }
    assert_ne!(
        seen[0]["crypto_random"], seen[1]["crypto_random"],
        "{seen:?}"
    );
    assert_ne!(seen[0]["math_random"], seen[1]["math_random"], "{seen:?}");
}

/// Text that is not ASCII (accents, a combining mark, CJK, emoji) and text
/// that must be escaped in JSON (quotes, backslash, newline, tab, a control
/// character) crosses Rust, Python, C and JavaScript and arrives as it was
/// sent, in every event of the cascade.
async fn text_crosses_four_languages_unchanged(b: Backend) {
    const TEXT: &str = "Zoë e\u{301} 東京 🎉🇫🇷 \"q\" back\\slash \\u00eb\nline\ttab\u{1} end";
    let app = example_app_on(b, "orders");
    let host = app.start().await;
    let mut placed = event(
        "order.placed",
        json!({"order_id": "o-8", "customer": TEXT, "lines": [{"sku": "tea", "qty": 1, "price_cents": 250}]}),
    );
    placed.subject = Some("o-8".into());
    host.broker.publish(vec![placed.clone()]).await.unwrap();
    let trace = eventually(Duration::from_secs(30), "customer.notified", async || {
        let t = host.broker.trace(&placed.id).await.unwrap();
        t.iter().any(|e| e.kind == "customer.notified").then_some(t)
    })
    .await;
    for kind in [
        "order.placed",
        "order.validated",
        "payment.charged",
        "order.shipped",
        "customer.notified",
    ] {
        let e = trace
            .iter()
            .find(|e| e.kind == kind)
            .unwrap_or_else(|| panic!("no {kind}"));
        let customer = data(e)["customer"].as_str().map(str::to_owned);
        assert_eq!(
            customer.as_deref().map(str::as_bytes),
            Some(TEXT.as_bytes()),
            "{kind} ({}): {}",
            e.source,
            String::from_utf8_lossy(&e.data)
        );
    }
    assert!(host.broker.dlq_list().await.unwrap().is_empty());
    host.shutdown().await;
}

on_each_broker!(text_crosses_four_languages_unchanged);

#[test]
fn the_same_step_gives_the_same_answer_in_every_language() {
    let plugins = repo().join("plugins");
    let mut manifest = String::new();
    for (name, dir) in [
        ("ship-rust", "shipping-dispatch"),
        ("ship-python", "shipping-dispatch-py"),
        ("ship-js", "shipping-dispatch-js"),
        ("ship-c", "shipping-dispatch-c"),
    ] {
        manifest += &step(name, &build(&plugins.join(dir)), "");
    }
    let app = TestApp::new(&manifest);
    let rt = Runtime::new().unwrap();
    let steps = load_steps(&rt, &app.app()).unwrap();
    let paid = event(
        "payment.charged",
        json!({"order_id": "o-\"42\"\n", "customer": "zoë", "amount_cents": 5}),
    );
    let answers: Vec<(String, serde_json::Value)> = steps
        .iter()
        .map(|s| {
            let out = s
                .handle(&paid, 1)
                .unwrap_or_else(|f| panic!("{}: {f}", s.name()));
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].kind, "order.shipped");
            (
                s.name().to_string(),
                serde_json::from_slice(&out[0].data).unwrap(),
            )
        })
        .collect();
    assert_eq!(answers.len(), 4);
    for (name, answer) in &answers[1..] {
        assert_eq!(
            answer, &answers[0].1,
            "{name} differs from {}",
            answers[0].0
        );
    }
    assert_eq!(
        answers[0].1["order_id"], "o-\"42\"\n",
        "escapes survive every language"
    );
    assert_eq!(answers[0].1["customer"], "zoë");
    // Same contract in every language.
    let contracts: Vec<_> = steps
        .iter()
        .map(|s| (s.contract.consumed_kinds(), s.contract.produces.len()))
        .collect();
    assert!(contracts.windows(2).all(|w| w[0] == w[1]), "{contracts:?}");
}

#[test]
fn new_then_build_then_conformance_passes_for_each_language() {
    // Outside this repository, troupe finds the guest toolchains on PATH or
    // through these variables; point them at what scripts/toolchains made.
    let tools = repo().join("toolchains");
    let troupe = || {
        let mut c = Command::new(troupe_bin());
        c.env(
            "TROUPE_COMPONENTIZE_PY",
            tools.join("python/.venv/bin/componentize-py"),
        )
        .env(
            "TROUPE_COMPONENTIZE_JS",
            tools.join("js/node_modules/.bin/componentize-js"),
        );
        c
    };
    let parent = tempfile::tempdir().unwrap();
    for lang in ["rust", "python", "js", "c"] {
        let name = format!("hello-{lang}");
        let run = |args: &[&str]| {
            let out = troupe()
                .args(args)
                .current_dir(parent.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "troupe {args:?} failed:\n{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        run(&["new", &name, "--lang", lang]);
        let dir = parent.path().join(&name);
        assert!(dir.join("README.md").exists(), "{lang}: a README");
        let component = run(&["build", &name]).trim().to_string();
        let report = run(&["conformance", &component]);
        assert!(report.trim_end().ends_with("conforms"), "{lang}:\n{report}");
        assert!(!report.contains("FAIL"), "{lang}:\n{report}");
        // Built once: a second build is a cache hit (cargo's own, for Rust).
        let again = troupe()
            .args(["build", &name])
            .current_dir(parent.path())
            .output()
            .unwrap();
        if lang != "rust" {
            assert!(
                String::from_utf8_lossy(&again.stderr).contains("up to date"),
                "{lang}: rebuilt"
            );
        }
    }
    let out = Command::new(troupe_bin())
        .args(["new", "hello-c", "--lang", "c"])
        .current_dir(parent.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = Command::new(troupe_bin())
        .args(["new", "x", "--lang", "cobol"])
        .current_dir(parent.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown language \"cobol\""));
}
