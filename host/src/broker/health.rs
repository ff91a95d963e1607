//! What a backend knows of its health, as `/readyz` and `/metrics` show it
//! ([`Health`]), and the tracker both backends keep of their writes
//! ([`Writes`]): whether commits fail (a full or failing disk, a server
//! out of storage) and since when, and how long a delivery whose
//! settlement failed waits before it is handled again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::BrokerError;

/// What a backend knows of its own health: `/readyz` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Health {
    /// Writes fail: since when (RFC 3339), and the last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing: Option<Failing>,
    /// The store is damaged: what was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
    /// The server cannot be reached (NATS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnected: Option<String>,
    /// Bytes of the store in use (embedded: the file's pages in use;
    /// NATS: the namespace's streams, as the last pruning pass found them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_bytes: Option<u64>,
    /// Free bytes on the file system the store is on (embedded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_disk_bytes: Option<u64>,
    /// Whether this host applies any of the app's state commits now
    /// (NATS: it leads at least one state partition; `None` on the
    /// embedded broker, whose one host always does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_applier: Option<bool>,
    /// How many of the app's state partitions this host leads (NATS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_partitions: Option<u32>,
    /// Commits that failed since the host started.
    pub failed_commits: u64,
    /// What retention pruned since the host started.
    pub pruned_events: u64,
    pub pruned_dead_letters: u64,
    pub pruned_records: u64,
}

/// Writes failing, since when.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Failing {
    pub since: String,
    pub error: String,
}

/// Below this many free bytes on the store's file system, the host says it
/// is not ready (the disk is nearly full).
pub const LOW_DISK: u64 = 8 << 20;

impl Health {
    /// Why the host should not be given work, if it should not.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(d) = &self.damaged {
            p.push(format!("the broker's store is damaged: {d}"));
        }
        if let Some(f) = &self.failing {
            p.push(format!(
                "the broker cannot write (since {}): {}",
                f.since, f.error
            ));
        }
        if let Some(d) = &self.disconnected {
            p.push(format!("the broker's server cannot be reached: {d}"));
        }
        if let Some(free) = self.free_disk_bytes.filter(|&f| f < LOW_DISK) {
            p.push(format!(
                "the disk the store is on is nearly full ({} KiB free)",
                free >> 10
            ));
        }
        p
    }
}

/// How long after a failed commit writes still count as failing.
const HOLD: Duration = Duration::from_secs(1);

/// Whether a backend's writes fail, and since when.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    failed_commits: AtomicU64,
    /// Failed commits in a row (for the redelivery backoff).
    in_a_row: AtomicU32,
    failing: Mutex<Option<Failing>>,
    /// Whether `failing` or `in_a_row` may be set: a write that finds it
    /// false has nothing to clear (the common case, lock-free).
    troubled: AtomicBool,
    /// When a commit last failed: writes count as working again only
    /// [`HOLD`] after it (a nearly full disk lets some commits through
    /// and not others).
    last_failure: Mutex<Option<Instant>>,
}

impl Writes {
    /// `ops` operations failed to commit with `e`. The first failure of a
    /// spell is logged, with what the host does about it.
    pub fn failed(&self, e: &BrokerError, ops: u64) {
        self.count(ops);
        let mut failing = self.failing.lock().expect("writes lock");
        self.troubled.store(true, Ordering::Relaxed);
        match failing.as_mut() {
            Some(f) => f.error = e.to_string(),
            None => {
                tracing::error!(
                    "the broker's store cannot write ({e}): new work is refused, and what \
                     failed is tried again once it can"
                );
                *failing = Some(Failing {
                    since: crate::event::now_rfc3339(),
                    error: e.to_string(),
                });
            }
        }
    }

    /// Count `ops` operations that failed to commit, without calling the
    /// store failing (it is damaged, which the backend says otherwise).
    pub fn count(&self, ops: u64) {
        self.failed_commits.fetch_add(ops, Ordering::Relaxed);
        *self.last_failure.lock().expect("writes lock") = Some(Instant::now());
        self.in_a_row.fetch_add(1, Ordering::Relaxed);
        let _failing = self.failing.lock().expect("writes lock");
        self.troubled.store(true, Ordering::Relaxed);
    }

    /// A write committed: the store takes writes again (once they have
    /// held for [`HOLD`]).
    pub fn wrote(&self) {
        if !self.troubled.load(Ordering::Relaxed) {
            return;
        }
        self.in_a_row.store(0, Ordering::Relaxed);
        // A failure sets `troubled` under this lock after stamping
        // `last_failure`: a clear never overtakes it.
        let mut failing = self.failing.lock().expect("writes lock");
        let recent = self
            .last_failure
            .lock()
            .expect("writes lock")
            .is_some_and(|t| t.elapsed() < HOLD);
        if recent {
            return;
        }
        if failing.take().is_some() {
            tracing::info!("the broker's store takes writes again");
        }
        self.troubled.store(false, Ordering::Relaxed);
    }

    /// Since when writes fail, and the last error, while they do.
    pub fn failing(&self) -> Option<Failing> {
        self.failing.lock().expect("writes lock").clone()
    }

    pub fn is_failing(&self) -> bool {
        self.failing.lock().expect("writes lock").is_some()
    }

    /// Commits that failed since the host started.
    pub fn failed_commits(&self) -> u64 {
        self.failed_commits.load(Ordering::Relaxed)
    }

    /// Refuse work from outside while the store cannot keep it.
    pub fn refuse_new(&self) -> Result<(), BrokerError> {
        match &*self.failing.lock().expect("writes lock") {
            Some(f) => Err(BrokerError::Store(format!(
                "the store cannot write (since {}: {}); nothing was accepted, try again later",
                f.since, f.error
            ))),
            None => Ok(()),
        }
    }

    /// How long a delivery whose settlement failed waits before it is
    /// handled again: doubling with each failure in a row, up to 10 s.
    pub fn retry_delay(&self) -> Duration {
        let n = self.in_a_row.load(Ordering::Relaxed).min(6);
        Duration::from_millis(150 << n).min(Duration::from_secs(10))
    }
}
