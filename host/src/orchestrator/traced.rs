//! The spans of a run, from what the driver commits: each command (or
//! hybrid event) it sends, as a child of its flow step's span; and, when
//! the run ends, the run's span and each flow step's (`telemetry::spans`).

use std::time::SystemTime;

use crate::event::Event;
use crate::orchestrator::run::RunRecord;
use crate::protocol::FLOW_STEP;
use crate::telemetry::spans::{self, RunTrace};
use crate::telemetry::{Span, Telemetry};

/// Export the spans of a commit of run `run`: `sent` went out with it,
/// and the run ended with it if `ended`.
pub(super) fn export(telemetry: &Telemetry, run: &RunRecord, sent: &[Event], ended: bool) {
    let now = SystemTime::now();
    let t = RunTrace::of(&run.id, run.trace.as_deref(), run.redrives.len());
    let mut out: Vec<Span> = sent
        .iter()
        .filter_map(|e| {
            let sid = e.extensions.get(FLOW_STEP)?;
            spans::send(e, &t, sid).map(|s| s.during(now, now))
        })
        .collect();
    if ended {
        out.extend(spans::run(&t, run, now));
    }
    telemetry.export(out);
}
