//! Outbound HTTP: `wasi:http/outgoing-handler` for steps, deny by default.
//!
//! - [`grant`]: `grants.http` entries and matching a request against them;
//! - [`secrets`]: `[secrets]` values and the header templates that use
//!   them;
//! - [`key`]: the idempotency key of a call;
//! - [`send`]: sending an allowed request under the step's limits;
//! - [`stats`]: counters and latencies, per step and host, for `/metrics`;
//! - [`calls`]: the record of each call, for `troupe trace`.
//!
//! Every request a guest makes goes through [`StepHttp::send_request`]:
//! **a request no grant allows never leaves the host** (the guest gets
//! `HTTP-request-denied`), and one that is allowed gets the grant's headers
//! (secrets filled in by the host, out of the guest's sight), an
//! `Idempotency-Key` unless the guest set one, and a `traceparent`. A
//! redirect is the guest's to follow, as a request of its own, so each hop
//! is checked. Nothing here trusts the guest's view of its request: the
//! host reads the method, scheme, host, port and path from what is sent.

pub mod calls;
pub mod grant;
pub mod key;
pub mod secrets;
mod send;
pub mod stats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};
use http_body_util::BodyExt;
use serde::Deserialize;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use calls::{CallLog, CallRecord};
use grant::{HttpGrant, HttpGrantSpec, Scheme, Target, why_denied};
use secrets::{Secrets, Template};
use stats::HttpStats;

/// Limits on every call a step makes (`limits.http` in `troupe.toml`). A
/// call also ends with the step's invocation: it cannot outlive
/// `limits.timeout_ms`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// Connecting (name lookup, TCP and TLS), milliseconds.
    pub connect_timeout_ms: u64,
    /// From the request sent to the response's head, milliseconds.
    pub first_byte_timeout_ms: u64,
    /// Between two pieces of the response body, milliseconds.
    pub between_bytes_timeout_ms: u64,
    /// The whole call, response body included, milliseconds.
    pub request_timeout_ms: u64,
    /// The largest response body, bytes.
    pub max_response_bytes: u64,
    /// Calls of the step in flight at once (all its instances together);
    /// a call beyond waits for one to end.
    pub max_concurrent: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            connect_timeout_ms: 5_000,
            first_byte_timeout_ms: 10_000,
            between_bytes_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            max_response_bytes: 4 << 20,
            max_concurrent: 16,
        }
    }
}

impl HttpLimits {
    /// What is wrong with these limits, if anything.
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("first_byte_timeout_ms", self.first_byte_timeout_ms),
            ("between_bytes_timeout_ms", self.between_bytes_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
        ] {
            if v == 0 || v > 600_000 {
                return Err(format!("limits.http.{name} must be between 1 and 600000"));
            }
        }
        if self.max_response_bytes == 0 || self.max_response_bytes > 1 << 30 {
            return Err("limits.http.max_response_bytes must be between 1 and 1073741824".into());
        }
        if self.max_concurrent == 0 || self.max_concurrent > 1024 {
            return Err("limits.http.max_concurrent must be between 1 and 1024".into());
        }
        Ok(())
    }
}

