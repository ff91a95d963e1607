//! Benchmark: what an outbound HTTP call costs a step.
//!
//! Side by side in one run, against one local service on 127.0.0.1
//! (`tests/support/upstream.rs`, `GET /v1/ping`):
//! - **native, new connection**: the request made by the host with hyper,
//!   connecting for each request (as the step's sender does);
//! - **native, pooled**: the same with ureq's agent, which keeps the
//!   connection (the best a host-side client does);
//! - **step**: the Rust caller fixture with a reused instance, one
//!   invocation (`LoadedStep::handle`, as the workers call it) making one
//!   call, minus the same invocation making none: what a call adds to a
//!   step.
//!
//! The four are measured in interleaved blocks, so drift hits them alike.
//! Reports p50 and p99 of each and the step's added cost per call.
//!
//! Run: `cargo bench -p troupe-tests --bench http` (`BENCH_ROUNDS`, default
//! 10 blocks of 200 calls each).

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use serde_json::json;
use troupe::host::load_steps;
use troupe::runtime::Runtime;
use troupe_tests::bench::pct;
use troupe_tests::upstream::Upstream;
use troupe_tests::{TestApp, event, guest, step};

const BLOCK: usize = 200;

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let up = rt.block_on(Upstream::start("unused"));
    let url = up.url("/v1/ping");
    let app = TestApp::new(&step(
        "caller",
        &guest("caller"),
        &format!(
            "instances = \"reuse\"\ngrants.http = [{{ url = \"http://127.0.0.1:{}/v1\" }}]",
            up.port()
        ),
    ));
    let runtime = Runtime::new().unwrap();
    let steps = load_steps(&runtime, &app.app()).unwrap();
    let caller = steps[0].clone();
    let one = event("test.call", json!({"calls": [{"url": url}]}));
    let none = event("test.call", json!({"calls": []}));
    let uri: hyper::Uri = url.parse().unwrap();
    let agent = ureq::Agent::new_with_defaults();

    let native_fresh = || {
        rt.block_on(async {
            let stream = tokio::net::TcpStream::connect(up.addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let req = hyper::Request::get(uri.path())
                .header("host", uri.authority().unwrap().as_str())
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let res = send.send_request(req).await.unwrap();
            assert_eq!(res.status(), 200);
            res.into_body().collect().await.unwrap();
        })
    };
    let native_pooled = || {
        let mut res = agent.get(&url).call().unwrap();
        assert_eq!(res.status(), 200);
        res.body_mut().read_to_string().unwrap();
    };
    let in_step = |e: &troupe::event::Event| {
        let out = caller.handle(e, 1).unwrap();
        assert_eq!(out.len(), 1);
    };
    // Warm every path up, and check the step's call got its answer.
    for _ in 0..50 {
        native_fresh();
        native_pooled();
        in_step(&one);
        in_step(&none);
    }
    let report = caller.handle(&one, 1).unwrap();
    let data: serde_json::Value = serde_json::from_slice(&report[0].data).unwrap();
    assert_eq!(data["results"][0]["status"], 200, "{data}");

    let time = |f: &dyn Fn(), into: &mut Vec<Duration>| {
        for _ in 0..BLOCK {
            let t = Instant::now();
            f();
            into.push(t.elapsed());
        }
    };
    let (mut fresh, mut pooled, mut with, mut without) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        time(&native_fresh, &mut fresh);
        time(&native_pooled, &mut pooled);
        time(&|| in_step(&one), &mut with);
        time(&|| in_step(&none), &mut without);
    }
    for v in [&mut fresh, &mut pooled, &mut with, &mut without] {
        v.sort();
    }
    let us = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6);
    println!(
        "one GET to 127.0.0.1, {} calls each (p50 / p99):",
        rounds * BLOCK
    );
    println!("| path | p50 | p99 |");
    println!("|---|---|---|");
    for (name, v) in [
        ("native hyper, new connection", &fresh),
        ("native ureq, pooled connection", &pooled),
        ("step invocation with one call", &with),
        ("step invocation without a call", &without),
    ] {
        println!("| {name} | {} | {} |", us(pct(v, 0.5)), us(pct(v, 0.99)));
    }
    let added = |p: f64| pct(&with, p).saturating_sub(pct(&without, p));
    println!();
    println!(
        "a call adds to a step (with - without): p50 {}, p99 {}",
        us(added(0.5)),
        us(added(0.99))
    );
    println!(
        "over native with a new connection: p50 {}, p99 {} (aim: under 100 µs); over pooled: p50 {}",
        us(added(0.5).saturating_sub(pct(&fresh, 0.5))),
        us(added(0.99).saturating_sub(pct(&fresh, 0.99))),
        us(added(0.5).saturating_sub(pct(&pooled, 0.5))),
    );
}
