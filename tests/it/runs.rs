//! Operators' verbs on runs, on each broker, through the HTTP API and the
//! CLI: find runs (every filter, pages), count them, cancel one, redrive
//! one.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use troupe_tests::process::troupe_within;
use troupe_tests::{ApiHost, Backend, TestApp, example_app_on, on_each_broker_blocking, wait_for};

use crate::orchestration::{FULFIL, app, order, state};

on_each_broker_blocking!(
    runs_are_found_by_each_filter_a_page_at_a_time,
    a_cancel_supersedes_what_runs_and_undoes_what_completed,
    a_failed_run_is_redriven_from_the_step_that_failed,
    a_signal_reaches_the_step_that_awaits_it_now_or_later,
);

/// The ids of a page (or of a whole list).
fn ids(v: &Value) -> Vec<String> {
    v["runs"]
        .as_array()
        .unwrap_or_else(|| panic!("no runs in {v}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// `troupe ARGS` against host `h` (its URL and token): (success, stdout
/// and stderr).
pub(crate) fn cli(h: &ApiHost, app: &TestApp, args: &[&str]) -> (bool, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--api", &h.url]);
    let out = troupe_within(
        &all,
        app.path(),
        &[("TROUPE_API_TOKEN", &h.token)],
        Duration::from_secs(60),
    )
    .expect("the CLI answers");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn runs_are_found_by_each_filter_a_page_at_a_time(b: Backend) {
    let app = app(b, &[("fulfil", FULFIL)]);
    let h = ApiHost::start(&app);
    // Six runs one after another (so their order is their start order),
    // two of them compensated, then one started with a key.
    let mut started = Vec::new();
    for (i, customer) in ["ada", "mallory", "ada", "bob", "mallory", "ada"]
        .iter()
        .enumerate()
    {
        let run = h.run("fulfil", order(&format!("o-{i}"), customer));
        assert!(
            ["completed", "compensated"].contains(&run["state"].as_str().unwrap()),
            "{run:#}"
        );
        started.push(run);
    }
    let keyed = h
        .client
        .start_keyed("fulfil", &order("o-k", "ada"), Some("order-o-k"))
        .unwrap();
    let keyed = h
        .client
        .wait(&keyed, Duration::from_secs(30), |_| {})
        .unwrap();
    started.push(keyed.clone());
    let newest_first: Vec<String> = started
        .iter()
        .rev()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    // NATS hosts follow the index: it shows each run within moments.
    let all = wait_for(Duration::from_secs(10), "every run listed", || {
        let v = h.client.get("/v1/runs").unwrap();
        (ids(&v) == newest_first && v["runs"][0]["state"] == "completed").then_some(v)
    });
    assert!(all.get("next_cursor").is_none(), "{all}");
    let first = &all["runs"][0];
    assert_eq!(first["flow"], "fulfil");
    assert_eq!(first["key"], "order-o-k");
    assert!(first["created"].as_str().unwrap().ends_with('Z'), "{first}");
    let of = |which: &[usize]| -> Vec<String> {
        let mut v: Vec<String> = which
            .iter()
            .map(|&i| started[i]["id"].as_str().unwrap().to_string())
            .collect();
        v.reverse();
        v
    };
    let list = |q: &str| ids(&h.client.get(&format!("/v1/runs?{q}")).unwrap());
    assert_eq!(list("status=compensated"), of(&[1, 4]));
    let compensated = h.client.get("/v1/runs?status=compensated").unwrap();
    assert!(
        compensated["runs"][0]["error"]
            .as_str()
            .unwrap()
            .contains("mallory may not have it"),
        "{compensated}"
    );
    assert_eq!(list("flow=fulfil&status=completed"), of(&[0, 2, 3, 5, 6]));
    assert_eq!(list("key=order-o-k"), of(&[6]));
    assert_eq!(list("flow=nope"), Vec::<String>::new());
    assert_eq!(list("status=running"), Vec::<String>::new());
    assert_eq!(list("since=1h"), newest_first);
    // A time range is the runs started in it, to the millisecond.
    let created = started[3]["created"].as_str().unwrap();
    let t = percent(created);
    assert_eq!(list(&format!("since={t}")), of(&[3, 4, 5, 6]));
    assert_eq!(list(&format!("until={t}")), of(&[0, 1, 2]));
    assert_eq!(list(&format!("until={t}&status=compensated")), of(&[1]));

    // Pages of two, with a run started between the first page and the
    // next: the pages after it are the runs older than the first page,
    // none twice, none missed.
    let page = h.client.get("/v1/runs?limit=2").unwrap();
    let mut paged = ids(&page);
    let mut cursor = page["next_cursor"].as_str().unwrap().to_string();
    let later = h.run("fulfil", order("o-later", "ada"));
    let mut pages = 1;
    loop {
        let page = h
            .client
            .get(&format!("/v1/runs?limit=2&cursor={cursor}"))
            .unwrap();
        pages += 1;
        paged.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(paged, newest_first, "pages of two, in order");
    assert_eq!(pages, 4);
    // Filters and a cursor together.
    let p1 = h
        .client
        .get("/v1/runs?flow=fulfil&status=completed&limit=3")
        .unwrap();
    let p2 = h
        .client
        .get(&format!(
            "/v1/runs?flow=fulfil&status=completed&limit=3&cursor={}",
            p1["next_cursor"].as_str().unwrap()
        ))
        .unwrap();
    let mut both = ids(&p1);
    both.extend(ids(&p2));
    let mut want = vec![later["id"].as_str().unwrap().to_string()];
    want.extend(of(&[0, 2, 3, 5, 6]));
    assert_eq!(both, want);

    // What is not a filter is said so.
    for (q, says) in [
        ("status=nope", "`status`"),
        ("limit=0", "`limit`"),
        ("limit=501", "`limit`"),
        ("cursor=zzz", "`cursor`"),
        ("since=soon", "`since`"),
        ("colour=red", "unknown filter \"colour\""),
    ] {
        let (status, v) = h.raw("GET", &format!("/v1/runs?{q}"), None);
        assert_eq!(status, 400, "{q}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{q}: {v}");
    }

    // Counts, from the index.
    let counts = wait_for(Duration::from_secs(10), "the counts", || {
        let v = h.client.get("/v1/runs/counts").unwrap();
        (v["total"] == 8).then_some(v)
    });
    let count = |s: &str| {
        counts["counts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["flow"] == "fulfil" && c["state"] == s)
            .map(|c| c["count"].as_u64().unwrap())
    };
    assert_eq!(
        (count("completed"), count("compensated")),
        (Some(6), Some(2))
    );
    let metrics = metrics(&h);
    assert!(
        metrics.contains("troupe_runs{flow=\"fulfil\",state=\"compensated\"} 2"),
        "{metrics}"
    );

    // The CLI.
    let (ok, text) = cli(&h, &app, &["runs", "--status", "compensated"]);
    assert!(ok, "{text}");
    let listed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(listed, of(&[1, 4]), "{text}");
    let (ok, text) = cli(&h, &app, &["--json", "runs", "--limit", "3", "--all"]);
    assert!(ok, "{text}");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8, "{text}");
    let (ok, text) = cli(&h, &app, &["runs", "--limit", "3"]);
    assert!(ok && text.contains("more: --cursor "), "{text}");
    let (ok, text) = cli(&h, &app, &["runs", "counts"]);
    assert!(
        ok && text.contains("compensated") && text.contains("total 8"),
        "{text}"
    );
    let (ok, text) = cli(&h, &app, &["runs", "--status", "nope"]);
    assert!(!ok && text.contains("`status`"), "{text}");
}

/// RFC 3339 text as a query value.
fn percent(t: &str) -> String {
    t.replace(':', "%3A").replace('+', "%2B")
}

fn metrics(h: &ApiHost) -> String {
    let (status, v) = h.raw("GET", "/metrics", None);
    assert_eq!(status, 200);
    v.as_str().unwrap().to_string()
}

/// The fulfil flow, with shipping (the `gate` step) allowed 15 s: a
/// `slow` customer's run waits there, in flight.
const SLOW_SHIP: &str = r#"
input = "order.placed"
timeout_ms = 30000

[steps.validate]
step = "order-validate"

[steps.reserve]
step = "inventory-reserve"
input = "validate"
compensate = "inventory-release"

[steps.charge]
step = "payment-charge"
input = "validate"
compensate = "payment-refund"

[steps.ship]
step = "gate"
input = "charge"
after = ["reserve"]
timeout_ms = 15000
retry = { max_attempts = 1 }
"#;

fn a_cancel_supersedes_what_runs_and_undoes_what_completed(b: Backend) {
    let app = app(b, &[("fulfil", SLOW_SHIP)]);
    let h = ApiHost::start(&app);
    let id = h.client.start("fulfil", &order("o-c", "slow")).unwrap();
    wait_for(Duration::from_secs(20), "shipping in flight", || {
        let run = h.client.status(&id).unwrap();
        (state(&run, "ship") == "dispatched").then_some(())
    });
    let (status, run) = h.raw(
        "POST",
        &format!("/v1/runs/{id}/cancel"),
        Some(&json!({"by": "ops", "reason": "the customer called"})),
    );
    let run = if status == 202 {
        h.client.wait(&id, Duration::from_secs(20), |_| {}).unwrap()
    } else {
        assert_eq!(status, 200, "{run:#}");
        run
    };
    assert_eq!(run["state"], "cancelled", "{run:#}");
    assert_eq!(run["cancelled"]["by"], "ops");
    assert_eq!(run["cancelled"]["reason"], "the customer called");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("cancelled by ops: the customer called"),
        "{run:#}"
    );
    assert_eq!(state(&run, "validate"), "completed");
    assert_eq!(state(&run, "ship"), "cancelled", "superseded: {run:#}");
    assert!(
        run["steps"]["ship"]["reason"]
            .as_str()
            .unwrap()
            .contains("cancelled while it ran"),
        "{run:#}"
    );
    assert_eq!(state(&run, "reserve"), "compensated", "{run:#}");
    assert_eq!(state(&run, "charge"), "compensated", "{run:#}");
    assert_eq!(state(&run, "charge~undo"), "completed");
    // Again: the same answer, nothing more done.
    let (status, again) = h.raw("POST", &format!("/v1/runs/{id}/cancel"), None);
    assert_eq!(status, 200, "{again:#}");
    assert_eq!(again["cancelled"], run["cancelled"]);
    assert_eq!(again["steps"], run["steps"]);
    let (ok, text) = cli(&h, &app, &["runs", "cancel", &id, "--reason", "again"]);
    assert!(ok && text.contains("cancelled"), "{text}");
    // Listed as cancelled.
    wait_for(Duration::from_secs(10), "listed as cancelled", || {
        let v = h.client.get("/v1/runs?status=cancelled").unwrap();
        (ids(&v) == [id.clone()]).then_some(())
    });

    // A run that ended otherwise: 409, with its state.
    let done = h.run("fulfil", order("o-d", "ada"));
    let done_id = done["id"].as_str().unwrap();
    let (status, v) = h.raw("POST", &format!("/v1/runs/{done_id}/cancel"), None);
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["state"], "completed");
    assert!(
        v["error"].as_str().unwrap().contains("already ended"),
        "{v}"
    );
    let (ok, text) = cli(&h, &app, &["runs", "cancel", done_id]);
    assert!(!ok && text.contains("already ended: completed"), "{text}");
    // No such run; a body that is not {by, reason}.
    let (status, v) = h.raw("POST", "/v1/runs/nope/cancel", None);
    assert_eq!(status, 404, "{v}");
    let (status, v) = h.raw(
        "POST",
        &format!("/v1/runs/{done_id}/cancel"),
        Some(&json!({"x": 1})),
    );
    assert_eq!(status, 400, "{v}");
}

/// Validate, charge (twice at most), ship: no compensations, so a run
/// whose charge fails for good ends `failed` with validate's output kept.
pub(crate) const PAY: &str = r#"
input = "order.placed"
timeout_ms = 60000

[steps.validate]
step = "order-validate"

[steps.charge]
step = "payment-charge"
input = "validate"
retry = { max_attempts = 2, backoff_ms = 20 }

[steps.ship]
step = "shipping-dispatch"
input = "charge"
"#;

fn a_failed_run_is_redriven_from_the_step_that_failed(b: Backend) {
    let app = example_app_on(b, "orders");
    std::fs::create_dir_all(app.path().join("flows")).unwrap();
    std::fs::write(app.path().join("flows/pay.toml"), PAY).unwrap();
    std::fs::write(
        app.path().join("flows/fulfil.toml"),
        std::fs::read_to_string(troupe_tests::repo().join("examples/orders/flows/fulfil.toml"))
            .unwrap(),
    )
    .unwrap();
    let payments = app.payments.as_ref().unwrap();
    let h = ApiHost::start(&app);
    let input = json!({"order_id": "o-r", "customer": "ada", "lines": [{"sku": "tea", "qty": 1, "price_cents": 450}]});
    // The provider is down for both attempts: the run fails at charge.
    payments.control(json!({"fail": 2}));
    let failed = h.run("pay", input.clone());
    let id = failed["id"].as_str().unwrap().to_string();
    assert_eq!(failed["state"], "failed", "{failed:#}");
    assert_eq!(state(&failed, "charge"), "failed");
    assert_eq!(failed["steps"]["charge"]["attempts"], 2);
    assert_eq!(payments.stats()["charges"], 0);

    let (status, run) = h.raw(
        "POST",
        &format!("/v1/runs/{id}/redrive"),
        Some(&json!({"by": "ops", "reason": "provider back"})),
    );
    assert_eq!(status, 202, "{run:#}");
    let run = h.client.wait(&id, Duration::from_secs(30), |_| {}).unwrap();
    assert_eq!(run["state"], "completed", "{run:#}");
    // The step that failed ran again from its first attempt; the one that
    // completed kept its output and ran once.
    assert_eq!(run["steps"]["charge"]["attempts"], 1, "{run:#}");
    assert_eq!(run["steps"]["validate"]["attempts"], 1);
    assert_eq!(
        run["steps"]["validate"]["output"],
        failed["steps"]["validate"]["output"]
    );
    assert_eq!(
        run["steps"]["validate"]["finished"],
        failed["steps"]["validate"]["finished"]
    );
    assert_eq!(state(&run, "ship"), "completed");
    assert_eq!(run["redrives"][0]["by"], "ops");
    assert_eq!(run["redrives"][0]["reason"], "provider back");
    let errors = run["steps"]["charge"]["errors"].as_array().unwrap();
    assert_eq!(
        errors.len(),
        2,
        "the first attempts' errors are kept: {run:#}"
    );
    assert_eq!(payments.stats()["charges"], 1, "charged once");
    wait_for(Duration::from_secs(10), "listed as completed", || {
        let v = h.client.get("/v1/runs?status=failed").unwrap();
        ids(&v).is_empty().then_some(())
    });

    // A run that completed, or was compensated, is not redriven: 409 says why.
    let (status, v) = h.raw("POST", &format!("/v1/runs/{id}/redrive"), None);
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("it completed"), "{v}");
    let declined = json!({"order_id": "o-m", "customer": "mallory", "lines": [{"sku": "tea", "qty": 1, "price_cents": 450}]});
    let compensated = h.run("fulfil", declined);
    assert_eq!(compensated["state"], "compensated", "{compensated:#}");
    let cid = compensated["id"].as_str().unwrap();
    let (status, v) = h.raw("POST", &format!("/v1/runs/{cid}/redrive"), None);
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["state"], "compensated");
    assert!(v["error"].as_str().unwrap().contains("compensated"), "{v}");
    let (ok, text) = cli(&h, &app, &["runs", "redrive", cid]);
    assert!(!ok && text.contains("cannot be redriven"), "{text}");

    // Through the CLI: another run failed the same way, redriven.
    payments.control(json!({"fail": 2}));
    let input2 = json!({"order_id": "o-r2", "customer": "ada", "lines": [{"sku": "tea", "qty": 1, "price_cents": 450}]});
    let failed = h.run("pay", input2);
    assert_eq!(failed["state"], "failed", "{failed:#}");
    let id2 = failed["id"].as_str().unwrap();
    let (ok, text) = cli(&h, &app, &["runs", "redrive", id2, "--by", "cli-user"]);
    assert!(ok, "{text}");
    let run = h.client.wait(id2, Duration::from_secs(30), |_| {}).unwrap();
    assert_eq!(run["state"], "completed", "{run:#}");
    assert_eq!(run["redrives"][0]["by"], "cli-user");
    let charged: BTreeSet<u64> = [payments.stats()["charges"].as_u64().unwrap()].into();
    assert_eq!(charged, BTreeSet::from([2]));
}

/// Validate, then a review and an approval (signals, in that order), then
/// charge if approved.
const APPROVE: &str = r#"
input = "order.placed"
timeout_ms = 30000

[steps.validate]
step = "order-validate"

[steps.review]
await = { signal = "review" }
after = ["validate"]
timeout_ms = 20000

[steps.approval]
await = { signal = "approve", schema = { type = "object", required = ["approved"], properties = { approved = { type = "boolean" } } }, timeout_ms = 20000 }
after = ["review"]

[steps.charge]
step = "payment-charge"
input = "validate"
after = ["approval"]
when = "approval.approved == true"
"#;

fn a_signal_reaches_the_step_that_awaits_it_now_or_later(b: Backend) {
    let app = app(b, &[("approve", APPROVE)]);
    let h = ApiHost::start(&app);
    let id = h.client.start("approve", &order("o-s", "ada")).unwrap();
    wait_for(Duration::from_secs(20), "the review awaited", || {
        let run = h.client.status(&id).unwrap();
        (state(&run, "review") == "dispatched").then_some(())
    });
    let signal = |name: &str, data: Value| {
        h.raw(
            "POST",
            &format!("/v1/runs/{id}/signals/{name}?by=alice"),
            Some(&data),
        )
    };
    // What breaks the flow's schema for it: 422, saying where.
    let (status, v) = signal("approve", json!({"approved": "yes"}));
    assert_eq!(status, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("/approved"), "{v}");
    // More than a run may keep: 413.
    let big = json!({"approved": true, "note": "x".repeat(70_000)});
    let (status, v) = signal("approve", big);
    assert_eq!(status, 413, "{v}");
    // What no step awaits: 409, naming those it awaits.
    let (status, v) = signal("reject", json!({}));
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("it awaits: review, approve")
            || v["error"]
                .as_str()
                .unwrap()
                .contains("it awaits: approve, review"),
        "{v}"
    );
    // The approval before the review: kept for its step.
    let (status, run) = signal("approve", json!({"approved": true}));
    assert_eq!(status, 202, "{run}");
    assert_eq!(run["signals"][0]["state"], "kept", "{run:#}");
    assert_eq!(run["signals"][0]["step"], "approval");
    assert_eq!(run["signals"][0]["by"], "alice");
    assert_eq!(state(&run, "approval"), "pending");
    let (status, v) = signal("approve", json!({"approved": false}));
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("already kept"), "{v}");
    // The review, through the CLI: the approval takes the kept signal at
    // once, and the charge runs.
    let (ok, text) = cli(
        &h,
        &app,
        &[
            "runs",
            "signal",
            &id,
            "review",
            "--data",
            "{\"by\": \"bob\"}",
            "--by",
            "bob",
        ],
    );
    assert!(ok && text.contains("signal review delivered"), "{text}");
    let run = h.client.wait(&id, Duration::from_secs(30), |_| {}).unwrap();
    assert_eq!(run["state"], "completed", "{run:#}");
    assert_eq!(
        run["steps"]["approval"]["output"],
        json!({"approved": true})
    );
    assert_eq!(
        run["steps"]["approval"]["output_type"],
        "troupe.signal.approve"
    );
    assert_eq!(state(&run, "charge"), "completed");
    let signals = run["signals"].as_array().unwrap();
    assert_eq!(signals.len(), 2, "{run:#}");
    assert!(signals.iter().all(|s| s["state"] == "delivered"), "{run:#}");
    // The run ended: 409.
    let (status, v) = signal("approve", json!({"approved": true}));
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("already ended"),
        "{v}"
    );

    // Not approved: the charge is skipped, and says why.
    let id2 = h.client.start("approve", &order("o-n", "ada")).unwrap();
    wait_for(Duration::from_secs(20), "the review awaited", || {
        let run = h.client.status(&id2).unwrap();
        (state(&run, "review") == "dispatched").then_some(())
    });
    for (name, data) in [
        ("review", json!(null)),
        ("approve", json!({"approved": false})),
    ] {
        let (status, v) = h.raw(
            "POST",
            &format!("/v1/runs/{id2}/signals/{name}"),
            Some(&data),
        );
        assert_eq!(status, 202, "{v}");
    }
    let run = h
        .client
        .wait(&id2, Duration::from_secs(30), |_| {})
        .unwrap();
    assert_eq!(run["state"], "completed", "{run:#}");
    assert_eq!(state(&run, "charge"), "skipped");
    assert!(
        run["steps"]["charge"]["reason"]
            .as_str()
            .unwrap()
            .contains("approval.approved"),
        "{run:#}"
    );
    // A signal to a run that does not exist.
    let (status, _) = h.raw("POST", "/v1/runs/nope/signals/approve", Some(&json!({})));
    assert_eq!(status, 404);
}
