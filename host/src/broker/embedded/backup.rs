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
    // Written under a name of its own beside `dest`, checked, flushed, and
    // only then given `dest`'s name: a backup killed part way leaves no
    // file at `dest` that could be taken for a backup (an empty one was).
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned());
    let part = dir.join(format!(
        ".{}.part-{}",
        name.unwrap_or_default(),
        uuid::Uuid::new_v4().simple()
    ));
    let written = write_checked(&src, &part);
    let done = written.and_then(|b| {
        // A hard link fails if `dest` appeared meanwhile: never replaced.
        std::fs::hard_link(&part, dest)
            .map_err(|e| BrokerError::Store(format!("cannot write {}: {e}", dest.display())))?;
        sync_dir(&dir);
        Ok(b)
    });
    let _ = std::fs::remove_file(&part);
    done
}

/// Copy `src` into the new file `path`, check the copy and flush it.
fn write_checked(src: &Connection, path: &Path) -> Result<Backup, BrokerError> {
    let mut dst = Connection::open(path)?;
    {
        let b = rusqlite::backup::Backup::new(src, &mut dst)?;
        // All pages in one step: one consistent snapshot (a step-by-step
        // copy starts over whenever the host commits meanwhile).
        b.step(-1)?;
    }
    store::check(&dst, false)
        .map_err(|e| BrokerError::Store(format!("the backup does not check: {e}")))?;
    let pages: u64 = dst.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    drop(dst);
    let file = std::fs::File::open(path)
        .map_err(|e| BrokerError::Store(format!("{}: {e}", path.display())))?;
    file.sync_all()
        .map_err(|e| BrokerError::Store(format!("cannot flush {}: {e}", path.display())))?;
    let bytes = file
        .metadata()
        .map_err(|e| BrokerError::Store(format!("{}: {e}", path.display())))?
        .len();
    Ok(Backup { bytes, pages })
}

/// Make a new name in `dir` durable (best effort: some file systems
/// cannot open a directory).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
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
    store::refuse_empty(state_dir)?;
    let c = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    store::check(&c, true).map_err(|e| store::damaged_at(state_dir, e))?;
    store::refuse_foreign(state_dir, &c)?;
    Ok(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0))
}
