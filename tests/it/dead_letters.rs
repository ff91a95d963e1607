//! Dead letters in bulk, on each broker, through the HTTP API and the CLI:
//! filters, a dry run that says how many today's consumers would refuse
//! and why, a replay in batches that lands, a purge.

use std::time::Duration;

use serde_json::{Value, json};
use troupe_tests::process::{broker_arg, troupe_within};
use troupe_tests::{ApiHost, Backend, example_app_on, on_each_broker_blocking, wait_for};

use crate::runs::cli;

on_each_broker_blocking!(dead_letters_are_filtered_replayed_and_purged_in_bulk);

fn order(i: usize) -> Value {
    json!({"type": "order.placed", "subject": format!("o-{i}"), "data": {
        "order_id": format!("o-{i}"), "customer": "ada",
        "lines": [{"sku": "tea", "qty": 1, "price_cents": 450}]
    }})
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

fn dead_letters_are_filtered_replayed_and_purged_in_bulk(b: Backend) {
    let app = example_app_on(b, "orders");
    let payments = app.payments.as_ref().unwrap();
    let h = ApiHost::start(&app);
    // The provider is down: three orders' charges fail for good (retry).
    payments.control(json!({"fail": 100000}));
    let orders: Vec<String> = (0..3)
        .map(|i| h.client.publish(&order(i)).unwrap())
        .collect();
    // Two validated orders with no total, past the door (`--no-check`):
    // both consumers' contracts refuse them (contract).
    for i in 0..2 {
        let out = troupe_within(
            &[
                "--broker",
                &broker_arg(&app),
                "publish",
                app.path().to_str().unwrap(),
                "order.validated",
                "--data",
                &json!({"order_id": format!("bad-{i}")}).to_string(),
                "--no-check",
            ],
            app.path(),
            &[],
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let all = wait_for(Duration::from_secs(60), "seven dead letters", || {
        let v = h.client.get("/v1/dlq").unwrap();
        (v.as_array().unwrap().len() == 7).then_some(v)
    });
    let list = |q: &str| h.client.get(&format!("/v1/dlq?{q}")).unwrap();
    let retry = list("class=retry");
    assert_eq!(ids(&retry).len(), 3, "{retry:#}");
    assert!(
        retry
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["step"] == "payment-charge")
    );
    assert_eq!(ids(&list("step=inventory-reserve")).len(), 2);
    assert_eq!(ids(&list("class=contract&step=payment-charge")).len(), 2);
    assert_eq!(ids(&list("type=order.validated")).len(), 7);
    assert_eq!(ids(&list("since=1h")).len(), 7);
    assert_eq!(ids(&list("until=1h")).len(), 0);
    assert_eq!(
        ids(&list("limit=2")),
        ids(&all)[..2].to_vec(),
        "the oldest first"
    );
    let (status, v) = h.raw("GET", "/v1/dlq?class=bogus", None);
    assert_eq!(status, 400, "{v}");
    let out = troupe_within(
        &[
            "--broker",
            &broker_arg(&app),
            "dlq",
            "list",
            "--class",
            "retry",
            "--app",
            app.path().to_str().unwrap(),
        ],
        app.path(),
        &[],
        Duration::from_secs(60),
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("3 message(s)"),
        "{text}"
    );

    // A dry run: what today's consumers would refuse, and why; nothing moves.
    let (status, v) = h.raw(
        "POST",
        "/v1/dlq/replay",
        Some(&json!({"type": "order.validated", "dry_run": true})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (
            v["matched"].as_u64(),
            v["replayed"].as_u64(),
            v["refused"].as_u64()
        ),
        (Some(7), Some(3), Some(4)),
        "{v:#}"
    );
    let reasons = v["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 2, "one reason per step: {v:#}");
    for r in reasons {
        assert_eq!(r["count"], 2, "{v:#}");
        let reason = r["reason"].as_str().unwrap();
        assert!(reason.contains("refuses it"), "{reason}");
        assert!(
            reason.contains("payment-charge") || reason.contains("inventory-reserve"),
            "{reason}"
        );
    }
    assert_eq!(ids(&h.client.get("/v1/dlq").unwrap()).len(), 7);
    let (ok, text) = cli(
        &h,
        &app,
        &["dlq", "replay", "--type", "order.validated", "--dry-run"],
    );
    assert!(
        ok && text.contains("3 would be replayed") && text.contains("4 would be refused"),
        "{text}"
    );
    // No filter: refused, saying how to mean all.
    let (status, v) = h.raw("POST", "/v1/dlq/replay", Some(&json!({})));
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("\"all\""), "{v}");

    // The provider is back: the retries, replayed two at a time, land.
    payments.control(json!({"fail": 0}));
    let (ok, text) = cli(
        &h,
        &app,
        &["dlq", "replay", "--class", "retry", "--batch", "2"],
    );
    assert!(
        ok && text.contains("3 replayed") && text.contains("replayed 2 of 3"),
        "{text}"
    );
    wait_for(Duration::from_secs(60), "three charges", || {
        (payments.stats()["charges"] == 3).then_some(())
    });
    for id in &orders {
        wait_for(
            Duration::from_secs(60),
            "the order's cascade to its end",
            || {
                let t = h.client.get(&format!("/v1/traces/{id}")).unwrap();
                t.as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["type"] == "customer.notified")
                    .then_some(())
            },
        );
    }
    let left = h.client.get("/v1/dlq").unwrap();
    assert_eq!(ids(&left).len(), 4, "the refused stay: {left:#}");
    assert!(
        left.as_array()
            .unwrap()
            .iter()
            .all(|d| d["class"] == "contract")
    );

    // Purge them, a dry run first.
    let (_, v) = h.raw(
        "POST",
        "/v1/dlq/purge",
        Some(&json!({"class": "contract", "dry_run": true})),
    );
    assert_eq!(
        (v["matched"].as_u64(), v["purged"].as_u64()),
        (Some(4), Some(4)),
        "{v}"
    );
    assert_eq!(ids(&h.client.get("/v1/dlq").unwrap()).len(), 4);
    let (ok, text) = cli(&h, &app, &["dlq", "purge", "--class", "contract"]);
    assert!(ok && text.contains("4 purged"), "{text}");
    assert_eq!(h.client.get("/v1/dlq").unwrap(), json!([]));
    assert_eq!(payments.stats()["charges"], 3, "nothing charged twice");
}
