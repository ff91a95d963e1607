//! Orchestration and hybrid flows through the HTTP API, against real
//! components, on each broker (embedded and NATS): runs complete, retry,
//! time out, join, branch, compensate, hand work to the choreography; the
//! API refuses what it must.

use std::time::Duration;

use serde_json::{Value, json};
use troupe_tests::process::troupe_check;
use troupe_tests::{
    ApiHost, Backend, TestApp, guest, on_each_broker_blocking, plugin, plugin_steps, step,
};

/// An app with the order steps, the test `gate` (ships, or fails on
/// purpose), the couriers, and `flows`: (file name, TOML).
pub(crate) fn app(b: Backend, flows: &[(&str, &str)]) -> TestApp {
    app_with(b, flows, "limits = { timeout_ms = 20000 }")
}

/// [`app`], with `gate_limits` for the `gate` step.
pub(crate) fn app_with(b: Backend, flows: &[(&str, &str)], gate_limits: &str) -> TestApp {
    let mut m = String::from("name = \"shop\"\n");
    for p in [
        "order-validate",
        "inventory-reserve",
        "payment-charge",
        "shipping-dispatch",
        "courier-pickup",
        "courier-deliver",
    ] {
        m += &step(p, &plugin(p), "");
    }
    for p in ["inventory-release", "payment-refund"] {
        m += &step(p, &plugin(p), "choreography = false");
    }
    m += &step(
        "gate",
        &guest("gate"),
        &format!("choreography = false\n{gate_limits}"),
    );
    let app = TestApp::on(b, &m);
    std::fs::create_dir(app.path().join("flows")).unwrap();
    for (name, text) in flows {
        std::fs::write(app.path().join("flows").join(format!("{name}.toml")), text).unwrap();
    }
    app
}

pub(crate) const FULFIL: &str = r#"
input = "order.placed"
timeout_ms = 20000

[steps.validate]
step = "order-validate"

[steps.reserve]
step = "inventory-reserve"
input = "validate"
retry = { max_attempts = 4, backoff_ms = 20 }
compensate = "inventory-release"

[steps.charge]
step = "payment-charge"
input = "validate"
compensate = "payment-refund"

[steps.ship]
step = "gate"
input = "charge"
after = ["reserve"]
timeout_ms = 300
retry = { max_attempts = 3, backoff_ms = 20 }
"#;

on_each_broker_blocking!(
    a_run_completes_and_its_status_shows_every_step_and_the_join,
    a_transient_failure_is_resubmitted_and_succeeds,
    a_permanent_failure_runs_the_compensations_in_reverse_order,
    a_step_timeout_is_retried_then_fails_the_run,
    a_run_timeout_ends_the_run_timed_out,
    a_retry_whose_message_says_timed_out_is_not_a_timeout,
    a_step_cut_at_its_time_limit_times_out,
    a_condition_picks_a_branch,
    a_hybrid_step_finishes_on_its_completion_event,
    a_hybrid_step_times_out_without_its_completion_event,
    the_api_refuses_requests_without_the_token_and_bad_requests,
    a_commands_only_step_is_not_subscribed_to_the_choreography,
    a_start_with_an_idempotency_key_already_used_returns_that_run,
);

pub(crate) fn order(id: &str, customer: &str) -> Value {
    json!({"order_id": id, "customer": customer, "lines": [{"sku": "tea", "qty": 2, "price_cents": 300}]})
}

/// The event types of a run's trace, in order.
fn trace_kinds(h: &ApiHost, run: &Value) -> Vec<String> {
    let trace = h
        .client
        .get(&format!("/v1/traces/{}", run["id"].as_str().unwrap()))
        .unwrap();
    trace
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

pub(crate) fn state<'a>(run: &'a Value, step: &str) -> &'a str {
    run["steps"][step]["state"]
        .as_str()
        .unwrap_or_else(|| panic!("no step {step} in {run:#}"))
}

