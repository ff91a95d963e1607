//! Step state's limits on reads, the same on both brokers: an invocation
//! that read 1.4 million absent keys grew the host by a gigabyte, and on
//! NATS 15,000 reads overflowed the commit's message while the same
//! invocation committed on the embedded broker.

use serde_json::{Value, json};
use troupe_tests::{Backend, TestApp, on_each_broker};

use super::state::{ask, committed, keeper, op, set};

on_each_broker!(reads_past_the_limit_fail_inside_the_guest_and_the_rest_commits);

async fn reads_past_the_limit_fail_inside_the_guest_and_the_rest_commits(b: Backend) {
    let app = TestApp::on(b, &keeper("keeper", "main", ""));
    let host = app.start().await;
    // 1,001 reads of keys nobody wrote, then one write.
    let mut ops: Vec<Value> = (0..1001)
        .map(|i| {
            op(
                "get",
                "",
                &format!("absent-key-number-{i:05}-{}", "k".repeat(30)),
            )
        })
        .collect();
    ops.push(set("", "done", "yes"));
    let results = ask(&host, json!({"main": {"ops": ops}}), "main").await;
    assert!(results[..1000].iter().all(|r| r == &json!({"ok": null})));
    let refused = results[1000]["error"].as_str().unwrap_or_default();
    assert!(
        refused.contains("more than 1000 keys read") && refused.contains("limits.kv.max_reads"),
        "{}",
        results[1000]
    );
    // The invocation went on and committed, on either broker.
    assert_eq!(results[1001], json!({"ok": true}));
    assert_eq!(
        committed(&host, "keeper", "done").await.as_deref(),
        Some("yes")
    );
    host.shutdown().await;
}
