//! The spans of one delivery, while a worker handles it: made only when
//! telemetry exports spans, and exported when the delivery is done with
//! (the guard is dropped: after the worker hands off its settlement, or,
//! for a state commit, when its verdict comes).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::event::Event;
use crate::runtime::outbound::calls::CallRecord;
use crate::runtime::outbound::key;
use opentelemetry::trace::SpanKind;

use crate::telemetry::{Span, Telemetry, spans};

/// A delivery's `process` span, its `invoke` span, and what they caused.
pub(super) struct Traced {
    telemetry: Telemetry,
    process: Span,
    invoke: Option<Span>,
    more: Vec<Span>,
}

impl Traced {
    /// Begin the spans of `event`'s delivery to `step`, taken at `taken`.
    pub fn begin(
        telemetry: &Telemetry,
        event: &Event,
        step: &Arc<str>,
        attempt: u32,
        taken: SystemTime,
    ) -> Traced {
        Traced {
            telemetry: telemetry.clone(),
            process: spans::process(event, step, attempt).during(taken, taken),
            invoke: None,
            more: Vec::new(),
        }
    }

    /// The guest ran from `start` to now, as deployment `deployment`'s
    /// component `digest`, and made `calls`; `outcome` is `ok` or the
    /// failure's class.
    #[allow(clippy::too_many_arguments)]
    pub fn invoked(
        &mut self,
        event: &Event,
        step: &Arc<str>,
        attempt: u32,
        (deployment, digest): (u64, &str),
        start: SystemTime,
        calls: &[CallRecord],
        failure: Option<&crate::protocol::Failure>,
    ) {
        let mut invoke = spans::invoke(&self.process, step, attempt, digest, deployment)
            .during(start, SystemTime::now());
        if let Some(f) = failure {
            // The delivery failed with its invocation.
            self.process.fail(f.class.as_str(), f.message.clone());
        }
        invoke = match failure {
            None => invoke.attr("troupe.outcome", "ok"),
            Some(f) => invoke
                .attr("troupe.outcome", f.class.as_str())
                .failed(f.class.as_str(), f.message.clone()),
        };
        if !calls.is_empty() {
            let basis = key::basis(event);
            for c in calls {
                let id = key::span_id(&basis, step, c.position);
                let Ok(span) = u64::from_str_radix(&id, 16) else {
                    continue;
                };
                let at = crate::clock::epoch_ms(&c.time).map_or(start, |ms| {
                    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
                });
                let end = at + Duration::from_micros(c.duration_us);
                self.more.push(client(&invoke, span, c).during(at, end));
            }
        }
        self.invoke = Some(invoke);
    }

    /// The events it published, each a child of the invocation (or of the
    /// delivery, for what the host publishes itself).
    pub fn published(&mut self, events: &[Event]) {
        let parent = self.invoke.as_ref().unwrap_or(&self.process).ctx.span;
        let now = SystemTime::now();
        self.more.extend(
            events
                .iter()
                .filter_map(|e| spans::publish(e, Some(parent)))
                .map(|s| s.during(now, now)),
        );
    }

    /// The delivery failed as `class` (after the guest, or without it).
    pub fn failed(&mut self, class: &str, message: &str) {
        if self.process.error.is_none() {
            self.process.fail(class, message.to_string());
        }
    }

    /// Its state commit, from `start` to now, writing `writes` entries;
    /// `verdict` is `committed`, or why not.
    pub fn committed(
        &mut self,
        step: &Arc<str>,
        writes: usize,
        start: SystemTime,
        verdict: Result<(), &str>,
    ) {
        let mut s = spans::commit(&self.process, step, writes).during(start, SystemTime::now());
        s = match verdict {
            Ok(()) => s.attr("troupe.state.verdict", "committed"),
            Err(why) => s
                .attr("troupe.state.verdict", why.to_string())
                .failed(why, why.to_string()),
        };
        self.more.push(s);
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        self.process.end = SystemTime::now().max(self.process.start);
        let process = std::mem::replace(&mut self.process, Span::nothing());
        let all = std::iter::once(process)
            .chain(self.invoke.take())
            .chain(std::mem::take(&mut self.more));
        self.telemetry.export(all);
    }
}

/// An outbound HTTP call a guest made during `invoke`, whose
/// `traceparent` named span `span`.
fn client(invoke: &Span, span: u64, call: &CallRecord) -> Span {
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
