//! The `troupe` binary as a user runs it: publish, run, DLQ, trace, build,
//! and the errors it gives for bad input.

use std::path::Path;
use std::process::{Command, Output};

use troupe_tests::{TestApp, guest, plugin, repo, step, troupe_bin};

/// Run `troupe ARGS` in `app` (shared with the other modules that drive
/// the binary).
pub(crate) fn troupe(args: &[&str], app: &Path) -> Output {
    Command::new(troupe_bin())
        .args(args)
        .current_dir(app)
        .env("TROUPE_LOG", "warn")
        .output()
        .expect("troupe runs")
}

pub(crate) fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn validate_app() -> TestApp {
    TestApp::new(&step("order-validate", &plugin("order-validate"), ""))
}

#[test]
fn publish_run_dlq_show_replay_and_trace() {
    let app = validate_app();
    let d = app.path().to_str().unwrap();
    let good =
        r#"{"order_id":"o-1","customer":"ada","lines":[{"sku":"tea","qty":1,"price_cents":5}]}"#;
    let empty = r#"{"order_id":"o-2","customer":"ada","lines":[]}"#;
    let out = ok(&troupe(
        &["--json", "publish", d, "order.placed", "--data", good],
        app.path(),
    ));
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["published"][0]
        .as_str()
        .unwrap()
        .to_string();
    ok(&troupe(
        &[
            "publish",
            d,
            "order.placed",
            "--data",
            empty,
            "--subject",
            "o-2",
        ],
        app.path(),
    ));

    let summary = ok(&troupe(&["run", d, "--until-idle"], app.path()));
    assert!(summary.contains("order-validate"), "{summary}");
    assert!(
        summary.contains("dead-letter queue: 1 message(s)"),
        "{summary}"
    );

    let tree = ok(&troupe(&["trace", &id], app.path()));
    assert!(tree.starts_with("order.placed"), "{tree}");
    assert!(tree.contains("\n  order.validated"), "{tree}");

    let list: serde_json::Value =
        serde_json::from_str(&ok(&troupe(&["--json", "dlq", "list"], app.path()))).unwrap();
    let dead = &list[0];
    assert_eq!(dead["class"], "rejected");
    let dlq_id = dead["id"].as_str().unwrap();
    let shown = ok(&troupe(&["dlq", "show", dlq_id], app.path()));
    assert!(
        shown.contains("o-2 has no lines") && shown.contains("\"subject\": \"o-2\""),
        "{shown}"
    );

    ok(&troupe(&["dlq", "replay", dlq_id], app.path()));
    let again = ok(&troupe(&["run", d, "--until-idle"], app.path()));
    // Rejected again (the order is still empty), under a new DLQ id.
    assert!(again.contains("dead-letter queue: 1 message(s)"), "{again}");
    assert!(!again.contains(dlq_id), "{again}");
    assert!(err(&troupe(&["dlq", "show", dlq_id], app.path())).contains("no dead letter"));
}

