//! The spans of a run, from what the driver commits: each command (or
//! hybrid event) it sends, as a child of its flow step's span; and, when
//! the run ends, the run's span and each flow step's (`telemetry::spans`).

use std::time::SystemTime;

use crate::event::Event;
use crate::orchestrator::run::RunRecord;
use crate::protocol::FLOW_STEP;
use opentelemetry::trace::SpanKind;

use crate::telemetry::context::{TraceContext, derived_span, run_trace};
use crate::telemetry::spans::{about, trace_of};
use crate::telemetry::{Span, Telemetry};

/// Export the spans of a commit of run `run`: `sent` went out with it,
/// and the run ended with it if `ended`.
pub(super) fn export(telemetry: &Telemetry, run: &RunRecord, sent: &[Event], ended: bool) {
    let now = SystemTime::now();
    let t = RunTrace::of(&run.id, run.trace.as_deref(), run.redrives.len());
    let mut out: Vec<Span> = sent
        .iter()
        // (A child run's reply to its parent is no send of its own.)
        .filter(|e| !crate::protocol::is_reply(e))
        .filter_map(|e| {
            let sid = e.extensions.get(FLOW_STEP)?;
            send(e, &t, sid).map(|s| s.during(now, now))
        })
        .collect();
    if ended {
        out.extend(run_spans(&t, run, now));
    }
    telemetry.export(out);
}

/// An orchestrator's command (or a hybrid step's event) sent for flow
/// step `sid` of run `run`: a child of the step's span.
fn send(e: &Event, run: &RunTrace, sid: &str) -> Option<Span> {
    let ctx = trace_of(e)?;
    let s = Span::new(
        ctx,
        Some((run.step_span(sid), false)),
        SpanKind::Producer,
        format!("send {}", e.kind),
    )
    .attr("messaging.operation.name", "send")
    .attr("messaging.operation.type", "send")
    .attr("troupe.run.id", run.id.clone())
    .attr("troupe.flow.step", sid.to_string());
    Some(about(s, e))
}

/// A run's place in its trace: the trace (the start request's, or one of
/// its own) and the span of the request that started it.
#[derive(Debug, Clone)]
struct RunTrace {
    pub id: String,
    pub trace: u128,
    pub parent: Option<u64>,
    /// Redrives so far: a redriven step's span is a new one.
    pub redrives: usize,
}

impl RunTrace {
    /// The trace of `run`: the one its start carried (`parent`, a
    /// `traceparent`), else the run's id as a trace id.
    fn of(run: &str, parent: Option<&str>, redrives: usize) -> RunTrace {
        RunTrace {
            id: run.to_string(),
            trace: run_trace(run, parent),
            parent: parent.and_then(TraceContext::parse).map(|p| p.span),
            redrives,
        }
    }

    /// The run's own span.
    fn span(&self) -> u64 {
        derived_span(&["run", &self.id])
    }

    /// Flow step `sid`'s span (a new one after each redrive).
    fn step_span(&self, sid: &str) -> u64 {
        derived_span(&["step", &self.id, sid, &self.redrives.to_string()])
    }

    fn ctx(&self, span: u64) -> TraceContext {
        TraceContext {
            trace: self.trace,
            span,
            sampled: true,
        }
    }
}

/// The spans of a run that ended: the run's, and each flow step's that
/// ran, from its record (times, attempts, errors, outcome).
fn run_spans(t: &RunTrace, r: &RunRecord, end: SystemTime) -> Vec<Span> {
    use crate::clock::epoch_ms;
    let at = |ms: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let state = serde_json::to_value(r.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut run = Span::new(
        t.ctx(t.span()),
        t.parent.map(|p| (p, true)),
        SpanKind::Internal,
        format!("run {}", r.flow),
    )
    .during(at(r.created_ms), end)
    .attr("troupe.run.id", r.id.clone())
    .attr("troupe.flow", r.flow.clone())
    .attr("troupe.run.state", state.clone())
    .attr("troupe.run.redrives", r.redrives.len() as i64);
    if let Some(d) = r.deployment {
        run = run.attr("troupe.deployment", d as i64);
    }
    if !matches!(r.state, super::run::RunState::Completed) {
        run = run.failed(&state, r.error.clone().unwrap_or_else(|| state.clone()));
    }
    let mut out = vec![run];
    for (sid, s) in &r.steps {
        let Some(started) = s.started.as_deref().and_then(epoch_ms) else {
            continue;
        };
        let finished = s.finished.as_deref().and_then(epoch_ms).map_or(end, at);
        let step_state = serde_json::to_value(s.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let mut span = Span::new(
            t.ctx(t.step_span(sid)),
            Some((t.span(), false)),
            SpanKind::Internal,
            format!("step {sid}"),
        )
        .during(at(started), finished)
        .attr("troupe.run.id", r.id.clone())
        .attr("troupe.flow.step", sid.clone())
        .attr("troupe.step.state", step_state.clone())
        .attr("troupe.attempts", s.attempts as i64);
        if let Some(c) = &s.component {
            span = span.attr("troupe.component.digest", c.clone());
        }
        use super::run::StepState as S;
        if matches!(
            s.state,
            S::Failed | S::TimedOut | S::CompensationFailed | S::Cancelled
        ) {
            let last = s
                .errors
                .last()
                .cloned()
                .unwrap_or_else(|| step_state.clone());
            span = span.failed(&step_state, last);
        }
        out.push(span);
    }
    out
}