/// A grant ready to use: what it allows and the headers it adds (marked
/// sensitive: their `Debug` hides the value).
#[derive(Debug)]
struct Allowed {
    grant: HttpGrant,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// A step's outbound HTTP: its grants, limits, the permits that bound its
/// calls in flight, and its counters. Shared by the step's instances.
pub struct Outbound {
    step: Arc<str>,
    grants: Vec<Allowed>,
    limits: HttpLimits,
    permits: Arc<tokio::sync::Semaphore>,
    /// Connections kept open between the step's calls.
    pool: Arc<send::Pool>,
    pub stats: Arc<HttpStats>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("step", &self.step)
            .field(
                "grants",
                &self.grants.iter().map(|a| &a.grant.url).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// Parse `specs` for `step`, with headers filled in from `secrets`.
    /// The error names the grant and what is wrong, never a secret.
    pub fn new(
        step: &str,
        specs: &[HttpGrantSpec],
        limits: &HttpLimits,
        secrets: &Secrets,
    ) -> Result<Outbound, String> {
        limits.check()?;
        let mut grants = Vec::new();
        for spec in specs {
            let grant = HttpGrant::parse(spec)?;
            let mut headers = Vec::new();
            for (name, value) in &spec.headers {
                let at = || format!("grants.http {:?}: header {name:?}", spec.url);
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("{}: not a header name", at()))?;
                if wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(&name) {
                    return Err(format!("{}: the host sets this header itself", at()));
                }
                let value = Template::parse(value)
                    .and_then(|t| t.render(secrets))
                    .map_err(|e| format!("{}: {e}", at()))?;
                headers.push((name, value));
            }
            grants.push(Allowed { grant, headers });
        }
        Ok(Outbound {
            step: step.into(),
            grants,
            limits: limits.clone(),
            permits: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent as usize)),
            pool: Arc::default(),
            stats: Arc::new(HttpStats::default()),
        })
    }

    /// Whether the step has any grant (else every request is denied).
    pub fn has_grants(&self) -> bool {
        !self.grants.is_empty()
    }

    /// The grants, as parsed.
    pub fn grants(&self) -> impl Iterator<Item = &HttpGrant> {
        self.grants.iter().map(|a| &a.grant)
    }
}

/// The import through which a component makes HTTP requests.
pub const OUTGOING_HANDLER: &str = "wasi:http/outgoing-handler";

/// Whether the component `bytes` imports [`OUTGOING_HANDLER`] (any
/// version), read from its top-level imports without compiling it; `None`
/// when the bytes are not a component.
pub fn imports_http(bytes: &[u8]) -> Option<bool> {
    use wasmparser::{Parser, Payload};
    let mut depth = 0usize;
    let mut found = false;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let name = import.ok()?.name.name;
                    let base = name.split('@').next().unwrap_or(name);
                    found |= base == OUTGOING_HANDLER;
                }
            }
            _ => {}
        }
    }
    Some(found)
}

/// What the current invocation contributes to its calls: the basis of
/// their idempotency keys, the trace they belong to, the event for logs.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// Whether an event is being handled; not in `describe`, when every
    /// request is denied.
    pub handling: bool,
    /// See [`key::basis`]; left empty for a step with no grants, whose
    /// requests are all denied.
    pub key_basis: String,
    /// The event's W3C trace id, when it has one.
    pub trace_id: Option<String>,
    pub event_id: String,
}

/// The `wasi:http` hooks of one store: the step's [`Outbound`] and the
/// invocation under way.
pub struct StepHttp {
    outbound: Arc<Outbound>,
    invocation: Invocation,
    /// Calls made so far in this invocation (the next call's position).
    calls: u32,
    /// What came of them.
    log: CallLog,
}

impl StepHttp {
    pub fn new(outbound: Arc<Outbound>) -> StepHttp {
        StepHttp {
            outbound,
            invocation: Invocation::default(),
            calls: 0,
            log: CallLog::default(),
        }
    }

    /// Start an invocation: calls are counted from 0 again.
    pub fn begin(&mut self, invocation: Invocation) {
        self.invocation = invocation;
        self.calls = 0;
        // A call of the last invocation still under way fills in a log
        // of its own, not this one.
        self.log = CallLog::default();
    }

    /// The calls of the invocation so far, for its trace (the first
    /// [`calls::MAX_RECORDS`]).
    pub fn take_calls(&mut self) -> Vec<CallRecord> {
        if self.calls == 0 {
            return Vec::new();
        }
        if self.calls as usize > calls::MAX_RECORDS {
            tracing::warn!(
                step = %self.outbound.step,
                event = %self.invocation.event_id,
                "{} outbound calls in one invocation: the trace records the first {}",
                self.calls,
                calls::MAX_RECORDS
            );
        }
        self.log.take()
    }