fn a_run_completes_and_its_status_shows_every_step_and_the_join(b: Backend) {
    let app = app(b, &[("fulfil", FULFIL)]);
    let h = ApiHost::start(&app);
    let run = h.run("fulfil", order("o-1", "ada"));
    assert_eq!(run["state"], "completed", "{run:#}");
    for s in ["validate", "reserve", "charge", "ship"] {
        assert_eq!(state(&run, s), "completed");
        assert_eq!(run["steps"][s]["attempts"], 1);
        assert!(run["steps"][s]["started"].is_string() && run["steps"][s]["finished"].is_string());
    }
    assert_eq!(run["steps"]["validate"]["output"]["total_cents"], 600);
    assert_eq!(run["steps"]["charge"]["output_type"], "payment.charged");
    assert_eq!(run["steps"]["ship"]["output"]["tracking"], "T-1");
    // The join: ship started after both branches finished.
    let at = |s: &str, k: &str| run["steps"][s][k].as_str().unwrap().to_string();
    assert!(at("ship", "started") >= at("reserve", "finished"));
    assert!(at("ship", "started") >= at("charge", "finished"));
    // Commands and replies went through the broker: the trace shows them.
    let kinds = trace_kinds(&h, &run);
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "troupe.step.completed")
            .count(),
        4,
        "{kinds:?}"
    );
    assert!(
        kinds.iter().any(|k| k == "order.placed") && kinds.iter().any(|k| k == "payment.charged"),
        "{kinds:?}"
    );
}

fn a_transient_failure_is_resubmitted_and_succeeds(b: Backend) {
    let app = app(b, &[("fulfil", FULFIL)]);
    let h = ApiHost::start(&app);
    let run = h.run("fulfil", order("o-2", "flaky"));
    assert_eq!(run["state"], "completed", "{run:#}");
    assert_eq!(run["steps"]["ship"]["attempts"], 3);
    assert_eq!(run["steps"]["ship"]["errors"].as_array().unwrap().len(), 2);
    assert_eq!(
        run["steps"]["ship"]["output"]["tracking"], "T-3",
        "the guest saw attempt 3"
    );
    // The inventory step's own retries (a back-ordered sku) work too.
    let mut input = order("o-3", "ada");
    input["lines"][0]["sku"] = json!("backorder");
    let run = h.run("fulfil", input);
    assert_eq!(run["state"], "completed", "{run:#}");
    assert_eq!(run["steps"]["reserve"]["attempts"], 3);
}

fn a_permanent_failure_runs_the_compensations_in_reverse_order(b: Backend) {
    let app = app(b, &[("fulfil", FULFIL)]);
    let h = ApiHost::start(&app);
    let run = h.run("fulfil", order("o-4", "mallory"));
    assert_eq!(run["state"], "compensated", "{run:#}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("mallory may not have it"),
        "{run:#}"
    );
    assert_eq!(state(&run, "ship"), "failed");
    assert_eq!(
        run["steps"]["ship"]["attempts"], 1,
        "a reject is not retried"
    );
    assert_eq!(state(&run, "reserve"), "compensated");
    assert_eq!(state(&run, "charge"), "compensated");
    // Undone in reverse order of completion (when the two finished in the
    // same millisecond, either order is).
    let done = |s: &str| run["steps"][s]["finished"].as_str().unwrap().to_string();
    let (first_done, last_done) = if done("reserve") < done("charge") {
        ("reserve", "charge")
    } else {
        ("charge", "reserve")
    };
    let undone = |s: &str| {
        run["steps"][format!("{s}~undo")]["finished"]
            .as_str()
            .unwrap()
            .to_string()
    };
    if done(first_done) != done(last_done) {
        assert!(
            undone(last_done) <= undone(first_done),
            "{last_done} is undone first: {run:#}"
        );
    }
    // What the orchestrator keeps for itself is not in the status.
    for internal in [
        "deadline_ms",
        "created_ms",
        "undo",
        "completions",
        "timed_out",
    ] {
        assert!(run.get(internal).is_none(), "{internal} in {run:#}");
    }
    for internal in ["command_id", "deadline_ms", "completed_seq"] {
        assert!(run["steps"]["charge"].get(internal).is_none(), "{internal}");
    }
    assert_eq!(
        run["steps"]["charge~undo"]["output"]["payment_id"],
        "pay-o-4"
    );
    assert_eq!(
        run["steps"]["reserve~undo"]["output"]["reservation"],
        "res-o-4"
    );
}

