//! An operator's verbs across a SIGKILL of the host (`troupe run` as a
//! child process), on each broker, against the orders example and its
//! payment provider, whose ledger counts charges and refunds: a cancel, a
//! redrive and a bulk replay killed in the middle lose nothing and do
//! nothing twice.

use std::time::Duration;

use serde_json::{Value, json};
use troupe_tests::process::HostProcess;
use troupe_tests::{Backend, TestApp, example_app_on, on_each_broker_blocking, raw, wait_for};

use crate::runs::PAY;

on_each_broker_blocking!(
    a_redrive_killed_in_the_middle_charges_each_run_once,
    a_cancel_killed_in_the_middle_refunds_every_charge_once,
    a_bulk_replay_killed_in_the_middle_replays_the_rest_once,
);

const STARTUP: Duration = Duration::from_secs(120);

fn orders_app(b: Backend) -> TestApp {
    let app = example_app_on(b, "orders");
    let flows = troupe_tests::repo().join("examples/orders/flows");
    std::fs::create_dir_all(app.path().join("flows")).unwrap();
    for f in ["fulfil.toml", "deliver.toml"] {
        std::fs::copy(flows.join(f), app.path().join("flows").join(f)).unwrap();
    }
    std::fs::write(app.path().join("flows/pay.toml"), PAY).unwrap();
    app
}

fn order(i: usize) -> Value {
    json!({"order_id": format!("o-{i}"), "customer": "ada", "lines": [{"sku": "tea", "qty": 1, "price_cents": 450}]})
}

/// POST with the app's token, whatever the status.
fn post(host: &HostProcess, path: &str, body: &Value) -> (u16, Value) {
    // The host's log is in its app's directory.
    let app_dir = host.log.parent().expect("the app's directory");
    raw(&host.client.base, &token(app_dir), "POST", path, Some(body))
}

/// The token the app's host wrote.
fn token(app: &std::path::Path) -> String {
    std::fs::read_to_string(app.join(".troupe/api-token"))
        .unwrap()
        .trim()
        .to_string()
}

fn wait_all(host: &HostProcess, ids: &[String], what: &str) -> Vec<Value> {
    ids.iter()
        .map(|id| {
            wait_for(Duration::from_secs(90), what, || {
                let run = host.client.status(id).ok()?;
                (!matches!(run["state"].as_str(), Some("running" | "compensating"))).then_some(run)
            })
        })
        .collect()
}

fn a_redrive_killed_in_the_middle_charges_each_run_once(b: Backend) {
    let app = orders_app(b);
    let payments = app.payments.as_ref().unwrap();
    let host = HostProcess::start(&app, &[], STARTUP);
    payments.control(json!({"fail": 100000}));
    let ids: Vec<String> = (0..20)
        .map(|i| host.client.start("pay", &order(i)).unwrap())
        .collect();
    for run in wait_all(&host, &ids, "runs failed") {
        assert_eq!(run["state"], "failed", "{run:#}");
    }
    payments.control(json!({"fail": 0, "delay_ms": 50}));
    // Redrive them all; the host is killed half way through.
    for id in &ids[..10] {
        let (status, v) = post(
            &host,
            &format!("/v1/runs/{id}/redrive"),
            &json!({"by": "ops"}),
        );
        assert_eq!(status, 202, "{v}");
    }
    drop(host); // SIGKILL, redriven runs in flight
    let host = HostProcess::start(&app, &[], STARTUP);
    for id in &ids {
        // Redriven before the kill, or not yet: what the API says.
        let (status, v) = post(
            &host,
            &format!("/v1/runs/{id}/redrive"),
            &json!({"by": "ops"}),
        );
        assert!(
            status == 202 || (status == 409 && v["state"] != "failed"),
            "{status} {v}"
        );
    }
    for run in wait_all(&host, &ids, "runs redriven to their end") {
        assert_eq!(run["state"], "completed", "{run:#}");
        assert_eq!(
            run["redrives"].as_array().unwrap().len(),
            1,
            "redriven once: {run:#}"
        );
        assert_eq!(run["steps"]["validate"]["attempts"], 1);
    }
    let stats = payments.stats();
    assert_eq!(stats["charges"], 20, "each run charged once: {stats}");
}