#[test]
fn malformed_events_are_refused_on_publish_and_nothing_is_stored() {
    let app = validate_app();
    let d = app.path().to_str().unwrap();
    let e = err(&troupe(
        &["publish", d, "order.placed", "--data", "{not json"],
        app.path(),
    ));
    assert!(e.contains("--data is not valid JSON"), "{e}");
    let e = err(&troupe(
        &["publish", d, "Order Placed", "--data", "{}"],
        app.path(),
    ));
    assert!(e.contains("is not an event type"), "{e}");
    let e = err(&troupe(
        &["publish", d, "order.placed", "--data", r#"{"order_id":1}"#],
        app.path(),
    ));
    assert!(
        e.contains("would break the contract of step `order-validate`"),
        "{e}"
    );
    let file = app.path().join("bad.jsonl");
    std::fs::write(&file, "{\"type\":\"order.placed\",\"data\":{}}\n[1,2]\n").unwrap();
    let e = err(&troupe(
        &["publish", d, "--file", file.to_str().unwrap()],
        app.path(),
    ));
    assert!(e.contains("bad.jsonl:2: not an event"), "{e}");
    // A contract breach names the line and the subject, and says that
    // nothing was published.
    let good =
        r#"{"order_id":"o-1","customer":"ada","lines":[{"sku":"t","qty":1,"price_cents":5}]}"#;
    std::fs::write(
        &file,
        format!(
            "{{\"type\":\"order.placed\",\"subject\":\"o-1\",\"data\":{good}}}\n\
             {{\"type\":\"order.placed\",\"subject\":\"o-2\",\"data\":{{\"order_id\":2}}}}\n"
        ),
    )
    .unwrap();
    let e = err(&troupe(
        &["publish", d, "--file", file.to_str().unwrap()],
        app.path(),
    ));
    assert!(
        e.contains("bad.jsonl:2 (subject o-2): this order.placed event would break the contract")
            && e.contains("nothing was published"),
        "{e}"
    );
    // Data of a content type the contract does not declare, whatever it
    // holds; an attribute with a control character.
    let order =
        r#"{"order_id":"o-1","customer":"ada","lines":[{"sku":"t","qty":1,"price_cents":5}]}"#;
    std::fs::write(
        &file,
        "{\"type\":\"order.placed\",\"datacontenttype\":\"application/xml\",\"data\":\"<order/>\"}\n",
    )
    .unwrap();
    let e = err(&troupe(
        &["publish", d, "--file", file.to_str().unwrap()],
        app.path(),
    ));
    assert!(
        e.contains("\"application/xml\", but the contract declares application/json"),
        "{e}"
    );
    std::fs::write(
        &file,
        format!("{{\"type\":\"order.placed\",\"subject\":\"o-1\\u001b[2J\",\"data\":{order}}}\n"),
    )
    .unwrap();
    let e = err(&troupe(
        &["publish", d, "--file", file.to_str().unwrap()],
        app.path(),
    ));
    assert!(e.contains("`subject` holds control characters"), "{e}");
    // Extensions that address a group or a run's step are the host's own,
    // with or without --no-check.
    std::fs::write(
        &file,
        "{\"type\":\"order.placed\",\"trouperun\":\"r\",\"data\":{}}\n",
    )
    .unwrap();
    let e = err(&troupe(
        &["publish", d, "--no-check", "--file", file.to_str().unwrap()],
        app.path(),
    ));
    assert!(
        e.contains("bad.jsonl:1: the extension `trouperun` is set by the host only"),
        "{e}"
    );
    // A type the API refuses is refused from a file too (one check for
    // events from outside), with or without --no-check.
    std::fs::write(&file, "{\"type\":\"Order Placed\",\"data\":{}}\n").unwrap();
    for args in [vec!["--no-check"], vec![]] {
        let mut a = vec!["publish", d, "--file", file.to_str().unwrap()];
        a.extend(args);
        let e = err(&troupe(&a, app.path()));
        assert!(
            e.contains("bad.jsonl:1: \"Order Placed\" is not an event type"),
            "{e}"
        );
    }
    let summary = ok(&troupe(&["run", d, "--until-idle"], app.path()));
    assert!(summary.contains("dead-letter queue: empty"), "{summary}");
    assert!(
        !summary
            .lines()
            .any(|l| l.starts_with("order-validate") && !l.contains(" 0 ")),
        "{summary}"
    );
}

/// An app may be named anything: the sources of its events are still URI
/// references, and what `publish` queues is delivered.
#[test]
fn an_app_named_anything_delivers_what_is_published() {
    let m = format!(
        "name = \"Team A's orders/ü\"\n{}",
        step("order-validate", &plugin("order-validate"), "")
    );
    let app = TestApp::new(&m);
    let d = app.path().to_str().unwrap();
    let order =
        r#"{"order_id":"o-1","customer":"ada","lines":[{"sku":"t","qty":1,"price_cents":5}]}"#;
    ok(&troupe(
        &["publish", d, "order.placed", "--data", order],
        app.path(),
    ));
    let summary = ok(&troupe(&["--json", "run", d, "--until-idle"], app.path()));
    let v: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(v["steps"]["order-validate"]["handled"], 1, "{summary}");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    let app = validate_app();
    let mut child = Command::new(troupe_bin())
        .args(["--json", "check", app.path().to_str().unwrap()])
        .env("TROUPE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap(); // then closed, as `head -c 10` does
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
}

#[test]
fn trace_says_what_it_takes_when_it_finds_nothing() {
    let app = validate_app();
    let d = app.path().to_str().unwrap();
    ok(&troupe(
        &[
            "publish",
            d,
            "order.placed",
            "--data",
            r#"{"order_id":"o-1","customer":"a","lines":[]}"#,
            "--subject",
            "ord-2002",
        ],
        app.path(),
    ));
    let e = err(&troupe(&["trace", "ord-2002", "--app", d], app.path()));
    assert!(e.contains("not a subject or a business key"), "{e}");
}

#[test]
fn a_malformed_manifest_names_the_file_line_and_key() {
    let app = TestApp::new("[steps.a]\ncomponent = \"a.wasm\"\nlimits = { memroy_mb = 8 }\n");
    let e = err(&troupe(
        &["run", app.path().to_str().unwrap(), "--until-idle"],
        app.path(),
    ));
    assert!(
        e.contains("troupe.toml") && e.contains("memroy_mb") && e.contains("line 3"),
        "{e}"
    );
    let e = err(&troupe(&["run", "/nonexistent/app"], app.path()));
    assert!(e.contains("/nonexistent/app/troupe.toml"), "{e}");
    let app = TestApp::new("[steps.a]\ncomponent = \"missing.wasm\"\n");
    let e = err(&troupe(&["run", app.path().to_str().unwrap()], app.path()));
    assert!(e.contains("step `a`") && e.contains("missing.wasm"), "{e}");
}

#[test]
fn build_compiles_a_rust_plugin_and_reports_what_it_made() {
    let dir = repo().join("plugins/payment-charge");
    let out: serde_json::Value = serde_json::from_str(&ok(&troupe(
        &["--json", "build", dir.to_str().unwrap()],
        &repo(),
    )))
    .unwrap();
    let component = out[0]["component"].as_str().unwrap();
    assert!(
        component.ends_with("payment_charge.wasm") && Path::new(component).exists(),
        "{out}"
    );
    let empty = tempfile::tempdir().unwrap();
    let e = err(&troupe(&["build", empty.path().to_str().unwrap()], &repo()));
    assert!(e.contains("cannot tell the language of"), "{e}");
}

#[test]
fn check_reports_broken_wiring_and_run_refuses_it() {
    let fine = TestApp::new(
        &(step("order-validate", &plugin("order-validate"), "")
            + &step("payment-charge", &plugin("payment-charge"), "")),
    );
    let out = ok(&troupe(
        &["check", fine.path().to_str().unwrap()],
        fine.path(),
    ));
    assert!(
        out.contains("ok    step payment-charge") && out.trim_end().ends_with("no errors"),
        "{out}"
    );

    let broken = TestApp::new(
        &(step("payment-charge", &plugin("payment-charge"), "")
            + &step("strict", &guest("strict"), "")),
    );
    let o = troupe(&["check", broken.path().to_str().unwrap()], broken.path());
    assert!(!o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("ERROR payment.charged from `payment-charge` to `strict`: the consumer requires /express_code, which the producer may leave out"),
        "{text}"
    );
    let e = err(&troupe(
        &["run", broken.path().to_str().unwrap(), "--until-idle"],
        broken.path(),
    ));
    assert!(
        e.contains("wiring is broken") && e.contains("express_code"),
        "{e}"
    );
}

/// Validate and charge in the choreography, and a refund step that takes
/// commands only.
fn payment_app() -> TestApp {
    TestApp::new(
        &(step("order-validate", &plugin("order-validate"), "")
            + &step("payment-charge", &plugin("payment-charge"), "")
            + &step(
                "payment-refund",
                &plugin("payment-refund"),
                "choreography = false",
            )),
    )
}

#[test]
fn graph_draws_who_consumes_and_produces_what() {
    let app = payment_app();
    std::fs::create_dir(app.path().join("flows")).unwrap();
    let flow = "input = \"order.placed\"\n[steps.validate]\nstep = \"order-validate\"\n[steps.charge]\nstep = \"payment-charge\"\ninput = \"validate\"\n";
    std::fs::write(app.path().join("flows/pay.toml"), flow).unwrap();
    let d = app.path().to_str().unwrap();
    let m = ok(&troupe(&["graph", d], app.path()));
    for line in [
        "flowchart LR",
        "e_order_placed --> s_order_validate",
        "s_order_validate --> e_order_validated",
        "e_order_validated --> s_payment_charge",
        "e_payment_charged -.-> s_payment_refund",
        "subgraph flow_pay[\"flow pay\"]",
        "f_pay_validate --> f_pay_charge",
        "f_pay_charge -.-> s_payment_charge",
    ] {
        assert!(m.contains(line), "{line:?} in\n{m}");
    }
    let dot = ok(&troupe(&["graph", d, "--format", "dot"], app.path()));
    assert!(
        dot.starts_with("digraph troupe {") && dot.contains("e_order_placed -> s_order_validate;"),
        "{dot}"
    );
    assert!(err(&troupe(&["graph", d, "--format", "png"], app.path())).contains("unknown format"));
}

#[test]
fn docs_describe_every_event_as_asyncapi_3() {
    let app = payment_app();
    let d = app.path().to_str().unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&ok(&troupe(&["docs", d], app.path()))).unwrap();

    // A valid AsyncAPI 3.0.0 document, by the specification's own schema
    // (and the schema does refuse a broken one).
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/asyncapi/3.0.0.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&spec).unwrap();
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let mut broken = doc.clone();
    broken["operations"]["order-validate.receive.order.placed"]["action"] = "listen".into();
    assert!(!validator.is_valid(&broken));

    // What the contracts say, and who sends and receives it.
    assert_eq!(doc["channels"]["order.placed"]["address"], "order.placed");
    let placed = &doc["components"]["messages"]["order.placed-1.0.0"];
    assert!(
        placed["payload"]["required"]
            .as_array()
            .unwrap()
            .contains(&"order_id".into()),
        "{placed}"
    );
    assert_eq!(
        placed["headers"]["properties"]["ce-type"]["const"],
        "order.placed"
    );
    let ops = &doc["operations"];
    assert_eq!(
        ops["order-validate.receive.order.placed"]["action"],
        "receive"
    );
    assert_eq!(ops["order-validate.send.order.validated"]["action"], "send");
    assert_eq!(
        ops["payment-charge.receive.order.validated"]["action"],
        "receive"
    );
    let refund = ops["payment-refund.receive.payment.charged"]["summary"]
        .as_str()
        .unwrap();
    assert!(refund.contains("command only"), "{refund}");

    // On NATS the address is the subject; --output writes the same document.
    let out = app.path().join("asyncapi.json");
    let o = out.to_str().unwrap();
    ok(&troupe(
        &[
            "--broker",
            "nats://127.0.0.1:4222/teamx",
            "docs",
            d,
            "--output",
            o,
        ],
        app.path(),
    ));
    let on_nats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(
        on_nats["channels"]["order.placed"]["address"],
        "teamx.ev.order.placed"
    );
    assert_eq!(on_nats["servers"]["nats"]["protocol"], "nats");
    assert!(validator.is_valid(&on_nats));
}

