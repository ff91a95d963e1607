//! What the embedded broker knows of its store's health: whether commits
//! fail (a full or failing disk) and since when, whether the store is
//! damaged, how large it is and how much disk is left.
//!
//! The writer reports each group's outcome here; the prune thread's
//! batches (a write a second) find out when a full disk has room again,
//! even with no other work. While commits fail, new work from outside is
//! refused (`refuse_new`) and deliveries whose settlement failed are
//! handed back to their queues after [`Health::retry_delay`] rather than
//! left for a restart. A damaged store stops the writer's work at once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::Group;
use crate::broker::{BrokerError, Delivery, ErrorKind, Failing};

/// How long after a failed commit writes still count as failing.
const HOLD: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(super) struct Health {
    failed_commits: AtomicU64,
    /// Failed commits in a row (for the redelivery backoff).
    in_a_row: AtomicU32,
    failing: Mutex<Option<Failing>>,
    /// When a commit last failed: writes count as working again only
    /// [`HOLD`] after it (a nearly full disk lets some commits through
    /// and not others).
    last_failure: Mutex<Option<std::time::Instant>>,
    damaged: Mutex<Option<String>>,
    pub pruned_events: AtomicU64,
    pub pruned_dead_letters: AtomicU64,
    pub pruned_records: AtomicU64,
    pub store_bytes: AtomicU64,
    pub free_disk_bytes: AtomicU64,
}

impl Health {
    /// A group of `ops` failed to commit with `e`.
    pub fn failed(&self, e: &BrokerError, ops: u64) {
        self.failed_commits.fetch_add(ops, Ordering::Relaxed);
        *self.last_failure.lock().expect("health lock") = Some(std::time::Instant::now());
        self.in_a_row.fetch_add(1, Ordering::Relaxed);
        if let BrokerError::Damaged(d) = e {
            let mut damaged = self.damaged.lock().expect("health lock");
            if damaged.is_none() {
                tracing::error!(
                    "the broker's store is damaged ({d}): the host does no more work with it. \
                     Stop the host, then restore the store from a backup or move it aside \
                     (docs/operations.md, \"A damaged store\")"
                );
                *damaged = Some(d.clone());
            }
            return;
        }
        let mut failing = self.failing.lock().expect("health lock");
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

    /// A write committed: the store takes writes again.
    pub fn wrote(&self) {
        self.in_a_row.store(0, Ordering::Relaxed);
        let recent = self
            .last_failure
            .lock()
            .expect("health lock")
            .is_some_and(|t| t.elapsed() < HOLD);
        if !recent && self.failing.lock().expect("health lock").take().is_some() {
            tracing::info!("the broker's store takes writes again");
        }
    }

    /// Whether writes are failing now.
    pub fn is_failing(&self) -> bool {
        self.failing.lock().expect("health lock").is_some()
    }

    /// The damage found, if any.
    pub fn damage(&self) -> Option<String> {
        self.damaged.lock().expect("health lock").clone()
    }

    /// Refuse work from outside while the store cannot keep it.
    pub fn refuse_new(&self) -> Result<(), BrokerError> {
        if let Some(d) = self.damage() {
            return Err(BrokerError::Damaged(d));
        }
        match &*self.failing.lock().expect("health lock") {
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

    /// The snapshot `/readyz` and `/metrics` show.
    pub fn snapshot(&self) -> crate::broker::Health {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let free = get(&self.free_disk_bytes);
        crate::broker::Health {
            failing: self.failing.lock().expect("health lock").clone(),
            damaged: self.damage(),
            disconnected: None,
            store_bytes: Some(get(&self.store_bytes)),
            free_disk_bytes: (free > 0).then_some(free),
            failed_commits: get(&self.failed_commits),
            pruned_events: get(&self.pruned_events),
            pruned_dead_letters: get(&self.pruned_dead_letters),
            pruned_records: get(&self.pruned_records),
        }
    }
}

/// Hands a delivery whose settlement failed for want of a working store
/// back to its group's queue, after [`Health::retry_delay`]: the delivery
/// is still unsettled on disk, and the disk may have room again by then.
#[derive(Clone)]
pub(super) struct Redeliver {
    pub groups: Arc<RwLock<HashMap<Arc<str>, Arc<Group>>>>,
    pub runtime: tokio::runtime::Handle,
    pub health: Arc<Health>,
}

impl Redeliver {
    /// After a settlement of `d` failed with `e`: hand `d` back later if
    /// the store was unavailable (not closed: the host is stopping; not
    /// damaged: nothing more is done with it).
    pub fn after(&self, d: Delivery, e: &BrokerError) {
        if e.kind() != ErrorKind::Unavailable
            || matches!(e, BrokerError::Closed | BrokerError::Damaged(_))
        {
            return;
        }
        let Some(g) = self
            .groups
            .read()
            .expect("groups lock")
            .get(&d.group)
            .cloned()
        else {
            return;
        };
        let delay = self.health.retry_delay();
        self.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            g.push(d);
        });
    }
}

/// Free bytes (for an unprivileged process) on the file system of `path`.
pub(super) fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `s` a buffer of the size
    // statvfs(3) writes; it is read only if the call succeeded.
    let r = unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) };
    if r != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `s`.
    let s = unsafe { s.assume_init() };
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}
