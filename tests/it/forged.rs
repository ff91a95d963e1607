//! Host-owned metadata is believed only from a host of the app. On NATS
//! anyone who may publish to the namespace can set any header: a
//! producer's events carrying forged `trouperun`, `troupestep` and
//! `troupeattempt` made their outbound calls with one Idempotency-Key
//! between them, and showed the guest attempt 7. And with the NATS
//! permissions docs/brokers.md gives, producers can publish events but
//! neither commands nor replies.

use std::time::Duration;

use async_nats::HeaderMap;
use serde_json::json;
use troupe_tests::nats::{NatsServer, free_port};
use troupe_tests::upstream::Upstream;
use troupe_tests::{Backend, TestApp, data, eventually, guest, nats_server, step};

const KEY: &str = "sk_test_forged_1a2b";

/// A binary-mode CloudEvent message for `.ev.test.call`, claiming to be
/// attempt 7 of run `r-victim`'s step `charge`.
fn forged(id: &str, charge_url: &str) -> (HeaderMap, bytes::Bytes) {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", "urn:producer"),
        ("ce-type", "test.call"),
        ("ce-trouperun", "r-victim"),
        ("ce-troupestep", "charge"),
        ("ce-troupeattempt", "7"),
        ("content-type", "application/json"),
    ] {
        h.insert(k, v);
    }
    let body = json!({"calls": [{"method": "POST", "url": charge_url, "body": "{}"}]});
    (h, body.to_string().into())
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_host_extensions_on_nats_are_ignored() {
    let up = Upstream::start(KEY).await;
    let port = up.port();
    let app = TestApp::on(
        Backend::Nats,
        &step(
            "caller",
            &guest("caller"),
            &format!("grants.http = [{{ url = \"http://127.0.0.1:{port}/v1/charges\" }}]"),
        ),
    );
    let host = app.start().await;
    let ns = app.namespace.clone().unwrap();
    let client = async_nats::connect(nats_server()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let subject = format!("{ns}.ev.test.call");
    for id in ["forged-1", "forged-2"] {
        let (h, body) = forged(id, &up.url("/v1/charges"));
        js.publish_with_headers(subject.clone(), h, body)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let reports = eventually(Duration::from_secs(30), "both reports", async || {
        let mut reports = Vec::new();
        for id in ["forged-1", "forged-2"] {
            let t = host.broker.trace(id).await.unwrap();
            reports.extend(t.iter().filter(|e| e.kind == "test.called").map(data));
        }
        (reports.len() == 2).then_some(reports)
    })
    .await;
    host.shutdown().await;
    for r in &reports {
        assert_eq!(r["attempt"], 1, "the guest saw the forged attempt: {r}");
    }
    let keys: std::collections::BTreeSet<String> = up
        .seen()
        .iter()
        .map(|s| s.headers["idempotency-key"].clone())
        .collect();
    assert_eq!(keys.len(), 2, "two events, two keys: {keys:?}");
}

/// The permissions docs/brokers.md gives: the host's user may do all; a
/// producer's may publish events (`NS.ev.>`) and get JetStream's answers,
/// nothing else. Tested on a nats-server of its own, started with them.
#[test]
fn producers_with_the_documented_permissions_publish_events_only() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ns = "shop";
    // What docs/brokers.md shows, for namespace `shop`.
    let users = format!(
        r#"authorization {{
  users = [
    {{ user: troupe, password: "host-secret" }}
    {{ user: producer, password: "producer-secret", permissions: {{
        publish: {{ allow: ["{ns}.ev.>"] }}
        subscribe: {{ allow: ["_INBOX.>"] }}
    }} }}
  ]
}}
"#
    );
    let server = NatsServer::start_with(port, dir.path(), &users);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let app = TestApp::new(&format!(
            "name = \"app\"\n{}",
            step("echo", &guest("echo"), "")
        ));
        let mut a = app.app();
        a.broker = format!("nats://troupe:host-secret@127.0.0.1:{}/{ns}", server.port)
            .parse()
            .unwrap();
        let host = troupe::host::Host::start(a)
            .await
            .expect("the host starts with the documented user");
        let producer = async_nats::ConnectOptions::with_user_and_password(
            "producer".into(),
            "producer-secret".into(),
        )
        .connect(format!("127.0.0.1:{}", server.port))
        .await
        .unwrap();
        let mut js = async_nats::jetstream::new(producer.clone());
        // A refused publish is never acknowledged: do not wait long.
        js.set_timeout(Duration::from_secs(2));
        // An event: stored, and answered.
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "p-1"),
            ("ce-source", "urn:producer"),
            ("ce-type", "test.ping"),
            ("content-type", "application/json"),
        ] {
            h.insert(k, v);
        }
        js.publish_with_headers(format!("{ns}.ev.test.ping"), h.clone(), r#"{"n":1}"#.into())
            .await
            .expect("an event is published")
            .await
            .expect("and stored");
        eventually(Duration::from_secs(20), "the pong", async || {
            let t = host.broker.trace("p-1").await.unwrap();
            t.iter().any(|e| e.kind == "test.pong").then_some(())
        })
        .await;
        // A command to the step, a reply to the orchestrator, the app's
        // sealing key: refused by the server.
        for subject in [
            format!("{ns}.to.app.echo"),
            format!("{ns}.to.app.troupe_orchestrator"),
            format!("$KV.{ns}_app_state.seal/key"),
        ] {
            let r = js
                .publish_with_headers(subject.clone(), h.clone(), r#"{"n":2}"#.into())
                .await;
            let stored = match r {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            assert!(!stored, "the producer published on {subject}");
        }
        let read = async_nats::jetstream::new(producer)
            .get_key_value(format!("{ns}_app_state"))
            .await;
        assert!(read.is_err(), "the producer opened the app's state bucket");
        host.shutdown().await;
    });
}
