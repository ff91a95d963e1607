//! Troupe's integration tests: one test binary (as cargo's own
//! `tests/testsuite/main.rs`), so wasmtime and the host are linked once
//! rather than once per file. Every module drives real components (guests
//! compiled from source), real brokers (the embedded store in a temporary
//! directory, the NATS server on 127.0.0.1:4222) and, where it matters, a
//! real `troupe` process that is killed.
//!
//! Run one module with `cargo test --release -p troupe-tests --test it -- MODULE::`.

mod child_flows;
mod choreography;
mod cli;
mod cloudevents;
mod conformance;
mod console;
mod contracts;
mod crash;
mod dead_letters;
mod deploys;
mod fixtures;
mod forged;
mod hostile;
mod languages;
mod nats_restart;
mod operator_crash;
mod orchestration;
mod outbound;
mod queued;
mod restart;
mod retention;
mod runs;
mod sandbox;
mod scale_out;
mod state;
mod state_applier;
mod state_limits;
mod store_faults;
mod telemetry;
mod waits;