fn a_step_timeout_is_retried_then_fails_the_run(b: Backend) {
    let app = app(b, &[("fulfil", FULFIL)]);
    let h = ApiHost::start(&app);
    let started = std::time::Instant::now();
    let run = h.run("fulfil", order("o-5", "slow"));
    assert_eq!(state(&run, "ship"), "timed_out", "{run:#}");
    assert_eq!(run["steps"]["ship"]["attempts"], 3);
    // The worker cuts a command at its flow step's timeout, counted from
    // when it started it (start-to-close), and says so in its reply.
    let first = run["steps"]["ship"]["errors"][0].as_str().unwrap();
    assert!(
        first.starts_with("attempt 1: timeout: time limit of 300 ms per message exceeded"),
        "{first}"
    );
    assert_eq!(run["state"], "compensated");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "three attempts of 300 ms"
    );
}

/// How a step failed is decided by what happened, not by the words of its
/// message: `gateway` asks for a retry saying "gateway timed out".
fn a_retry_whose_message_says_timed_out_is_not_a_timeout(b: Backend) {
    let app = app(b, &[("fulfil", FULFIL)]);
    let h = ApiHost::start(&app);
    let run = h.run("fulfil", order("o-5b", "gateway"));
    assert_eq!(state(&run, "ship"), "failed", "{run:#}");
    assert_eq!(run["steps"]["ship"]["attempts"], 3);
    let errors = run["steps"]["ship"]["errors"].as_array().unwrap();
    assert!(
        errors[0].as_str().unwrap() == "attempt 1: retry: gateway timed out",
        "{errors:?}"
    );
    assert_eq!(run["state"], "compensated");
}

/// A step the sandbox cuts at its time limit per message (300 ms, well
/// within the flow step's 10 s) timed out: it did not fail of itself.
fn a_step_cut_at_its_time_limit_times_out(b: Backend) {
    let flow = FULFIL.replace("timeout_ms = 300", "timeout_ms = 10000");
    let app = app_with(b, &[("fulfil", &flow)], "limits = { timeout_ms = 300 }");
    let h = ApiHost::start(&app);
    let run = h.run("fulfil", order("o-5c", "slow"));
    assert_eq!(state(&run, "ship"), "timed_out", "{run:#}");
    assert_eq!(run["steps"]["ship"]["attempts"], 3);
    let first = run["steps"]["ship"]["errors"][0].as_str().unwrap();
    assert!(
        first.starts_with("attempt 1: timeout: ") && first.contains("300 ms"),
        "{first}"
    );
    assert_eq!(run["state"], "compensated");
}

fn a_run_timeout_ends_the_run_timed_out(b: Backend) {
    let flow = FULFIL
        .replace("timeout_ms = 20000", "timeout_ms = 400")
        .replace("timeout_ms = 300", "timeout_ms = 10000");
    let app = app(b, &[("fulfil", &flow)]);
    let h = ApiHost::start(&app);
    let run = h.run("fulfil", order("o-6", "slow"));
    assert_eq!(run["state"], "timed_out", "{run:#}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("run timed out after 400 ms")
    );
    assert_eq!(state(&run, "ship"), "timed_out");
    assert_eq!(
        state(&run, "charge"),
        "compensated",
        "completed steps are still undone"
    );
}

fn a_condition_picks_a_branch(b: Backend) {
    let flow = r#"
input = "order.placed"

[steps.validate]
step = "order-validate"

[steps.charge]
step = "payment-charge"
input = "validate"

[steps.big]
step = "gate"
input = "charge"
when = "validate.total_cents >= 10000"

[steps.small]
step = "shipping-dispatch"
input = "charge"
when = "validate.total_cents < 10000"
"#;
    let app = app(b, &[("branch", flow)]);
    let h = ApiHost::start(&app);
    let small = h.run("branch", order("o-7", "ada"));
    assert_eq!(small["state"], "completed", "{small:#}");
    assert_eq!(
        (state(&small, "small"), state(&small, "big")),
        ("completed", "skipped")
    );
    let why = small["steps"]["big"]["reason"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("`validate.total_cents >= 10000` is false: `validate.total_cents` is "),
        "a skipped step says which condition was false: {small:#}"
    );
    let mut input = order("o-8", "ada");
    input["lines"][0]["qty"] = json!(100);
    let big = h.run("branch", input);
    assert_eq!(
        (state(&big, "small"), state(&big, "big")),
        ("skipped", "completed")
    );
}

const DELIVER: &str = r#"
input = "order.placed"

[steps.validate]
step = "order-validate"

[steps.charge]
step = "payment-charge"
input = "validate"
compensate = "payment-refund"

[steps.ship]
step = "shipping-dispatch"
input = "charge"

