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
    /// Add `record` (not yet ended); its index, for [`CallLog::ended`].
    pub(super) fn push(&self, mut record: CallRecord) -> usize {
        let mut calls = self.0.lock().expect("call log lock");
        if record.error.is_none() && record.status.is_none() {
            record.error = Some("unfinished".into());
        }
        calls.push(record);
        calls.len() - 1
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
