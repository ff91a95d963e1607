//! What a step's sandbox is built from: the instance policy, the limits
//! per message and the capabilities granted. The runtime owns these types;
//! `troupe.toml` (`app.rs`) reads them into each step's table.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

pub use super::outbound::HttpLimits;
pub use super::outbound::grant::HttpGrantSpec;
use super::outbound::secrets::Secrets;
pub use crate::kv::KvLimits;

/// Everything the runtime needs to run a step's guest, and nothing else of
/// the step's configuration.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub instances: Instances,
    /// With [`Instances::Reuse`]: messages an instance handles before it
    /// is dropped for a new one (`recycle_after`).
    pub recycle_after: u32,
    pub limits: Limits,
    pub grants: Grants,
    /// The app's secrets, for the headers of `grants.http`.
    pub secrets: Secrets,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            instances: Instances::default(),
            recycle_after: RECYCLE_AFTER,
            limits: Limits::default(),
            grants: Grants::default(),
            secrets: Secrets::default(),
        }
    }
}

/// Messages a reused instance handles before it is dropped for a new one,
/// unless the step says otherwise (`recycle_after`). What an instance's
/// store holds on the host's side grows with the calls it takes, and is
/// given back only when the store is dropped: in the soak bench
/// (`tests/benches/soak.rs`, the order example, its Python and JavaScript
/// steps reused) the host's heap grew 0.73 MB per 1,000 orders with
/// instances kept for ever, and 0.14 MB with this limit, while the whole
/// process's RSS went from +0.66 to -0.56 MB per 1,000 (one five-minute
/// run each). A new instance costs one instantiation (for the example's
/// Python step, about 12 ms of CPU) per this many messages.
pub const RECYCLE_AFTER: u32 = 1_000;

/// Instance policy: a fresh instance per message (no state survives a
/// message; the default) or instances reused across messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Instances {
    #[default]
    Fresh,
    Reuse,
}

/// What a step may use per message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory, MiB.
    pub memory_mb: u64,
    /// Wall-clock time per message, milliseconds (epoch interruption).
    pub timeout_ms: u64,
    /// Events emitted per message.
    pub max_emits: usize,
    /// Size of one emitted event's data, bytes.
    pub max_event_bytes: usize,
    /// Log lines the step may write per second (a burst of one second's
    /// worth); lines beyond are dropped and counted.
    pub log_lines_per_second: u32,
    /// Outbound HTTP calls (`limits.http`).
    pub http: HttpLimits,
    /// Step state: sizes and quotas of its buckets (`limits.kv`).
    pub kv: KvLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: 64,
            timeout_ms: 1_000,
            max_emits: 100,
            max_event_bytes: 256 * 1024,
            log_lines_per_second: 1000,
            http: HttpLimits::default(),
            kv: KvLimits::default(),
        }
    }
}

/// The most events one message may emit.
pub const MAX_EMITS: usize = 10_000;
/// The largest `max_event_bytes`: 16 MiB.
pub const MAX_EVENT_BYTES: usize = 16 << 20;

/// Capabilities granted to a step. Nothing by default.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Grants {
    /// Directories the step may open.
    pub dirs: Vec<DirGrant>,
    /// Environment variables the step sees.
    pub env: BTreeMap<String, String>,
    /// Let the step write to the host's stderr (its stdout goes there too).
    pub stderr: bool,
    /// HTTP requests the step may make (`wasi:http/outgoing-handler`).
    pub http: Vec<HttpGrantSpec>,
    /// Buckets the step may open besides its own (`wasi:keyvalue`); a
    /// bucket is shared by the steps granted it.
    pub kv: Vec<String>,
}

/// A host directory mapped into the sandbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// The directory on the host, relative to the app directory.
    pub host: PathBuf,
    /// Where the step sees it, e.g. `/data`.
    pub guest: String,
    /// Whether the step may create and change files there.
    #[serde(default)]
    pub write: bool,
}