[steps.deliver]
publish = "delivery.requested"
input = "ship"
await = "order.delivered"
fail_on = "delivery.failed"
timeout_ms = 1000
retry = { max_attempts = 1 }
"#;

fn a_hybrid_step_finishes_on_its_completion_event(b: Backend) {
    let app = app(b, &[("deliver", DELIVER)]);
    let h = ApiHost::start(&app);
    let run = h.run("deliver", order("o-9", "grace"));
    assert_eq!(run["state"], "completed", "{run:#}");
    assert_eq!(run["steps"]["deliver"]["output_type"], "order.delivered");
    assert_eq!(run["steps"]["deliver"]["output"]["signed_by"], "grace");
    // The choreographed cascade ran on its own, in the run's correlation.
    let kinds = trace_kinds(&h, &run);
    for k in ["delivery.requested", "parcel.picked-up", "order.delivered"] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
    // A failure event fails the step, and the charge is refunded.
    let run = h.run("deliver", order("o-10", "nobody"));
    assert_eq!(run["state"], "compensated", "{run:#}");
    assert!(run["error"].as_str().unwrap().contains("delivery.failed"));
}

/// The `deliver` flow (its hybrid step waiting `deliver_ms`) in an app
/// without the couriers, so nothing answers the delivery request;
/// `extra`: more of `troupe.toml`.
fn without_couriers(b: Backend, deliver_ms: u64, extra: &str) -> TestApp {
    let mut m = plugin_steps(
        &["order-validate", "payment-charge", "shipping-dispatch"],
        "",
    );
    m += &plugin_steps(&["payment-refund"], "choreography = false");
    m += extra;
    let app = TestApp::on(b, &m);
    std::fs::create_dir(app.path().join("flows")).unwrap();
    std::fs::write(
        app.path().join("flows/deliver.toml"),
        DELIVER.replace("timeout_ms = 1000", &format!("timeout_ms = {deliver_ms}")),
    )
    .unwrap();
    app
}

fn a_hybrid_step_times_out_without_its_completion_event(b: Backend) {
    // No courier steps: nobody answers the delivery request.
    let app = without_couriers(b, 300, "");
    let h = ApiHost::start(&app);
    let run = h.run("deliver", order("o-11", "grace"));
    assert_eq!(state(&run, "deliver"), "timed_out", "{run:#}");
    assert_eq!(run["state"], "compensated");
}

fn the_api_refuses_requests_without_the_token_and_bad_requests(b: Backend) {
    let app = app(b, &[("fulfil", FULFIL)]);
    let h = ApiHost::start(&app);
    let base = h.client.base.clone();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let status = |req: ureq::RequestBuilder<ureq::typestate::WithoutBody>| {
        req.call().unwrap().status().as_u16()
    };
    assert_eq!(status(agent.get(format!("{base}/healthz"))), 200);
    for path in [
        "/v1/runs/x",
        "/v1/dlq",
        "/metrics",
        "/v1/openapi.json",
        "/v1/traces/x",
    ] {
        assert_eq!(status(agent.get(format!("{base}{path}"))), 401, "{path}");
        assert_eq!(
            status(
                agent
                    .get(format!("{base}{path}"))
                    .header("Authorization", "Bearer wrong")
            ),
            401,
            "{path}"
        );
    }
    let r = agent
        .post(format!("{base}/v1/flows/fulfil/runs"))
        .send_json(order("o", "a"))
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");

    let err = |e: troupe::client::ClientError| match e {
        troupe::client::ClientError::Status {
            status, message, ..
        } => (status, message),
        other => panic!("{other}"),
    };
    let (code, msg) = err(h.client.start("nope", &order("o", "a")).unwrap_err());
    assert_eq!(code, 404, "{msg}");
    let (code, msg) = err(h
        .client
        .start("fulfil", &json!({"order_id": 5}))
        .unwrap_err());
    assert_eq!(code, 422);
    assert!(msg.contains("order_id"), "{msg}");
    let auth = format!("Bearer {}", h.token);
    let r = agent
        .post(format!("{base}/v1/flows/fulfil/runs"))
        .header("Authorization", &auth)
        .send("{not json")
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // A start answers 202 with the run's Location.
    let mut r = agent
        .post(format!("{base}/v1/flows/fulfil/runs"))
        .header("Authorization", &auth)
        .send_json(order("o-12", "ada"))
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(
        location,
        format!("/v1/runs/{}", body["run_id"].as_str().unwrap())
    );
    // Publishing checks contracts at the door; the OpenAPI document lists every route.
    let (code, _) = err(h
        .client
        .publish(&json!({"type": "order.placed", "data": {"order_id": 1}}))
        .unwrap_err());
    assert_eq!(code, 422);
    let (code, _) = err(h.client.publish(&json!({"data": {}})).unwrap_err());
    assert_eq!(code, 400);
    // Nobody outside the host addresses a group or answers a command.
    let (code, msg) = err(h
        .client
        .publish(&json!({
            "type": "troupe.step.completed",
            "troupeto": "troupe:orchestrator",
            "data": {"outputs": []}
        }))
        .unwrap_err());
    assert_eq!(code, 400);
    assert!(msg.contains("troupeto"), "{msg}");
    let doc = h.client.get("/v1/openapi.json").unwrap();
    for p in [
        "/v1/flows/{flow}/runs",
        "/v1/runs/{id}",
        "/v1/events",
        "/v1/dlq",
        "/v1/dlq/{id}/replay",
        "/healthz",
        "/metrics",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} in the OpenAPI document");
    }
    let metrics = agent
        .get(format!("{base}/metrics"))
        .header("Authorization", &auth)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("troupe_step_handled_total{step=\"order-validate\"}"),
        "{metrics}"
    );
}