    /// The decision for one request: the grant that allows it, or why none
    /// does.
    fn decide(&self, req: &http::Request<WasiBody>) -> Result<&Allowed, String> {
        let uri = req.uri();
        let Some(scheme) = Scheme::of(uri.scheme_str()) else {
            let other = uri.scheme_str();
            return Err(format!("scheme {other:?} is not http or https"));
        };
        let host = uri.host().unwrap_or("").to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(scheme.default_port());
        let t = Target {
            scheme,
            host,
            port,
            path: uri.path(),
            method: req.method().as_str(),
        };
        if !self.invocation.handling {
            return Err("no request may be made outside `handle`".into());
        }
        self.outbound
            .grants
            .iter()
            .find(|a| a.grant.allows(&t))
            .ok_or_else(|| why_denied(&self.outbound.grants().cloned().collect::<Vec<_>>(), &t))
    }
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for StepHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let position = self.calls;
        self.calls += 1;
        let out = &self.outbound;
        let ms = Duration::from_millis;
        // Not the invocation's deadline: the guard ends the invocation
        // there, as `timeout`, whatever the call is doing.
        let until = Instant::now() + ms(out.limits.request_timeout_ms);
        // Whatever becomes of the call, the guest's writes of its body
        // succeed (the JavaScript engine aborts on a failed one).
        let mut request = request.map(|b| send::Drained::new(b, until).boxed_unsync());
        let uri = request.uri();
        let default_port = Scheme::of(uri.scheme_str()).map_or(0, Scheme::default_port);
        // The guest's words, cut: a record is never larger than this.
        let cut = |s: &str, max| crate::text::clean(s, max);
        let record = CallRecord {
            position,
            method: cut(request.method().as_str(), 32),
            scheme: cut(uri.scheme_str().unwrap_or(""), 16),
            host: cut(uri.host().unwrap_or(""), 256),
            port: uri.port_u16().unwrap_or(default_port),
            path: cut(uri.path(), 512),
            time: crate::event::now_rfc3339(),
            status: None,
            error: None,
            duration_us: 0,
        };
        let allowed = match self.decide(&request) {
            Ok(a) => a,
            Err(why) => {
                self.log.push(CallRecord {
                    error: Some("HTTP-request-denied".into()),
                    ..record
                });
                out.stats.denied();
                tracing::warn!(
                    step = %out.step,
                    event = %self.invocation.event_id,
                    "outbound HTTP request denied: {why}"
                );
                return Box::new(async { Err(HttpError::HttpRequestDenied) });
            }
        };
        let headers = request.headers_mut();
        for (name, value) in &allowed.headers {
            headers.insert(name.clone(), value.clone());
        }
        if !headers.contains_key(key::HEADER) {
            let k = key::idempotency_key(&self.invocation.key_basis, &out.step, position);
            headers.insert(
                key::HEADER,
                HeaderValue::from_str(&k).expect("hex and dashes"),
            );
        }
        if let Some(trace) = &self.invocation.trace_id
            && trace.len() == 32
            && trace.bytes().all(|b| b.is_ascii_hexdigit())
            && !headers.contains_key("traceparent")
        {
            let span = key::span_id(&self.invocation.key_basis, &out.step, position);
            if let Ok(v) = HeaderValue::from_str(&format!("00-{trace}-{span}-01")) {
                headers.insert("traceparent", v);
            }
        }
        let l = &out.limits;
        let clamp =
            |asked: Option<Duration>, most: u64| asked.map_or(ms(most), |a| a.min(ms(most)));
        let options = options.unwrap_or_default();
        let plan = send::Plan {
            grant_host: allowed.grant.host_label(),
            reach: allowed.grant.reach,
            connect_timeout: clamp(options.connect_timeout, l.connect_timeout_ms),
            first_byte_timeout: clamp(options.first_byte_timeout, l.first_byte_timeout_ms),
            between_bytes_timeout: clamp(options.between_bytes_timeout, l.between_bytes_timeout_ms),
            until,
            max_response_bytes: l.max_response_bytes,
            permits: out.permits.clone(),
            stats: out.stats.clone(),
            pool: out.pool.clone(),
            log: self.log.push(record).map(|i| (self.log.clone(), i)),
        };
        Box::new(send::send(request, plan))
    }
}

#[cfg(test)]
mod tests;
