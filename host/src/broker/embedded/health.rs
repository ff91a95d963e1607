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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::Group;
use crate::broker::health::Writes;
use crate::broker::{BrokerError, Delivery, ErrorKind};

#[derive(Debug, Default)]
pub(super) struct Health {
    writes: Writes,
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
        let BrokerError::Damaged(d) = e else {
            return self.writes.failed(e, ops);
        };
        self.writes.count(ops);
        let mut damaged = self.damaged.lock().expect("health lock");
        if damaged.is_none() {
            tracing::error!(
                "the broker's store is damaged ({d}): the host does no more work with it. \
                 Stop the host, then restore the store from a backup or move it aside \
                 (docs/operations.md, \"A damaged store\")"
            );
            *damaged = Some(d.clone());
        }
    }

    /// A write committed: the store takes writes again.
    pub fn wrote(&self) {
        self.writes.wrote();
    }

    /// Whether writes are failing now.
    pub fn is_failing(&self) -> bool {
        self.writes.is_failing()
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
        self.writes.refuse_new()
    }

    /// How long a delivery whose settlement failed waits before it is
    /// handled again.
    pub fn retry_delay(&self) -> Duration {
        self.writes.retry_delay()
    }

    /// The snapshot `/readyz` and `/metrics` show.
    pub fn snapshot(&self) -> crate::broker::Health {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let free = get(&self.free_disk_bytes);
        crate::broker::Health {
            failing: self.writes.failing(),
            damaged: self.damage(),
            disconnected: None,
            store_bytes: Some(get(&self.store_bytes)),
            free_disk_bytes: (free > 0).then_some(free),
            state_applier: None,
            state_partitions: None,
            failed_commits: self.writes.failed_commits(),
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