/// A start beyond `[orchestrator] max_active_runs` is refused at once
/// with 503 and `Retry-After`, and admitted again once a run ends; the
/// client's patient start waits it out.
#[test]
fn starts_beyond_max_active_runs_get_503_with_retry_after() {
    // No couriers: each run waits in its hybrid step until the test sends
    // the `order.delivered` it awaits.
    let app = without_couriers(
        Backend::Embedded,
        20000,
        "[orchestrator]\nmax_active_runs = 2\n",
    );
    let h = ApiHost::start(&app);
    let deliver = |run: &str| {
        // The answer to the hybrid step's request, once that is out.
        let t = std::time::Instant::now();
        while state(&h.client.status(run).unwrap(), "deliver") != "dispatched" {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "deliver never dispatched"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        h.client
            .publish(&json!({
                "type": "order.delivered",
                "correlationid": run,
                "data": {"order_id": run, "signed_by": "test"},
            }))
            .unwrap();
        let end = h.client.wait(run, Duration::from_secs(20), |_| {}).unwrap();
        assert_eq!(end["state"], "completed", "{end:#}");
    };
    let first = h.client.start("deliver", &order("o-1", "ada")).unwrap();
    let second = h.client.start("deliver", &order("o-2", "ada")).unwrap();
    match h.client.start("deliver", &order("o-3", "ada")) {
        Err(troupe::client::ClientError::Status {
            status,
            message,
            retry_after,
        }) => {
            assert_eq!(status, 503, "{message}");
            assert_eq!(retry_after, Some(1), "{message}");
            assert!(message.contains("max_active_runs"), "{message}");
        }
        other => panic!("a third run while two are active: {other:?}"),
    }
    let metrics = h.client.get("/metrics").unwrap();
    let metrics = metrics.as_str().expect("text");
    for line in [
        "troupe_runs_active 2",
        "troupe_runs_max_active 2",
        "troupe_runs_refused_total 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // A run ends: there is room for one more.
    deliver(&first);
    let third = h.client.start("deliver", &order("o-3", "ada")).unwrap();
    // Full again; a patient start waits until a run ends.
    let waits = std::cell::Cell::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(1500));
            deliver(&second);
        });
        let fourth = h
            .client
            .start_patiently(
                "deliver",
                &order("o-4", "ada"),
                None,
                Duration::from_secs(20),
                |why, wait| {
                    assert!(why.contains("max_active_runs"), "{why}");
                    assert_eq!(wait, Duration::from_secs(1));
                    waits.set(waits.get() + 1);
                },
            )
            .unwrap();
        assert!(waits.get() >= 1, "the start was refused at least once");
        for run in [&third, &fourth] {
            deliver(run);
        }
    });
}

