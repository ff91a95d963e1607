//! The applier of step state on NATS is one host of the app at a time, the
//! holder of a lease: two `troupe run` processes share an app while 3,000
//! orders each take one unit from a counter and mark themselves done; the
//! host that applies the state commits (`/readyz`: `broker.state_applier`)
//! is killed with SIGKILL part-way. The other takes the lease over and
//! applies the rest: every order is done once and the counter is exact.

use std::time::{Duration, Instant};

use troupe_tests::process::HostProcess;
use troupe_tests::{Backend, TestApp, wait_for};

use super::cli::ok;
use super::state::{keeper, orders_done, taking_orders};

const STOCK: u64 = 10_000;
const ORDERS: usize = 3_000;

/// `troupe ARGS` for `app`, on its broker.
fn cli(app: &TestApp, args: &[&str]) -> String {
    let broker = app.broker().to_string();
    let mut all = vec!["--broker", broker.as_str()];
    all.extend_from_slice(args);
    ok(&super::cli::troupe(&all, app.path()))
}

/// Whether `host` applies the app's state commits now.
fn applies(host: &HostProcess) -> Option<bool> {
    host.client.get("/readyz").ok()?["broker"]["state_applier"].as_bool()
}

#[test]
fn the_host_that_applies_state_on_nats_is_killed_and_nothing_is_lost_or_doubled() {
    let manifest = format!(
        "name = \"applier\"\n{}",
        keeper("keeper", "main", "grants.kv = [\"stock\"]\nconcurrency = 4")
    );
    let first = TestApp::on(Backend::Nats, &manifest);
    let second = TestApp::beside(&first, &manifest);
    // Written by the CLI, which applies it itself (no host is running)
    // and lets the lease go for the first host to take.
    cli(&first, &["kv", "put", "stock", "count", &STOCK.to_string()]);
    let quiet = [("TROUPE_LOG", "error")];
    let within = Duration::from_secs(120);
    let a = HostProcess::start(&first, &quiet, within);
    let b = HostProcess::start(&second, &quiet, within);
    let first_applies = wait_for(Duration::from_secs(30), "one host applies", || {
        match (applies(&a)?, applies(&b)?) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            _ => None,
        }
    });
    let (applier, other) = if first_applies { (a, b) } else { (b, a) };

    std::fs::write(first.path().join("orders.jsonl"), taking_orders(ORDERS)).unwrap();
    cli(&first, &["publish", ".", "--file", "orders.jsonl"]);
    let done = || orders_done(&cli(&first, &["--json", "kv", "list", "stock"]));
    let at_kill = wait_for(
        Duration::from_secs(120),
        "a sixth of the orders done",
        || {
            let n = done();
            (n >= ORDERS / 6).then_some(n)
        },
    );
    assert_eq!(applies(&applier), Some(true));
    drop(applier); // SIGKILL
    let started = Instant::now();
    wait_for(Duration::from_secs(30), "the other host applies", || {
        applies(&other).filter(|&a| a)
    });
    let took_over = started.elapsed();
    wait_for(Duration::from_secs(240), "every order done", || {
        (done() == ORDERS).then_some(())
    });
    let count = cli(&first, &["kv", "get", "stock", "count"]);
    eprintln!(
        "{at_kill} orders done at the SIGKILL; the other host applied after {took_over:?}; count {count}"
    );
    assert!(at_kill < ORDERS, "the applier was killed while it applied");
    assert_eq!(
        count,
        (STOCK - ORDERS as u64).to_string(),
        "each order took exactly one"
    );
    assert_eq!(applies(&other), Some(true));
}
