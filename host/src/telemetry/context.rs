//! W3C trace context: the `traceparent` an event, a run or a request
//! carries, read strictly and written back.
//!
//! A `traceparent` is `00-TRACE-SPAN-FLAGS`: a 32-digit trace id and a
//! 16-digit span id in lowercase hex, neither all zeros. One that is not
//! is treated as absent (the W3C rule), so a producer's malformed header
//! starts a new trace rather than poisoning an existing one.

use uuid::Uuid;

/// A span's place in a trace: what a `traceparent` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace: u128,
    pub span: u64,
    /// Whether the producer sampled it (flags bit 0).
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace, with a new span.
    pub fn root() -> TraceContext {
        TraceContext {
            trace: Uuid::new_v4().as_u128().max(1),
            span: new_span(),
            sampled: true,
        }
    }

    /// A new span in the same trace.
    pub fn child(&self) -> TraceContext {
        self.with_span(new_span())
    }

    /// The span `span` in the same trace.
    pub fn with_span(&self, span: u64) -> TraceContext {
        TraceContext {
            span: span.max(1),
            ..*self
        }
    }

    /// Read a `traceparent`; `None` unless it is well formed (version
    /// `00` exactly as written; a later version's first four fields, as
    /// the W3C says a reader of version 00 does).
    pub fn parse(text: &str) -> Option<TraceContext> {
        let mut parts = text.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        let hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2) || version == "ff" || (version == "00" && rest.is_some()) {
            return None;
        }
        if !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return None;
        }
        let trace = u128::from_str_radix(trace, 16).ok()?;
        let span = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace != 0 && span != 0).then_some(TraceContext {
            trace,
            span,
            sampled: flags & 1 == 1,
        })
    }

    /// As a `traceparent` (version 00).
    pub fn header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace, self.span, self.sampled as u8
        )
    }

    /// The trace id as its 32 hex digits.
    pub fn trace_hex(&self) -> String {
        format!("{:032x}", self.trace)
    }
}

/// A new, random, non-zero span id.
pub fn new_span() -> u64 {
    Uuid::new_v4().as_u64_pair().0.max(1)
}

/// The trace of run `run`: that of the request that started it (`parent`,
/// a `traceparent`), else the run's id (a UUID) as the trace id; one
/// derived from the id for anything else.
pub fn run_trace(run: &str, parent: Option<&str>) -> u128 {
    match parent.and_then(TraceContext::parse) {
        Some(p) => p.trace,
        None => Uuid::try_parse(run)
            .map(|u| u.as_u128())
            .unwrap_or_else(|_| derived_span(&[run]) as u128)
            .max(1),
    }
}

/// A span id derived from `parts` (the same parts, the same id): the
/// spans of a run and its steps, named before they end.
pub fn derived_span(parts: &[&str]) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_traceparent_round_trips() {
        let t = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = TraceContext::parse(t).unwrap();
        assert_eq!(c.trace, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(c.span, 0x00f067aa0ba902b7);
        assert!(c.sampled);
        assert_eq!(c.header(), t);
        let unsampled = TraceContext::parse(&t.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled);
    }

    #[test]
    fn anything_else_is_absent() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        // A later version: its first four fields are read.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what";
        assert!(TraceContext::parse(later).is_some());
    }

    #[test]
    fn children_stay_in_the_trace_and_derived_spans_are_stable() {
        let root = TraceContext::root();
        let c = root.child();
        assert_eq!(c.trace, root.trace);
        assert_ne!(c.span, root.span);
        assert_eq!(derived_span(&["run", "a"]), derived_span(&["run", "a"]));
        assert_ne!(derived_span(&["run", "a"]), derived_span(&["runa", ""]));
    }
}