#[test]
fn malformed_flow_files_are_refused_with_the_line() {
    let bad = [
        (
            "unknown step",
            "input = \"order.placed\"\n\n[steps.a]\nstep = \"no-such-step\"\n",
            ":4:",
            "no step \"no-such-step\"",
        ),
        (
            "types",
            "input = \"order.placed\"\n[steps.a]\nstep = \"order-validate\"\n\n[steps.b]\nstep = \"shipping-dispatch\"\ninput = \"a\"\n",
            ":5:",
            "not an event type step \"shipping-dispatch\" consumes",
        ),
        (
            "cycle",
            "input = \"order.placed\"\n[steps.a]\nstep = \"order-validate\"\nafter = [\"b\"]\n[steps.b]\nstep = \"order-validate\"\nafter = [\"a\"]\n",
            ":2:",
            "cycle",
        ),
        (
            "syntax",
            "input = \"order.placed\"\n[steps.a]\nstep = \"order-validate\"\nretry = 3\n",
            ":4:",
            "retry",
        ),
        (
            "no input",
            "[steps.a]\nstep = \"order-validate\"\n",
            ":1:",
            "input",
        ),
        (
            "a misspelt field in a condition",
            "input = \"order.placed\"\n[steps.a]\nstep = \"order-validate\"\n\n[steps.b]\nstep = \"payment-charge\"\ninput = \"a\"\nwhen = \"a.totl_cents > 5\"\n",
            ":8:",
            "the output of `a` has no field `totl_cents`",
        ),
        (
            "a signal's schema that is no schema",
            "input = \"order.placed\"\n[steps.a]\nstep = \"order-validate\"\n\n[steps.ok]\nawait = { signal = \"approve\", schema = { type = 5 } }\n",
            ":5:",
            "the schema of signal \"approve\"",
        ),
        (
            "one signal for two steps",
            "input = \"order.placed\"\n[steps.a]\nawait = { signal = \"go\" }\n[steps.b]\nawait = { signal = \"go\" }\n",
            ":4:",
            "awaits signal \"go\" too",
        ),
        (
            "a condition on a field the signal's schema does not have",
            "input = \"order.placed\"\n[steps.a]\nstep = \"order-validate\"\n[steps.ok]\nawait = { signal = \"approve\", schema = { type = \"object\", properties = { approved = { type = \"boolean\" } } } }\n[steps.b]\nstep = \"payment-charge\"\ninput = \"a\"\nwhen = \"ok.aproved == true\"\n",
            ":9:",
            "no field `aproved`",
        ),
        (
            "a condition that can never hold",
            "input = \"order.placed\"\n[steps.a]\nstep = \"order-validate\"\n\n[steps.b]\nstep = \"payment-charge\"\ninput = \"a\"\nwhen = 'a.total_cents == \"big\"'\n",
            ":8:",
            "`a.total_cents` is integer, and \"big\" is not",
        ),
    ];
    for (what, text, line, message) in bad {
        let app = app(Backend::Embedded, &[("broken", text)]);
        // `troupe check` says the same, before anything runs.
        let (passed, said) = troupe_check(app.path());
        assert!(
            !passed && said.contains(line) && said.contains(message),
            "{what}: troupe check: {said}"
        );
        let err = ApiHost::try_start(&app)
            .err()
            .unwrap_or_else(|| panic!("{what}: the flow was accepted"))
            .to_string();
        assert!(
            err.contains("broken.toml") && err.contains(line) && err.contains(message),
            "{what}: {err}"
        );
    }
}

fn a_commands_only_step_is_not_subscribed_to_the_choreography(b: Backend) {
    let app = app(b, &[("fulfil", FULFIL)]);
    let h = ApiHost::start(&app);
    let reserved = json!({"type": "inventory.reserved", "data": {"order_id": "o-13", "reservation": "r", "units": 1}});
    let id = h.client.publish(&reserved).unwrap();
    let host = h.host.as_ref().unwrap();
    h.block_on(host.wait_idle(Duration::from_millis(300)))
        .unwrap();
    let trace = h.client.get(&format!("/v1/traces/{id}")).unwrap();
    assert_eq!(
        trace.as_array().unwrap().len(),
        1,
        "nobody released anything: {trace:#}"
    );
    assert_eq!(host.stats.snapshot()["inventory-release"].handled, 0);
    // ... but it takes commands: a failing run is compensated through it.
    let run = h.run("fulfil", order("o-14", "mallory"));
    assert_eq!(state(&run, "reserve"), "compensated", "{run:#}");
}

