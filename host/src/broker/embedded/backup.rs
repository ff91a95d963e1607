//! Keeping an embedded store safe: an online backup (`troupe backup`) and
//! the full integrity check (`troupe check --store`).
//!
//! The backup is SQLite's online backup, done in one step: it reads one
//! consistent snapshot of the store while the host goes on committing (in
//! WAL mode a reader never blocks the writer), so a running app can be
//! backed up. The copy is checked (`quick_check`) before it is said done.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::store;
use crate::broker::BrokerError;

/// What a backup wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backup {
    pub bytes: u64,
    pub pages: u64,
}

/// Copy the store in `state_dir` to the new file `dest`, while a host may
/// be running on it.
pub fn backup(state_dir: &Path, dest: &Path) -> Result<Backup, BrokerError> {
    let src = store::open_read(state_dir)?.ok_or_else(|| {
        BrokerError::BadInput(format!("no store in {} to back up", state_dir.display()))
    })?;
    if dest.exists() {
        return Err(BrokerError::BadInput(format!(
            "{} exists: a backup is written to a new file",
            dest.display()
        )));
    }
    let mut dst = Connection::open(dest)?;
    {
        let b = rusqlite::backup::Backup::new(&src, &mut dst)?;
        // All pages in one step: one consistent snapshot (a step-by-step
        // copy starts over whenever the host commits meanwhile).
        b.step(-1)?;
    }
    store::check(&dst, false).map_err(|e| {
        BrokerError::Store(format!(
            "the backup at {} does not check: {e}",
            dest.display()
        ))
    })?;
    let pages: u64 = dst.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    drop(dst);
    let bytes = std::fs::metadata(dest)
        .map_err(|e| BrokerError::Store(format!("{}: {e}", dest.display())))?
        .len();
    Ok(Backup { bytes, pages })
}

/// SQLite's full `integrity_check` of the store in `state_dir` (every
/// page, row and index); the store's size in bytes if it is sound.
pub fn check_store(state_dir: &Path) -> Result<u64, BrokerError> {
    let path = state_dir.join(store::DB_FILE);
    if !path.exists() {
        return Err(BrokerError::BadInput(format!(
            "no store at {} (the app has not run on the embedded broker)",
            path.display()
        )));
    }
    let c = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    store::check(&c, true).map_err(|e| store::damaged_at(state_dir, e))?;
    Ok(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0))
}
