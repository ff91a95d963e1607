//! The spans Troupe exports, as data: what each kind is called, its kind,
//! its parent and links, and its attributes, after the OpenTelemetry
//! semantic conventions for messaging (`messaging.*`), HTTP (`http.*`,
//! `url.*`, `server.*`) and CloudEvents (`cloudevents.*`), with Troupe's
//! own under `troupe.*`.
//!
//! No clock and no I/O here: the caller hands in the times. The ids come
//! from the events and runs themselves (an event's `traceparent` is the
//! span of its publication; a run's and its steps' spans are derived from
//! the run's id), so a span can be referred to before it ends and the
//! same work, told twice, names the same span.
//!
//! The shape of one cascade:
//!
//! ```text
//! POST /v1/events (server)
//! └─ publish order.placed (producer)          ← the event's traceparent
//!    └─ process order.placed (consumer, step)  + link to its creation
//!       ├─ invoke payment (internal: attempt, outcome, component)
//!       │  ├─ POST (client)                     ← the call's traceparent
//!       │  └─ publish payment.done (producer)   ← the next event's
//!       └─ commit state (internal)
//! ```
//!
//! and of one run: `run FLOW` (from the start's request), `step ID` per
//! flow step, `send TYPE` per command (whose worker's `process` span is
//! its child, as above).

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::context::{TraceContext, derived_span};
use crate::event::Event;

/// `messaging.system`: Troupe is the messaging system.
pub const SYSTEM: &str = "troupe";

/// One span, before it is handed to the exporter.
#[derive(Debug, Clone)]
pub struct Span {
    pub ctx: TraceContext,
    /// The parent's span id (in `ctx`'s trace), and whether it was made
    /// outside this host.
    pub parent: Option<(u64, bool)>,
    pub kind: SpanKind,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    pub links: Vec<TraceContext>,
    /// Set when the work failed: the status message.
    pub error: Option<String>,
}

impl Span {
    fn new(ctx: TraceContext, parent: Option<(u64, bool)>, kind: SpanKind, name: String) -> Span {
        Span {
            ctx,
            parent,
            kind,
            name,
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
            // Enough for the most any kind has: one allocation per span.
            attributes: Vec::with_capacity(12),
            links: Vec::new(),
            error: None,
        }
    }

    /// From `start` to `end`.
    pub fn during(mut self, start: SystemTime, end: SystemTime) -> Span {
        self.start = start;
        self.end = end.max(start);
        self
    }

    pub fn attr(mut self, key: &'static str, value: impl Into<opentelemetry::Value>) -> Span {
        self.attributes.push(KeyValue::new(key, value));
        self
    }

    /// Failed, with this message (and `error.type`).
    pub fn failed(mut self, class: &str, message: impl Into<String>) -> Span {
        self.fail(class, message);
        self
    }

    /// The same, in place.
    pub fn fail(&mut self, class: &str, message: impl Into<String>) {
        self.attributes
            .push(KeyValue::new("error.type", class.to_string()));
        self.error = Some(message.into());
    }

    /// A span of nothing (what is left of one moved out).
    pub fn nothing() -> Span {
        Span::new(
            TraceContext {
                trace: 0,
                span: 0,
                sampled: false,
            },
            None,
            SpanKind::Internal,
            String::new(),
        )
    }

    /// As the SDK's record of a finished span.
    pub fn into_data(self, scope: &InstrumentationScope) -> SpanData {
        let flags = TraceFlags::SAMPLED;
        let context = |c: &TraceContext, remote| {
            SpanContext::new(
                TraceId::from_bytes(c.trace.to_be_bytes()),
                SpanId::from_bytes(c.span.to_be_bytes()),
                flags,
                remote,
                TraceState::default(),
            )
        };
        let (parent, remote) = self.parent.unwrap_or((0, false));
        let mut links = SpanLinks::default();
        links.links = self
            .links
            .iter()
            .map(|l| Link::with_context(context(l, true)))
            .collect();
        SpanData {
            span_context: context(&self.ctx, false),
            parent_span_id: SpanId::from_bytes(parent.to_be_bytes()),
            parent_span_is_remote: remote,
            span_kind: self.kind,
            name: Cow::Owned(self.name),
            start_time: self.start,
            end_time: self.end,
            attributes: self.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links,
            status: match self.error {
                Some(m) => Status::error(m),
                None => Status::Unset,
            },
            instrumentation_scope: scope.clone(),
        }
    }
}

/// An HTTP request the API served: a child of the caller's `traceparent`
/// header, if it sent one.
pub fn server(ctx: TraceContext, caller: Option<TraceContext>, method: &str, route: &str) -> Span {
    let name = format!("{method} {route}");
    Span::new(ctx, caller.map(|c| (c.span, true)), SpanKind::Server, name)
        .attr("http.request.method", method.to_string())
        .attr("http.route", route.to_string())
}

/// The messaging and CloudEvents attributes every span about one event
/// carries (the event's id and type are `messaging.message.id` and
/// `messaging.destination.name`: not repeated as `cloudevents.*`).
fn about(mut s: Span, e: &Event) -> Span {
    s.attributes.extend([
        KeyValue::new("messaging.system", SYSTEM),
        KeyValue::new("messaging.destination.name", e.kind.clone()),
        KeyValue::new("messaging.message.id", e.id.clone()),
        KeyValue::new(
            "messaging.message.conversation_id",
            e.correlation_id().to_string(),
        ),
        KeyValue::new("messaging.message.body.size", e.data.len() as i64),
        KeyValue::new("cloudevents.event_source", e.source.clone()),
    ]);
    if let Some(subject) = &e.subject {
        s.attributes
            .push(KeyValue::new("cloudevents.event_subject", subject.clone()));
    }
    s
}