/// Two teams' apps on their own hosts, in one NATS namespace: the shop's
/// hybrid `deliver` flow hands the parcel to the couriers' app and waits
/// for the `order.delivered` that app's cascade produces; the shop's
/// choreography reaches the couriers' steps and back.
#[test]
fn two_apps_on_nats_exchange_events_and_a_hybrid_flow_waits_on_the_other() {
    let mut shop = String::from("name = \"shop\"\n");
    shop += &plugin_steps(
        &["order-validate", "payment-charge", "shipping-dispatch"],
        "",
    );
    shop += &plugin_steps(&["payment-refund"], "choreography = false");
    let shop = TestApp::on(Backend::Nats, &shop);
    std::fs::create_dir(shop.path().join("flows")).unwrap();
    std::fs::write(shop.path().join("flows/deliver.toml"), DELIVER).unwrap();
    let couriers = String::from("name = \"couriers\"\n")
        + &plugin_steps(&["courier-pickup", "courier-deliver"], "");
    let couriers = TestApp::beside(&shop, &couriers);
    let c = ApiHost::start(&couriers);
    let s = ApiHost::start(&shop);

    let run = s.run("deliver", order("o-20", "grace"));
    assert_eq!(run["state"], "completed", "{run:#}");
    assert_eq!(run["steps"]["deliver"]["output_type"], "order.delivered");
    let trace = s
        .client
        .get(&format!("/v1/traces/{}", run["id"].as_str().unwrap()))
        .unwrap();
    let source_of = |kind: &str| {
        trace
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == kind)
            .unwrap_or_else(|| panic!("{kind} in {trace:#}"))["source"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        source_of("parcel.picked-up"),
        "troupe://couriers/step/courier-pickup"
    );
    assert_eq!(
        source_of("order.delivered"),
        "troupe://couriers/step/courier-deliver"
    );
    let stats = c.host.as_ref().unwrap().stats.snapshot();
    assert_eq!(
        (
            stats["courier-pickup"].handled,
            stats["courier-deliver"].handled
        ),
        (1, 1),
        "the couriers' host did the couriers' work"
    );
    // The other team's failure event fails the step; the shop compensates.
    let run = s.run("deliver", order("o-21", "nobody"));
    assert_eq!(run["state"], "compensated", "{run:#}");
}

/// `Idempotency-Key` on a start: the same key again (for the same flow)
/// answers 200 with the run it started, and starts nothing; another key,
/// or the same key for another flow, starts another run.
fn a_start_with_an_idempotency_key_already_used_returns_that_run(b: Backend) {
    let other = FULFIL.replace("[steps.ship]", "[steps.ship2]");
    let app = app(b, &[("fulfil", FULFIL), ("other", &other)]);
    let h = ApiHost::start(&app);
    let start = |flow: &str, key: &str| {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut res = agent
            .post(&format!("{}/v1/flows/{flow}/runs", h.url))
            .header("Authorization", &format!("Bearer {}", h.token))
            .header("Idempotency-Key", key)
            .send_json(order("o-14", "ada"))
            .unwrap();
        let location = res
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        let body: Value = res.body_mut().read_json().unwrap();
        (res.status().as_u16(), body, location)
    };
    let (status, first, location) = start("fulfil", "order-o-14");
    assert_eq!(status, 202, "{first}");
    let id = first["run_id"].as_str().unwrap().to_string();
    assert_eq!(location.as_deref(), Some(&*format!("/v1/runs/{id}")));
    let (status, again, location) = start("fulfil", "order-o-14");
    assert_eq!(
        (status, &again["run_id"]),
        (200, &first["run_id"]),
        "{again}"
    );
    assert_eq!(location.as_deref(), Some(&*format!("/v1/runs/{id}")));
    // Once the run has ended too.
    let run = h.client.wait(&id, Duration::from_secs(30), |_| {}).unwrap();
    assert_eq!(run["state"], "completed");
    let (status, again, _) = start("fulfil", "order-o-14");
    assert_eq!(
        (status, &again["run_id"]),
        (200, &first["run_id"]),
        "{again}"
    );
    let (status, another, _) = start("fulfil", "order-o-14b");
    assert_eq!(status, 202);
    assert_ne!(another["run_id"], first["run_id"]);
    let (status, elsewhere, _) = start("other", "order-o-14");
    assert_eq!(status, 202);
    assert_ne!(elsewhere["run_id"], first["run_id"]);
    // A key that is not a short printable token is refused.
    let (status, refused, _) = start("fulfil", &"k".repeat(300));
    assert_eq!(status, 400, "{refused}");
}
