//! The host's counters as OpenTelemetry metrics: the same numbers
//! `/metrics` serves, read when the periodic reader exports (observable
//! instruments), so the hot path counts exactly as it does without
//! export.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

use crate::stats::StepSnapshot;

/// What the exported metrics read, at each export.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Each step's counters, by step.
    pub steps: BTreeMap<String, StepSnapshot>,
    /// Runs started and not ended, when this host runs flows.
    pub runs_active: Option<u64>,
}

pub(super) type Source = Arc<dyn Fn() -> Observed + Send + Sync>;

/// A step counter: its name, description, unit, and how it is read.
type Counter = (
    &'static str,
    &'static str,
    &'static str,
    fn(&StepSnapshot) -> u64,
);

const COUNTERS: [Counter; 6] = [
    (
        "troupe.step.handled",
        "Events a step handled",
        "{event}",
        |s| s.handled,
    ),
    (
        "troupe.step.emitted",
        "Events a step emitted",
        "{event}",
        |s| s.emitted,
    ),
    (
        "troupe.step.retried",
        "Deliveries scheduled again after a failure",
        "{delivery}",
        |s| s.retried,
    ),
    (
        "troupe.step.dead_lettered",
        "Events dead-lettered",
        "{event}",
        |s| s.dead_lettered,
    ),
    (
        "troupe.contract.violations",
        "Contract violations, in or out (each raised an alert)",
        "{violation}",
        |s| s.contract_violations,
    ),
    (
        "troupe.state.conflicts",
        "Invocations run again because state they read changed before their commit",
        "{invocation}",
        |s| s.kv_conflicts,
    ),
];

/// A meter provider exporting every `interval`, its instruments reading
/// `observed` (nothing until the host sets it).
pub(super) fn provider(
    exporter: opentelemetry_otlp::MetricExporter,
    resource: Resource,
    interval: Duration,
    observed: Arc<OnceLock<Source>>,
) -> SdkMeterProvider {
    let reader = PeriodicReader::builder(exporter)
        .with_interval(interval)
        .build();
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    let meter = provider.meter("troupe");
    let read = move || observed.get().map(|f| f());
    for (name, description, unit, value) in COUNTERS {
        let read = read.clone();
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_unit(unit)
            .with_callback(move |o| {
                for (step, s) in read().map(|x| x.steps).unwrap_or_default() {
                    o.observe(value(&s), &[KeyValue::new("troupe.step", step)]);
                }
            })
            .build();
    }
    let guest = read.clone();
    meter
        .f64_observable_counter("troupe.step.guest.time")
        .with_description("Time spent in the guest")
        .with_unit("s")
        .with_callback(move |o| {
            for (step, s) in guest().map(|x| x.steps).unwrap_or_default() {
                o.observe(
                    s.guest_micros as f64 / 1e6,
                    &[KeyValue::new("troupe.step", step)],
                );
            }
        })
        .build();
    meter
        .u64_observable_gauge("troupe.runs.active")
        .with_description("Runs started and not yet ended")
        .with_unit("{run}")
        .with_callback(move |o| {
            if let Some(n) = read().and_then(|x| x.runs_active) {
                o.observe(n, &[]);
            }
        })
        .build();
    provider
}
