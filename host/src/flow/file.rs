//! A flow file as written: the TOML shapes `Flow::parse` reads before it
//! checks them. Every field is documented in `docs/flows.md`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::retry::RetryPolicy;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FlowFile {
    pub input: Spanned<String>,
    pub timeout_ms: Option<u64>,
    /// The step whose output is a run's output (what a child step of
    /// another flow gets).
    pub output: Option<Spanned<String>>,
    pub steps: BTreeMap<String, Spanned<StepFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StepFile {
    pub step: Option<Spanned<String>>,
    /// A child flow step: start a run of this flow of the app.
    pub flow: Option<Spanned<String>>,
    pub publish: Option<String>,
    #[serde(rename = "await")]
    pub wait_for: Option<AwaitFile>,
    pub fail_on: Option<String>,
    pub input: Option<String>,
    #[serde(default)]
    pub after: Vec<String>,
    pub when: Option<Spanned<String>>,
    pub timeout_ms: Option<u64>,
    pub queue_timeout_ms: Option<u64>,
    pub retry: Option<RetryPolicy>,
    pub compensate: Option<CompensateFile>,
    /// A sleep step: wait this long once reached.
    pub sleep_ms: Option<u64>,
    /// A sleep step: wait until the RFC 3339 time at this path.
    pub until: Option<String>,
    /// A for-each step: one command per element of the array at this path.
    pub for_each: Option<String>,
    pub max_parallel: Option<u32>,
    pub tolerate_failures: Option<TolerateFile>,
    /// The event type of each element's command (when the step consumes
    /// more than one).
    pub element_type: Option<String>,
}

/// `await = "TYPE"` (a hybrid step, with `publish`) or `await = { signal
/// = "NAME", schema = {...}, timeout_ms = N }` (a signal step).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum AwaitFile {
    Kind(String),
    Signal(SignalFile),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SignalFile {
    pub signal: String,
    pub schema: Option<toml::Value>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum CompensateFile {
    Step(String),
    Full { step: String, input: Option<String> },
}

/// `tolerate_failures = 3` or `tolerate_failures = "10%"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum TolerateFile {
    Count(u32),
    Share(String),
}