fn a_cancel_killed_in_the_middle_refunds_every_charge_once(b: Backend) {
    let app = orders_app(b);
    let payments = app.payments.as_ref().unwrap();
    let host = HostProcess::start(&app, &[], STARTUP);
    // Charges take a while: the cancels find them in flight.
    payments.control(json!({"delay_ms": 1500}));
    let ids: Vec<String> = (0..10)
        .map(|i| host.client.start("fulfil", &order(i)).unwrap())
        .collect();
    for id in &ids {
        wait_for(Duration::from_secs(30), "the charge in flight", || {
            let run = host.client.status(id).ok()?;
            (run["steps"]["charge"]["state"] == "dispatched").then_some(())
        });
    }
    for id in &ids {
        let (status, v) = post(
            &host,
            &format!("/v1/runs/{id}/cancel"),
            &json!({"reason": "test"}),
        );
        assert!(status == 200 || status == 202, "{status} {v}");
    }
    drop(host); // SIGKILL, the cancels half done
    payments.control(json!({"delay_ms": 0}));
    let host = HostProcess::start(&app, &[], STARTUP);
    let runs = wait_all(&host, &ids, "runs cancelled");
    for run in &runs {
        assert_eq!(run["state"], "cancelled", "{run:#}");
        assert_eq!(run["steps"]["charge"]["state"], "compensated", "{run:#}");
        assert_eq!(run["steps"]["reserve"]["state"], "compensated", "{run:#}");
    }
    let stats = payments.stats();
    assert_eq!(stats["charges"], 10, "{stats}");
    assert_eq!(stats["refunds"], 10, "every charge refunded once: {stats}");
}

fn a_bulk_replay_killed_in_the_middle_replays_the_rest_once(b: Backend) {
    let app = orders_app(b);
    let payments = app.payments.as_ref().unwrap();
    let host = HostProcess::start(&app, &[], STARTUP);
    payments.control(json!({"fail": 100000}));
    const N: usize = 120;
    let correlations: Vec<String> = (0..N)
        .map(|i| {
            let e = json!({"type": "order.placed", "subject": format!("o-{i}"), "data": order(i)});
            host.client.publish(&e).unwrap()
        })
        .collect();
    wait_for(
        Duration::from_secs(120),
        "every charge dead-lettered",
        || {
            let v = host.client.get("/v1/dlq?class=retry").ok()?;
            (v.as_array()?.len() == N).then_some(())
        },
    );
    payments.control(json!({"fail": 0, "delay_ms": 20}));
    // A bulk replay of the first 50; the host is killed once it has begun.
    let (base, tok) = (host.client.base.clone(), token(app.path()));
    let first = std::thread::spawn(move || {
        let body = json!({"class": "retry", "limit": 50});
        raw(&base, &tok, "POST", "/v1/dlq/replay", Some(&body))
    });
    wait_for(Duration::from_secs(60), "the replay begun", || {
        let left = host
            .client
            .get("/v1/dlq?class=retry")
            .ok()?
            .as_array()?
            .len();
        (left < N).then_some(())
    });
    drop(host); // SIGKILL mid-replay
    let _ = first.join();
    let host = HostProcess::start(&app, &[], STARTUP);
    let left = host
        .client
        .get("/v1/dlq?class=retry")
        .unwrap()
        .as_array()
        .unwrap()
        .len();
    // At least the 100 the first replay did not ask for.
    assert!(
        (N - 50..N).contains(&left),
        "killed in the middle: {left} of {N} left"
    );
    let out = troupe_tests::process::troupe_within(
        &[
            "dlq",
            "replay",
            "--class",
            "retry",
            "--api",
            &host.client.base,
        ],
        app.path(),
        &[("TROUPE_API_TOKEN", &token(app.path()))],
        Duration::from_secs(120),
    )
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains(&format!("{left} replayed")),
        "{said}"
    );
    wait_for(Duration::from_secs(120), "every order charged", || {
        (payments.stats()["charges"] == N).then_some(())
    });
    for c in &correlations {
        let notified = wait_for(Duration::from_secs(60), "the order notified", || {
            let t = host.client.get(&format!("/v1/traces/{c}")).ok()?;
            let n = t
                .as_array()?
                .iter()
                .filter(|e| e["type"] == "customer.notified")
                .count();
            (n > 0).then_some(n)
        });
        assert_eq!(notified, 1, "{c}: one notification");
    }
    assert_eq!(host.client.get("/v1/dlq").unwrap(), json!([]));
    assert_eq!(payments.stats()["charges"], N, "nothing charged twice");
}
