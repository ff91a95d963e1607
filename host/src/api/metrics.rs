//! The outbound-HTTP part of `GET /metrics`: per step, requests denied by
//! the grants; per step and host (as the grant names it), responses by
//! status class, calls that got none, and a latency histogram. Never a
//! header, a body, a path or a secret.

use std::fmt::Write;
use std::sync::Arc;

use crate::runtime::outbound::stats::BUCKETS;
use crate::runtime::step::LoadedStep;

/// Prometheus text for the outbound calls of `steps`.
pub fn outbound(steps: &[Arc<LoadedStep>]) -> String {
    let mut out = String::new();
    let name = "troupe_http_denied_total";
    let _ = writeln!(
        out,
        "# HELP {name} Outbound HTTP requests no grant allowed\n# TYPE {name} counter"
    );
    for s in steps {
        let _ = writeln!(
            out,
            "{name}{{step=\"{}\"}} {}",
            s.name(),
            s.sandbox.http_stats().denied_total()
        );
    }
    let calls = "troupe_http_requests_total";
    let secs = "troupe_http_request_seconds";
    let _ = writeln!(
        out,
        "# HELP {calls} Outbound HTTP calls, by response status class (`none`: no response)\n# TYPE {calls} counter\n\
         # HELP {secs} Time from an outbound call to its response's head (or its failure)\n# TYPE {secs} histogram"
    );
    for s in steps {
        for (host, h) in s.sandbox.http_stats().hosts() {
            let l = format!("step=\"{}\",host=\"{}\"", s.name(), host.replace('"', ""));
            for (class, n) in &h.responses {
                let _ = writeln!(out, "{calls}{{{l},status=\"{class}\"}} {n}");
            }
            let _ = writeln!(out, "{calls}{{{l},status=\"none\"}} {}", h.failures);
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "{secs}_bucket{{{l},le=\"{le}\"}} {}", h.buckets[i]);
            }
            let all = h.buckets[BUCKETS.len()];
            let _ = writeln!(out, "{secs}_bucket{{{l},le=\"+Inf\"}} {all}");
            let _ = writeln!(out, "{secs}_sum{{{l}}} {}", h.sum_seconds);
            let _ = writeln!(out, "{secs}_count{{{l}}} {all}");
        }
    }
    out
}