/// A team's Python step, outside this repository: `troupe build` finds the
/// toolchain that came with this `troupe` (no variable set); once built,
/// `check`, `graph`, `docs` and `publish` need no toolchain and describe the
/// step from the contract cache without loading any guest; a changed
/// source is built again.
#[test]
fn a_built_step_needs_no_toolchain_and_is_described_from_the_cache() {
    let parent = tempfile::tempdir().unwrap();
    let at = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(troupe_bin())
            .args(args)
            .current_dir(parent.path())
            .env_remove("TROUPE_COMPONENTIZE_PY")
            .env("TROUPE_LOG", "debug")
            .envs(env.iter().copied())
            .output()
            .expect("troupe runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "troupe {args:?}: {text}");
        text
    };
    at(&["new", "greet", "--lang", "python"], &[]);
    at(&["build", "greet"], &[]);
    std::fs::write(
        parent.path().join("troupe.toml"),
        "name = \"greeter\"\n[steps.greet]\nplugin = \"greet\"\n",
    )
    .unwrap();
    // The first command loads the step once and keeps its contract.
    at(&["check", "."], &[]);
    let no_tool = [("TROUPE_COMPONENTIZE_PY", "/nonexistent/componentize-py")];
    for args in [
        vec!["check", "."],
        vec!["graph", "."],
        vec!["docs", "."],
        vec![
            "publish",
            ".",
            "greet.requested",
            "--data",
            r#"{"id":"g-1"}"#,
        ],
    ] {
        let said = at(&args, &no_tool);
        assert!(
            !said.contains("compiled in") && !said.contains("loaded precompiled"),
            "{args:?} loaded a guest: {said}"
        );
    }
    // The contract is still checked, from the cache.
    let refused = Command::new(troupe_bin())
        .args(["publish", ".", "greet.requested", "--data", r#"{"id":""}"#])
        .current_dir(parent.path())
        .env("TROUPE_COMPONENTIZE_PY", "/nonexistent/componentize-py")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("would break the contract of step `greet`")
    );
    // A changed source is built again (with the toolchain found as above).
    let app_py = parent.path().join("greet/app.py");
    let mut source = std::fs::read_to_string(&app_py).unwrap();
    source.push_str("\n# changed\n");
    std::fs::write(&app_py, source).unwrap();
    let said = at(&["check", "."], &[]);
    assert!(said.contains("compiled in"), "{said}");
}

/// `troupe run APP &` then `troupe start` at once: start waits for the host
/// to come up instead of saying there is none.
#[test]
fn start_right_after_run_waits_for_the_host() {
    let app = troupe_tests::example_app("orders");
    let d = app.path().to_str().unwrap();
    let flows = app.path().join("flows");
    std::fs::create_dir_all(&flows).unwrap();
    std::fs::copy(
        repo().join("examples/orders/flows/fulfil.toml"),
        flows.join("fulfil.toml"),
    )
    .unwrap();
    // Build the steps first (`check` does): what is tested is the wait for a
    // starting host, not how long four toolchains take on a loaded machine.
    ok(&troupe(&["check", d], app.path()));
    let mut host = Command::new(troupe_bin())
        .args(["run", d, "--listen", "127.0.0.1:0"])
        .env("TROUPE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let order =
        r#"{"order_id":"o-1","customer":"ada","lines":[{"sku":"tea","qty":1,"price_cents":5}]}"#;
    let started = troupe(
        &["start", "fulfil", "--input", order, "--wait", "--app", d],
        app.path(),
    );
    // With an idempotency key, starting again prints the same run.
    let keyed = |key: &str| {
        let args = [
            "start",
            "fulfil",
            "--input",
            order,
            "--idempotency-key",
            key,
            "--app",
            d,
        ];
        ok(&troupe(&args, app.path())).trim().to_string()
    };
    let (first, again, other) = (keyed("o-1"), keyed("o-1"), keyed("o-1b"));
    let long = "k".repeat(300);
    let bad = troupe(
        &[
            "start",
            "fulfil",
            "--input",
            order,
            "--idempotency-key",
            &long,
            "--app",
            d,
        ],
        app.path(),
    );
    let _ = host.kill();
    let _ = host.wait();
    let out = ok(&started);
    assert!(out.contains("completed"), "{out}");
    assert_eq!(first, again);
    assert_ne!(first, other);
    assert!(err(&bad).contains("Idempotency-Key"), "{}", err(&bad));
}

/// `--broker` is refused where it would do nothing, and named where it
/// applies.
#[test]
fn broker_is_refused_by_commands_it_does_nothing_for() {
    let app = validate_app();
    let d = app.path().to_str().unwrap();
    for args in [
        vec!["--broker", "embedded", "check", d],
        vec!["--broker", "embedded", "build", d],
        vec!["graph", d, "--broker", "embedded"],
    ] {
        let e = err(&troupe(&args, app.path()));
        assert!(
            e.contains("--broker does nothing for `troupe"),
            "{args:?}: {e}"
        );
    }
    // From the environment it is a default for the commands that use it,
    // and no error for the others.
    let checked = Command::new(troupe_bin())
        .args(["check", d])
        .env("TROUPE_BROKER", "embedded")
        .output()
        .unwrap();
    ok(&checked);
}
