//! The record of each call an invocation made, for `troupe trace`: method,
//! scheme, host, port and path (never the query, headers or bodies, which
//! may carry secrets), and what came of it: a status, an error, or denied.
//!
//! The sender fills a record in when the response's head arrives (or the
//! call fails); the runtime takes the invocation's records when the guest
//! returns, and the step's wiring commits them as `troupe.http.call`
//! events under the event that was handled.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

/// The type of the event that records a call.
pub const CALL_EVENT: &str = "troupe.http.call";

/// Calls recorded per invocation: a guest looping on requests (denied
/// ones cost it almost nothing) must not grow the host's memory or the
/// step's commit without bound. Later calls are counted, not recorded.
pub const MAX_RECORDS: usize = 100;

/// One outbound call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallRecord {
    /// The call's place in the invocation, from 0 (the same place gives
    /// the same `Idempotency-Key` on a redelivery).
    pub position: u32,
    pub method: String,
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// The path, without the query.
    pub path: String,
    /// When the call was made (RFC 3339).
    pub time: String,
    /// The response's status, when one came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// wasi-http's error code when none came (`HTTP-request-denied` for a
    /// call no grant allows), or `unfinished` when the guest returned
    /// before it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// To the response's head (or the error), microseconds.
    pub duration_us: u64,
}

/// The calls of one invocation, shared with the calls under way.
#[derive(Debug, Clone, Default)]
pub struct CallLog(Arc<Mutex<Vec<CallRecord>>>);

impl CallLog {
    /// Add `record` (not yet ended); its index, for [`CallLog::ended`],
    /// or `None` once the log holds [`MAX_RECORDS`].
    pub(super) fn push(&self, mut record: CallRecord) -> Option<usize> {
        let mut calls = self.0.lock().expect("call log lock");
        if calls.len() >= MAX_RECORDS {
            return None;
        }
        if record.error.is_none() && record.status.is_none() {
            record.error = Some("unfinished".into());
        }
        calls.push(record);
        Some(calls.len() - 1)
    }

    /// Call `i` ended with `status` or `error` after `took`.
    pub(super) fn ended(
        &self,
        i: usize,
        status: Option<u16>,
        error: Option<String>,
        took: Duration,
    ) {
        if let Some(r) = self.0.lock().expect("call log lock").get_mut(i) {
            r.status = status;
            r.error = if status.is_some() { None } else { error };
            r.duration_us = took.as_micros() as u64;
        }
    }

    /// The records so far, leaving the log empty.
    pub fn take(&self) -> Vec<CallRecord> {
        std::mem::take(&mut *self.0.lock().expect("call log lock"))
    }
}

/// wasi-http's name for an error code (`connection-refused`,
/// `HTTP-request-denied`), from the variant's Rust name.
pub(super) fn code_name(e: &wasmtime_wasi_http::Error) -> String {
    let debug = format!("{e:?}");
    let name = debug.split('(').next().unwrap_or(&debug);
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out.replace("http-", "HTTP-")
        .replace("dns-", "DNS-")
        .replace("tls-", "TLS-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime_wasi_http::Error;

    #[test]
    fn error_codes_are_named_as_wasi_http_names_them() {
        assert_eq!(code_name(&Error::ConnectionRefused), "connection-refused");
        assert_eq!(code_name(&Error::HttpRequestDenied), "HTTP-request-denied");
        assert_eq!(code_name(&Error::DnsTimeout), "DNS-timeout");
        assert_eq!(
            code_name(&Error::HttpResponseBodySize(Some(100))),
            "HTTP-response-body-size"
        );
        assert_eq!(
            code_name(&Error::TlsCertificateError),
            "TLS-certificate-error"
        );
    }

    #[test]
    fn a_call_is_unfinished_until_it_ends_and_a_denied_one_stays_denied() {
        let log = CallLog::default();
        let call = CallRecord {
            position: 0,
            method: "POST".into(),
            scheme: "http".into(),
            host: "127.0.0.1".into(),
            port: 80,
            path: "/v1".into(),
            time: String::new(),
            status: None,
            error: None,
            duration_us: 0,
        };
        let i = log.push(call.clone()).unwrap();
        let denied = log
            .push(CallRecord {
                position: 1,
                error: Some("HTTP-request-denied".into()),
                ..call.clone()
            })
            .unwrap();
        let taken = log.take();
        assert_eq!(taken[i].error.as_deref(), Some("unfinished"));
        assert_eq!(taken[denied].error.as_deref(), Some("HTTP-request-denied"));
        assert!(log.take().is_empty(), "taken whole");
        let i = log.push(taken[i].clone()).unwrap();
        log.ended(i, Some(201), None, Duration::from_micros(1500));
        let ended = &log.take()[0];
        assert_eq!((ended.status, ended.error.as_deref()), (Some(201), None));
        assert_eq!(ended.duration_us, 1500);
    }

    #[test]
    fn a_log_keeps_at_most_max_records() {
        let log = CallLog::default();
        let call = CallRecord {
            position: 0,
            method: "GET".into(),
            scheme: "http".into(),
            host: "h".into(),
            port: 80,
            path: "/".into(),
            time: String::new(),
            status: None,
            error: Some("HTTP-request-denied".into()),
            duration_us: 0,
        };
        let kept = (0..MAX_RECORDS * 3)
            .filter_map(|_| log.push(call.clone()))
            .count();
        assert_eq!(kept, MAX_RECORDS);
        assert_eq!(log.take().len(), MAX_RECORDS);
    }
}
