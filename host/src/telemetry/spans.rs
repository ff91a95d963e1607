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
//! A run's spans (`run FLOW` from the start's request, `step ID` per flow
//! step, `send TYPE` per command, whose worker's `process` span is its
//! child) are made from its record by `orchestrator/traced.rs`, an
//! outbound call's (`client`) from its record by `choreo/traced.rs`, with
//! [`Span::new`] and [`about`].

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::context::TraceContext;
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
    /// A span of `ctx` under `parent` (its span id, and whether it was
    /// made elsewhere), not yet timed.
    pub fn new(
        ctx: TraceContext,
        parent: Option<(u64, bool)>,
        kind: SpanKind,
        name: String,
    ) -> Span {
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
pub fn about(mut s: Span, e: &Event) -> Span {
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

/// The trace context an event carries, if well formed.
pub fn trace_of(e: &Event) -> Option<TraceContext> {
    e.extensions
        .get(crate::event::TRACEPARENT)
        .and_then(|t| TraceContext::parse(t))
}
