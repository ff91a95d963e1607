//! Troupe: run event-driven microservices out of sandboxed WebAssembly steps.
//!
//! A *step* is a WASI component implementing the `troupe:step` world (see
//! `wit/step.wit`). The host loads steps into sandboxes, runs a durable
//! message broker, and wires steps together by choreography: each step is
//! subscribed to the event types it declares, and what it emits is routed
//! on to the next steps.
//!
//! # Layout
//!
//! - [`world`]: the one place `bindgen!` runs for the host side of the WIT.
//! - [`event`]: the CloudEvents envelope as the host stores and routes it.
//! - [`contract`]: a step's declared contract, compiled JSON Schemas, and the
//!   checks made on data crossing the sandbox boundary.
//! - [`app`]: `troupe.toml`, the app manifest: steps, limits, grants.
//! - [`runtime`]: the wasmtime engine, the on-disk artifact cache, the
//!   sandbox (WASI context, limits) and calling a step.
//! - [`broker`]: the `Broker` trait and its backends (`embedded`: SQLite;
//!   `nats`: NATS JetStream, many hosts per app).
//! - [`protocol`]: commands, replies and `FailureClass`, the one name of
//!   each way a message can fail; [`retry`]: the retry policy; [`clock`]:
//!   the wall clock as the host records it.
//! - [`choreo`]: the workers that feed deliveries to steps and route their
//!   output; contract enforcement and alerts.
//! - [`host`]: putting it together: load an app, run it, stop it.
//! - [`builder`]: building plugin sources (Rust, Python, JavaScript, C)
//!   into components, and [`scaffold`]: new plugins from templates.
//! - [`conformance`]: the kit that checks a component honours the world.
//! - [`check`]: the app's wiring: every produced type is one its consumers
//!   accept (contracts change passively); [`graph`]: the wiring as a diagram;
//!   [`asyncapi`]: the events as an AsyncAPI 3.0 document.
//! - [`flow`], [`orchestrator`]: flow files and the durable state machine
//!   that runs them (its decisions in `orchestrator::machine`, apart from
//!   their effects); [`api`], [`client`]: the HTTP API (with `/metrics`)
//!   and its client.
//! - [`kv`]: step state: an invocation's reads and writes of its buckets,
//!   and what its commit must find still true (decisions only).
//! - [`stats`]: per-step counters, shown by the CLI and by `/metrics`.
//! - [`text`]: text the host did not write (guests', producers'), bounded
//!   and escaped before it is stored, logged or printed.

pub mod api;
pub mod app;
pub mod asyncapi;
pub mod broker;
pub mod builder;
pub mod check;
pub mod choreo;
pub mod client;
pub mod clock;
pub mod conformance;
pub mod contract;
pub mod deploy;
pub mod deployer;
pub mod event;
pub mod flow;
pub mod graph;
pub mod host;
pub mod ingress;
pub mod kv;
pub mod loader;
pub mod orchestrator;
pub mod protocol;
pub mod retry;
pub mod runtime;
pub mod scaffold;
pub mod schedule;
pub mod shutdown;
pub mod stats;
pub mod telemetry;
pub mod text;
pub mod world;

#[cfg(test)]
mod hostile_inputs;
