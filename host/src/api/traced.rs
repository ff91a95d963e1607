//! The trace context of a request: the caller's `traceparent` header,
//! and, while telemetry exports spans, a `server` span for the request
//! that what it starts (events, runs) are children of.

use std::time::SystemTime;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::ApiState;
use crate::event::{Event, TRACEPARENT};
use crate::telemetry::{Span, Telemetry, TraceContext, spans};

/// The span what a request does belongs under: the request's `server`
/// span, or (without export) the caller's `traceparent`, if any.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Parent(pub Option<TraceContext>);

/// Every request: read the caller's context, and span the request.
pub(super) async fn layer(State(s): State<ApiState>, mut req: Request, next: Next) -> Response {
    let caller = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    if !s.telemetry.tracing() {
        req.extensions_mut().insert(Parent(caller));
        return next.run(req).await;
    }
    let ctx = caller.map_or_else(TraceContext::root, |c| c.child());
    req.extensions_mut().insert(Parent(Some(ctx)));
    let start = SystemTime::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_string(), |m| m.as_str().to_string());
    let path = req.uri().path().to_string();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let mut span = spans::server(ctx, caller, &method, &route)
        .during(start, SystemTime::now())
        .attr("url.path", path)
        .attr("http.response.status_code", status as i64);
    if status >= 500 {
        span.fail(&status.to_string(), format!("status {status}"));
    }
    s.telemetry.export([span]);
    response
}

/// Give each event from outside its place in the trace, and span its
/// publication (from `start` to now) under `parent`.
///
/// Without export, an event that carries no `traceparent` gets one in the
/// caller's trace (or a new trace), so everything it causes shares it.
/// With export, each event's `traceparent` becomes its publication's
/// span: a child of the producer's own context if the event carried one
/// (the CloudEvents distributed-tracing extension), else of the request.
pub(super) fn place(events: &mut [Event], parent: Parent, telemetry: &Telemetry) {
    for e in events {
        let own = spans::trace_of(e);
        let ctx = match (own, parent.0) {
            (Some(own), _) if telemetry.tracing() => own.child(),
            (Some(_), _) => continue,
            (None, Some(p)) => p.child(),
            (None, None) => TraceContext::root(),
        };
        e.extensions.insert(TRACEPARENT.to_string(), ctx.header());
    }
}

/// The publication spans of `events` (placed by [`place`]; `producers`
/// are the contexts they carried before): children of the producer's
/// context if an event carried one, else of the request's span. The
/// caller times them.
pub(super) fn published(
    events: &[Event],
    producers: &[Option<TraceContext>],
    parent: Parent,
) -> Vec<Span> {
    events
        .iter()
        .zip(producers)
        .filter_map(|(e, own)| {
            let mut s = spans::publish(e, own.or(parent.0).map(|p| p.span))?;
            if let Some(own) = own {
                s.parent = Some((own.span, true));
                s.links.push(*own);
            }
            Some(s)
        })
        .collect()
}

/// End `spans` now, started at `start`, failed with `error` if it is
/// one.
pub(super) fn ended(spans: Vec<Span>, start: SystemTime, error: Option<String>) -> Vec<Span> {
    let now = SystemTime::now();
    spans
        .into_iter()
        .map(|s| {
            let mut s = s.during(start, now);
            if let Some(e) = &error {
                s.fail("unavailable", e.clone());
            }
            s
        })
        .collect()
}