/// The publication of `e`, whose `traceparent` names this span, under
/// the span `parent` (the request, or the invocation that emitted it).
/// `None` when `e` carries no well-formed `traceparent`.
pub fn publish(e: &Event, parent: Option<u64>) -> Option<Span> {
    let ctx = trace_of(e)?;
    let s = Span::new(
        ctx,
        parent.map(|p| (p, false)),
        SpanKind::Producer,
        format!("publish {}", e.kind),
    )
    .attr("messaging.operation.name", "publish")
    .attr("messaging.operation.type", "send");
    Some(about(s, e))
}

/// An orchestrator's command (or a hybrid step's event) sent for flow
/// step `sid` of run `run`: a child of the step's span.
pub fn send(e: &Event, run: &RunTrace, sid: &str) -> Option<Span> {
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

/// The delivery of `e` to `step`'s consumer group, handled on this host:
/// a child of the event's publication, and linked to it (the convention's
/// link from a message's creation to its processing).
pub fn process(e: &Event, step: &std::sync::Arc<str>, attempt: u32) -> Span {
    let creation = trace_of(e);
    let ctx = creation.map_or_else(TraceContext::root, |c| c.child());
    let mut s = Span::new(
        ctx,
        creation.map(|c| (c.span, true)),
        SpanKind::Consumer,
        format!("process {}", e.kind),
    )
    .attr("messaging.operation.name", "process")
    .attr("messaging.operation.type", "process")
    .attr("messaging.consumer.group.name", step.clone())
    .attr("troupe.attempt", attempt as i64);
    s.links.extend(creation);
    about(s, e)
}

/// The guest's invocation under the delivery's span `process`.
pub fn invoke(
    process: &Span,
    step: &std::sync::Arc<str>,
    attempt: u32,
    digest: &str,
    deployment: u64,
) -> Span {
    Span::new(
        process.ctx.child(),
        Some((process.ctx.span, false)),
        SpanKind::Internal,
        format!("invoke {step}"),
    )
    .attr("troupe.step", step.clone())
    .attr("troupe.attempt", attempt as i64)
    .attr("troupe.component.digest", digest.to_string())
    .attr("troupe.deployment", deployment as i64)
}

/// An outbound HTTP call a guest made during `invoke`, whose
/// `traceparent` named span `span`.
pub fn client(
    invoke: &Span,
    span: u64,
    call: &crate::runtime::outbound::calls::CallRecord,
) -> Span {
    let mut s = Span::new(
        invoke.ctx.with_span(span),
        Some((invoke.ctx.span, false)),
        SpanKind::Client,
        call.method.clone(),
    )
    .attr("http.request.method", call.method.clone())
    .attr("server.address", call.host.clone())
    .attr("server.port", call.port as i64)
    .attr(
        "url.full",
        format!("{}://{}:{}{}", call.scheme, call.host, call.port, call.path),
    );
    if let Some(status) = call.status {
        s = s.attr("http.response.status_code", status as i64);
        if status >= 500 {
            s = s.failed(&status.to_string(), format!("status {status}"));
        }
    }
    if let Some(e) = &call.error {
        s = s.failed(e, e.clone());
    }
    s
}

/// A step's state commit under the delivery's span.
pub fn commit(process: &Span, step: &std::sync::Arc<str>, writes: usize) -> Span {
    Span::new(
        process.ctx.child(),
        Some((process.ctx.span, false)),
        SpanKind::Internal,
        "commit state".to_string(),
    )
    .attr("troupe.step", step.clone())
    .attr("troupe.state.writes", writes as i64)
}

/// A run's place in its trace: the trace (the start request's, or one of
/// its own) and the span of the request that started it.
#[derive(Debug, Clone)]
pub struct RunTrace {
    pub id: String,
    pub trace: u128,
    pub parent: Option<u64>,
    /// Redrives so far: a redriven step's span is a new one.
    pub redrives: usize,
}

impl RunTrace {
    /// The trace of `run`: the one its start carried (`parent`, a
    /// `traceparent`), else the run's id as a trace id.
    pub fn of(run: &str, parent: Option<&str>, redrives: usize) -> RunTrace {
        let parent = parent.and_then(TraceContext::parse);
        let trace = match parent {
            Some(p) => p.trace,
            None => uuid::Uuid::try_parse(run)
                .map(|u| u.as_u128())
                .unwrap_or_else(|_| derived_span(&[run]) as u128)
                .max(1),
        };
        RunTrace {
            id: run.to_string(),
            trace,
            parent: parent.map(|p| p.span),
            redrives,
        }
    }

    /// The run's own span.
    pub fn span(&self) -> u64 {
        derived_span(&["run", &self.id])
    }

    /// Flow step `sid`'s span (a new one after each redrive).
    pub fn step_span(&self, sid: &str) -> u64 {
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
pub fn run(t: &RunTrace, r: &crate::orchestrator::run::RunRecord, end: SystemTime) -> Vec<Span> {
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
    if !matches!(r.state, crate::orchestrator::run::RunState::Completed) {
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
        use crate::orchestrator::run::StepState as S;
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

/// The trace context an event carries, if well formed.
pub fn trace_of(e: &Event) -> Option<TraceContext> {
    e.extensions
        .get(crate::event::TRACEPARENT)
        .and_then(|t| TraceContext::parse(t))
}
