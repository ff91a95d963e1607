//! The NATS server dies mid-run and comes back: nothing that was
//! acknowledged is lost, a publish made while it is down is reported as
//! failed (not silently dropped), and the host recovers by itself.
//!
//! The test runs a nats-server of its own (a free port, a store in a
//! temporary directory), so the shared server the other tests use is not
//! disturbed; it is killed with SIGKILL and started again on the same port
//! and store.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use troupe::event::Event;
use troupe::host::Host;
use troupe_tests::nats::{NatsServer, free_port};
use troupe_tests::{TestApp, orders_with_sink};

const ORDERS: usize = 2000;

fn order(i: usize) -> Event {
    let mut e = Event::new(
        "order.placed",
        "troupe://tests",
        serde_json::to_vec(&serde_json::json!({
            "order_id": format!("o-{i}"), "customer": "c",
            "lines": [{"sku": "tea", "qty": 1, "price_cents": 100}]
        }))
        .unwrap(),
    );
    e.subject = Some(format!("o-{i}"));
    e
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_restart_loses_nothing_acknowledged_and_the_host_recovers() {
    let port = free_port();
    let store = tempfile::tempdir().unwrap();
    let server = NatsServer::start(port, store.path(), None);

    let app = TestApp::new(&orders_with_sink());
    let out = app.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut a = app.app();
    a.broker = server.broker("restart");
    let host = Host::start(a).await.expect("the host starts on NATS");

    let mut acknowledged = HashSet::new();
    for chunk in (0..ORDERS).collect::<Vec<_>>().chunks(100) {
        let batch: Vec<Event> = chunk.iter().map(|i| order(*i)).collect();
        let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
        host.broker
            .publish(batch)
            .await
            .expect("published while NATS is up");
        acknowledged.extend(ids);
    }
    let done = || -> HashSet<String> {
        std::fs::read_dir(&out)
            .unwrap()
            .map(|f| {
                let name = f.unwrap().file_name().into_string().unwrap();
                name.split_once('.').unwrap().0.to_string()
            })
            .collect()
    };
    let start = Instant::now();
    while done().len() < ORDERS / 10 {
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    drop(server); // SIGKILL
    let at_kill = done().len();
    // While it is down, a publish fails and says so. (Its outcome is then
    // unknown, as with any broker: the client may still deliver it once
    // the server is back. A producer that retries sends the same id, and
    // the server keeps one copy.)
    let unsure = order(ORDERS);
    let refused = host.broker.publish(vec![unsure.clone()]).await;
    assert!(refused.is_err(), "a publish with NATS down is reported");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let server = NatsServer::start(port, store.path(), None);

    let missing = || acknowledged.difference(&done()).count();
    while missing() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "{} of {ORDERS} acknowledged cascades still missing after the restart",
            missing()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let extra: Vec<String> = done().difference(&acknowledged).cloned().collect();
    assert!(
        extra.iter().all(|id| *id == unsure.id),
        "nothing completed that was not published: {extra:?}"
    );
    // The host took new work after the restart without being restarted.
    let after = order(ORDERS + 1);
    host.broker
        .publish(vec![after.clone()])
        .await
        .expect("NATS is back");
    while !done().contains(&after.id) {
        assert!(
            start.elapsed() < Duration::from_secs(200),
            "new work after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(host.broker.dlq_list().await.unwrap().is_empty());
    eprintln!(
        "{ORDERS} cascades: {at_kill} done when nats-server was killed; all done {:.1} s after the start",
        start.elapsed().as_secs_f64()
    );
    host.shutdown().await;
    drop(server);
}
