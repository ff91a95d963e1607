//! The embedded broker's tables, in SQLite (WAL mode; every commit is
//! fsynced before it counts, see [`open_writer`]).
//!
//! - `events`: every event, by sequence number; an event is identified by
//!   its id and source together (as CloudEvents says), so a republished
//!   event is ignored and two producers' events with the same id are both
//!   kept.
//! - `deliveries`: one row per (consumer group, event) not yet settled, with
//!   the failed attempts so far and when it may next be delivered.
//! - `dlq`: dead letters, pointing at their event.
//! - `inbox`: work queued by other processes (`troupe publish`,
//!   `troupe dlq replay`) for the host that owns the broker to pick up.
//! - `kv`, `kv_buckets`: steps' buckets (see [`super::kv`]).
//! - `marks`, `ended`, `pruned`: what retention needs (see [`super::prune`]):
//!   when events were stored, when records ended, what was pruned.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};

use crate::broker::{BrokerError, DeadLetter};
use crate::event::Event;
use crate::protocol::FailureClass;

/// The broker's database file inside the app's state folder.
pub const DB_FILE: &str = "broker.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    subject TEXT,
    time TEXT NOT NULL,
    content_type TEXT NOT NULL,
    schema TEXT,
    data BLOB NOT NULL,
    extensions TEXT NOT NULL,
    correlation TEXT NOT NULL,
    UNIQUE (id, source)
);
CREATE INDEX IF NOT EXISTS events_correlation ON events (correlation);
CREATE TABLE IF NOT EXISTS deliveries (
    grp TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    not_before INTEGER NOT NULL,
    PRIMARY KEY (grp, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dlq (
    id TEXT PRIMARY KEY,
    grp TEXT NOT NULL,
    seq INTEGER NOT NULL,
    class TEXT NOT NULL,
    message TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    time TEXT NOT NULL,
    deployment INTEGER,
    component TEXT
);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox (
    n INTEGER PRIMARY KEY,
    op TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dlq_seq ON dlq (seq);
CREATE INDEX IF NOT EXISTS dlq_time ON dlq (time);
CREATE TABLE IF NOT EXISTS marks (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ended (
    key TEXT PRIMARY KEY,
    at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ended_at ON ended (at_ms);
CREATE TABLE IF NOT EXISTS pruned (
    what TEXT PRIMARY KEY,
    before_ms INTEGER NOT NULL,
    count INTEGER NOT NULL,
    capped INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Open (creating if needed) the broker database in `state_dir`.
pub fn open(state_dir: &Path) -> Result<Connection, BrokerError> {
    std::fs::create_dir_all(state_dir)
        .map_err(|e| BrokerError::Store(format!("cannot create {}: {e}", state_dir.display())))?;
    if !state_dir.join(DB_FILE).exists() {
        create_new(state_dir)?;
    }
    refuse_empty(state_dir)?;
    let conn = Connection::open(state_dir.join(DB_FILE))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // A new store gives pruned pages back to the file system in steps
    // ([`super::prune`]); an older one reuses them (SQLite decides this
    // when the first table is created). Only on a new file: on a store
    // with tables the pragma is a write transaction (it sets the header's
    // incremental-vacuum flag again), and a write by a connection merely
    // opening would fail the running writer's transaction if it had read
    // already (SQLite's BUSY_SNAPSHOT, which no busy timeout waits out).
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    if pages == 0 {
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // 8 MiB of pages: the hot ends of the tables stay in memory. Larger
    // costs more than it saves: SQLite walks its page cache as each
    // transaction ends (with 64 MiB that was ~4% of the CPU of a loaded
    // host, against 0.5% now).
    conn.pragma_update(None, "cache_size", -8192)?;
    create(&conn)?;
    Ok(conn)
}

/// Make a new store whole under a name of its own, then link it into place
/// (a link, unlike a rename, never replaces a store another process made
/// meanwhile). So a store file that exists was made whole by Troupe, also
/// when the process making it was killed; an empty one is a copy cut short
/// ([`refuse_empty`]), never a store being born.
fn create_new(state_dir: &Path) -> Result<(), BrokerError> {
    let path = state_dir.join(DB_FILE);
    let part = state_dir.join(format!("{DB_FILE}.new-{}", uuid::Uuid::new_v4().simple()));
    let made = (|| {
        let conn = Connection::open(&part)?;
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        create(&conn)?;
        // Closed: its WAL is checkpointed into the file and removed.
        conn.close().map_err(|(_, e)| BrokerError::from(e))?;
        match std::fs::hard_link(&part, &path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(BrokerError::Store(format!(
                "cannot create {}: {e}",
                path.display()
            ))),
        }
    })();
    let _ = std::fs::remove_file(&part);
    made
}

/// The schema's version (`PRAGMA user_version`): 5 since the run index
/// (`runs`, `run_counts`: [`super::runs`]); 4 since dead letters
/// say which deployment and component could not handle them; 3 since retention
/// (`marks`, `ended`, `pruned`, dead letters indexed: [`super::prune`]);
/// 2 since step state (`kv`, `kv_buckets`: [`super::kv`]); 1 since events
/// are identified by (id, source); 0 before, when the id alone was unique.
const SCHEMA_VERSION: i64 = 5;

/// Create the tables, or bring a store written by an earlier version up to
/// date, in one transaction (so of several connections opening one store,
/// one does it and the others see it done).
fn create(conn: &Connection) -> Result<(), BrokerError> {
    let version = |c: &Connection| c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0));
    if version(conn)? == SCHEMA_VERSION {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let done = (|| -> Result<(), BrokerError> {
        let old_events = version(conn)? == 0
            && conn
                .query_row(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'",
                    [],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
        if old_events {
            // Version 0 made `id` unique alone: copy the events (sequence
            // numbers kept, so deliveries and dead letters still point at
            // them) into a table keyed by (id, source).
            conn.execute_batch(
                "DROP INDEX IF EXISTS events_correlation;
                 ALTER TABLE events RENAME TO events_v0;",
            )?;
        }
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(super::kv::SCHEMA)?;
        conn.execute_batch(super::runs::SCHEMA)?;
        if old_events {
            conn.execute_batch(
                "INSERT INTO events SELECT * FROM events_v0; DROP TABLE events_v0;",
            )?;
        }
        super::prune::upgrade(conn)?;
        // Version 4: a dead letter's deployment and component.
        let has_deployment = conn
            .prepare("SELECT 1 FROM pragma_table_info('dlq') WHERE name = 'deployment'")?
            .exists([])?;
        if !has_deployment {
            conn.execute_batch(
                "ALTER TABLE dlq ADD COLUMN deployment INTEGER;
                 ALTER TABLE dlq ADD COLUMN component TEXT;",
            )?;
        }
        super::runs::upgrade(conn)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(())
    })();
    match done {
        Ok(()) => conn.execute_batch("COMMIT")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    Ok(())
}

/// The writer's connection: like [`open`], but
///
/// - its commits write the WAL without waiting for the disk
///   (`synchronous=NORMAL`): the writer's sync thread makes each group
///   durable with [`sync_wal`] before anything in it becomes visible, so
///   the next group is applied while the last one is being synced;
/// - the WAL is checkpointed by [`checkpoint`] on another thread, not
///   inside the writer's commits, unless it grows past 64 MiB (a
///   checkpointer that cannot keep up).
pub fn open_writer(state_dir: &Path) -> Result<Connection, BrokerError> {
    let conn = open(state_dir).map_err(|e| damaged_at(state_dir, e))?;
    check(&conn, false).map_err(|e| damaged_at(state_dir, e))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "wal_autocheckpoint", 16384)?;
    // The savepoint of each commit in a group keeps the pages it changes
    // in a sub-journal: in memory, not in a temporary file (what a crash
    // would find there is an unfinished transaction, which the WAL never
    // made durable). With the file, writing it was 2.8% of a state
    // chain's CPU; in memory the chain runs 26-31% faster (docs/state.md).
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // A WAL that grew in a burst is cut back once checkpointed.
    conn.pragma_update(None, "journal_size_limit", 64 << 20)?;
    Ok(conn)
}

/// Check the store's structure: SQLite's `quick_check` (every page and
/// row well formed; a second a few hundred MB), or with `full` its
/// `integrity_check` (indexes against their tables too).
pub fn check(conn: &Connection, full: bool) -> Result<(), BrokerError> {
    let pragma = if full {
        "PRAGMA integrity_check(20)"
    } else {
        "PRAGMA quick_check(20)"
    };
    let mut stmt = conn.prepare(pragma)?;
    let found: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if found.len() == 1 && found[0] == "ok" {
        return Ok(());
    }
    Err(BrokerError::Damaged(found.join("; ")))
}

/// A damaged store's error, saying where it is and what to do.
pub fn damaged_at(state_dir: &Path, e: BrokerError) -> BrokerError {
    match e {
        BrokerError::Damaged(what) => {
            let db = state_dir.join(DB_FILE);
            BrokerError::Damaged(format!(
                "{} ({what}). Stop every process using it, then restore it from a backup \
                 (`troupe backup` makes one; docs/operations.md), or move it and its -wal \
                 and -shm files aside (e.g. `mv {} {}.damaged`) to start with an empty \
                 store, keeping the damaged one for what can be read from it",
                db.display(),
                db.display(),
                db.display()
            ))
        }
        e => e,
    }
}

/// The WAL file of the database in `state_dir`.
pub fn wal_path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join(format!("{DB_FILE}-wal"))
}

/// Flush the WAL to disk: every transaction committed before the call is
/// durable when it returns. `wal` is opened on first use; the file stays
/// the same while the writer's connection is open (SQLite removes a WAL
/// only when its last connection closes).
pub fn sync_wal(wal: &mut Option<std::fs::File>, path: &Path) -> std::io::Result<()> {
    if wal.is_none() {
        *wal = Some(std::fs::File::open(path)?);
    }
    wal.as_ref().expect("opened").sync_data()
}

/// Copy committed WAL pages into the database file without blocking the
/// writer (a passive checkpoint).
pub fn checkpoint(conn: &Connection) -> Result<(), BrokerError> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
    Ok(())
}

/// Refuse a store file that is there but empty: SQLite would take it for
/// a new database, and a host would run on it as if nothing had ever been
/// stored (a backup cut short, restored as it was, lost every event
/// without a word). A store file that exists was made whole before it got
/// its name ([`create_new`]).
pub fn refuse_empty(state_dir: &Path) -> Result<(), BrokerError> {
    let path = state_dir.join(DB_FILE);
    let len = |p: &Path| std::fs::metadata(p).map_or(None, |m| Some(m.len()));
    match (len(&path), len(&wal_path(state_dir))) {
        (Some(0), None | Some(0)) => Err(damaged_at(
            state_dir,
            BrokerError::Damaged(
                "the store file is empty (0 bytes), where a store was expected: a copy cut \
                 short?"
                    .into(),
            ),
        )),
        _ => Ok(()),
    }
}

/// Refuse a database that is sound but not a Troupe store (no `events`
/// table): what a wrong file restored in its place would be.
pub fn refuse_foreign(state_dir: &Path, conn: &Connection) -> Result<(), BrokerError> {
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'",
        [],
        |r| r.get(0),
    )?;
    if tables == 0 {
        return Err(damaged_at(
            state_dir,
            BrokerError::Damaged("the file holds no Troupe store (it has no events table)".into()),
        ));
    }
    Ok(())
}

/// Open the database of `state_dir` for reading only; `None` when no
/// broker ever ran there.
pub fn open_read(state_dir: &Path) -> Result<Option<Connection>, BrokerError> {
    let path = state_dir.join(DB_FILE);
    if !path.exists() {
        return Ok(None);
    }
    refuse_empty(state_dir)?;
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(Some(conn))
}

/// Insert an event; its sequence number, or `None` if an event with its id
/// and source is stored already.
pub fn insert_event(tx: &Transaction, e: &Event) -> Result<Option<i64>, BrokerError> {
    let ext = crate::event::extensions_to_json(e);
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO events (id, kind, source, subject, time, content_type, schema, data, extensions, correlation)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            e.id,
            e.kind,
            e.source,
            e.subject,
            e.time,
            e.content_type,
            e.schema,
            e.data,
            ext,
            e.correlation_id()
        ])?;
    Ok((n == 1).then(|| tx.last_insert_rowid()))
}

pub fn insert_delivery(
    tx: &Transaction,
    group: &str,
    seq: i64,
    attempts: u32,
    not_before_ms: i64,
) -> Result<(), BrokerError> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO deliveries (grp, seq, attempts, not_before) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![group, seq, attempts, not_before_ms])?;
    Ok(())
}

/// Remove a delivery; whether it was there.
pub fn delete_delivery(tx: &Transaction, group: &str, seq: i64) -> Result<bool, BrokerError> {
    let n = tx
        .prepare_cached("DELETE FROM deliveries WHERE grp = ?1 AND seq = ?2")?
        .execute(params![group, seq])?;
    Ok(n == 1)
}

/// A dead letter to write: the event (by sequence number) of group
/// `group`, why, after how many attempts, and the step version that could
/// not handle it.
pub struct NewDeadLetter<'a> {
    pub id: &'a str,
    pub group: &'a str,
    pub seq: i64,
    pub class: FailureClass,
    pub message: &'a str,
    pub attempts: u32,
    pub version: Option<&'a (u64, std::sync::Arc<str>)>,
}

pub fn insert_dead_letter(tx: &Transaction, d: &NewDeadLetter<'_>) -> Result<(), BrokerError> {
    let time = crate::event::now_rfc3339();
    let (deployment, component) = match d.version {
        Some((n, c)) => (Some(*n as i64), Some(&**c)),
        None => (None, None),
    };
    tx.prepare_cached(
        "INSERT INTO dlq (id, grp, seq, class, message, attempts, time, deployment, component) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        d.id,
        d.group,
        d.seq,
        d.class.as_str(),
        d.message,
        d.attempts,
        time,
        deployment,
        component
    ])?;
    Ok(())
}

/// Remove a dead letter; its group and event sequence number.
pub fn take_dead_letter(tx: &Transaction, id: &str) -> Result<(String, i64), BrokerError> {
    let row: Option<(String, i64)> = tx
        .query_row("SELECT grp, seq FROM dlq WHERE id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let row = row.ok_or_else(|| BrokerError::NoSuchDeadLetter(id.to_string()))?;
    tx.execute("DELETE FROM dlq WHERE id = ?1", [id])?;
    Ok(row)
}

/// The event with sequence number `seq`.
pub fn event(conn: &Connection, seq: i64) -> Result<Event, BrokerError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events e WHERE e.seq = ?1"
    ))?;
    Ok(stmt.query_row([seq], row_event)?)
}

/// Write (or, with `None`, delete) a state row.
pub fn put_state(tx: &Transaction, key: &str, value: Option<&[u8]>) -> Result<(), BrokerError> {
    match value {
        Some(v) => tx
            .prepare_cached("INSERT OR REPLACE INTO state (key, value) VALUES (?1, ?2)")?
            .execute(params![key, v])?,
        None => tx
            .prepare_cached("DELETE FROM state WHERE key = ?1")?
            .execute([key])?,
    };
    Ok(())
}

/// State rows whose key starts with `prefix`, by key.
pub fn scan_state(conn: &Connection, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, BrokerError> {
    let mut stmt = conn.prepare_cached(
        "SELECT key, value FROM state WHERE key >= ?1 AND key < ?1 || char(1114111) ORDER BY key",
    )?;
    let rows = stmt.query_map([prefix], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One state row.
pub fn get_state(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>, BrokerError> {
    Ok(conn
        .prepare_cached("SELECT value FROM state WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

/// Every event of a cascade or run, in the order they were stored.
pub fn trace(conn: &Connection, correlation_id: &str) -> Result<Vec<Event>, BrokerError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events e WHERE e.correlation = ?1 ORDER BY e.seq"
    ))?;
    let rows = stmt.query_map([correlation_id], row_event)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A group's unsettled deliveries: (seq, failed attempts, not before, event).
pub fn pending(conn: &Connection, group: &str) -> Result<Vec<(i64, u32, i64, Event)>, BrokerError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT d.seq, d.attempts, d.not_before, {EVENT_COLUMNS}
         FROM deliveries d JOIN events e ON e.seq = d.seq WHERE d.grp = ?1 ORDER BY d.seq"
    ))?;
    let rows = stmt.query_map([group], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, row_event_at(r, 3)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

const EVENT_COLUMNS: &str =
    "e.id, e.kind, e.source, e.subject, e.time, e.content_type, e.schema, e.data, e.extensions";

fn row_event(r: &rusqlite::Row) -> rusqlite::Result<Event> {
    row_event_at(r, 0)
}

fn row_event_at(r: &rusqlite::Row, at: usize) -> rusqlite::Result<Event> {
    let ext: String = r.get(at + 8)?;
    let (extensions, typed) = crate::event::extensions_from_json(&ext).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(at + 8, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Event {
        id: r.get(at)?,
        kind: r.get(at + 1)?,
        source: r.get(at + 2)?,
        subject: r.get(at + 3)?,
        time: r.get(at + 4)?,
        content_type: r.get(at + 5)?,
        schema: r.get(at + 6)?,
        data: r.get(at + 7)?,
        extensions,
        typed,
    })
}

/// Dead letters, oldest first, or one by id.
pub fn dead_letters(conn: &Connection, id: Option<&str>) -> Result<Vec<DeadLetter>, BrokerError> {
    let sql = format!(
        "SELECT q.id, q.grp, q.class, q.message, q.attempts, q.time, q.deployment, q.component, {EVENT_COLUMNS}
         FROM dlq q JOIN events e ON e.seq = q.seq {} ORDER BY q.time, q.id",
        if id.is_some() { "WHERE q.id = ?1" } else { "" }
    );
    let mut stmt = conn.prepare(&sql)?;
    let map = |r: &rusqlite::Row| {
        let class: String = r.get(2)?;
        Ok(DeadLetter {
            id: r.get(0)?,
            step: r.get(1)?,
            class: FailureClass::parse(&class).unwrap_or(FailureClass::Rejected),
            message: r.get(3)?,
            attempts: r.get(4)?,
            time: r.get(5)?,
            deployment: r.get::<_, Option<i64>>(6)?.map(|n| n as u64),
            component: r.get(7)?,
            event: row_event_at(r, 8)?,
        })
    };
    let rows = match id {
        Some(id) => stmt.query_map([id], map)?.collect::<Result<Vec<_>, _>>()?,
        None => stmt.query_map([], map)?.collect::<Result<Vec<_>, _>>()?,
    };
    Ok(rows)
}

/// Queue work for the host that owns the broker (`op` is `publish`, with a
/// CloudEvents JSON body, or `replay`, with a dead letter's id).
pub fn queue(state_dir: &Path, items: &[(&str, String)]) -> Result<(), BrokerError> {
    let mut conn = open(state_dir)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for (op, body) in items {
        tx.execute(
            "INSERT INTO inbox (op, body) VALUES (?1, ?2)",
            params![op, body],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Queued inbox items: (n, op, body).
pub fn inbox(conn: &Connection) -> Result<Vec<(i64, String, String)>, BrokerError> {
    let mut stmt = conn.prepare_cached("SELECT n, op, body FROM inbox ORDER BY n LIMIT 1000")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn delete_inbox(tx: &Transaction, n: i64) -> Result<(), BrokerError> {
    tx.prepare_cached("DELETE FROM inbox WHERE n = ?1")?
        .execute([n])?;
    Ok(())
}

/// How many inbox items wait.
pub fn inbox_len(conn: &Connection) -> Result<u64, BrokerError> {
    Ok(conn.query_row("SELECT count(*) FROM inbox", [], |r| r.get(0))?)
}

/// `PRAGMA data_version`: changes when another connection commits.
pub fn data_version(conn: &Connection) -> Result<i64, BrokerError> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(source: &str) -> Event {
        let mut e = Event::new("text.said", source, b"{}".to_vec());
        e.id = "42".into();
        e
    }

    /// A new store is made whole before it gets its name: a process killed
    /// while making one (before its first start) leaves no empty store,
    /// and an empty store file (a copy cut short) is refused, not taken
    /// for a new one.
    #[test]
    fn a_new_store_is_whole_before_it_has_its_name_and_an_empty_one_is_refused() {
        let path = std::env::temp_dir().join(format!("troupe-store-{}", uuid::Uuid::new_v4()));
        let dir = path.as_path();
        drop(open(dir).unwrap());
        let names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains(".new-")), "{names:?}");
        let db = dir.join(DB_FILE);
        assert!(std::fs::metadata(&db).unwrap().len() > 0);
        let c = Connection::open(&db).unwrap();
        refuse_foreign(dir, &c).expect("its tables are there");
        drop(c);
        std::fs::write(&db, b"").unwrap();
        let e = open(dir).unwrap_err().to_string();
        assert!(e.contains("empty (0 bytes)"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A store of schema 3 (dead letters without their deployment) is
    /// brought to 4: its dead letters read back with none, and new ones
    /// keep theirs.
    #[test]
    fn a_version_3_store_gains_the_deployment_of_dead_letters() {
        let dir = std::env::temp_dir().join(format!("troupe-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        {
            let c = Connection::open(dir.join(DB_FILE)).unwrap();
            c.execute_batch(&SCHEMA.replace(
                "    time TEXT NOT NULL,\n    deployment INTEGER,\n    component TEXT\n",
                "    time TEXT NOT NULL\n",
            ))
            .unwrap();
            c.execute_batch(super::super::kv::SCHEMA).unwrap();
            c.execute_batch(
                "INSERT INTO events VALUES (7, '42', 'k', 'urn:a', NULL, 't', 'application/json', NULL, x'7b7d', '{}', '42');
                 INSERT INTO dlq VALUES ('d7', 'g', 7, 'rejected', 'no', 1, 't');
                 PRAGMA user_version = 3;",
            )
            .unwrap();
        }
        let mut c = open(&dir).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let old = dead_letters(&c, None).unwrap();
        assert_eq!((old.len(), old[0].deployment), (1, None));
        let tx = c.transaction().unwrap();
        let version = (3, std::sync::Arc::from("ab"));
        let d = NewDeadLetter {
            id: "d8",
            group: "g",
            seq: 7,
            class: FailureClass::Trap,
            message: "it trapped",
            attempts: 2,
            version: Some(&version),
        };
        insert_dead_letter(&tx, &d).unwrap();
        tx.commit().unwrap();
        let new = dead_letters(&c, Some("d8")).unwrap();
        assert_eq!(new[0].deployment, Some(3));
        assert_eq!(new[0].component.as_deref(), Some("ab"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A store written when the id alone was unique (schema version 0) is
    /// brought up to date on open: its events and their sequence numbers
    /// are kept, and an event with a known id from another source is
    /// stored.
    #[test]
    fn a_version_0_store_is_migrated_keeping_its_events() {
        let dir = std::env::temp_dir().join(format!("troupe-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        {
            let c = Connection::open(dir.join(DB_FILE)).unwrap();
            c.execute_batch(
                &SCHEMA
                    .replace("id TEXT NOT NULL,", "id TEXT NOT NULL UNIQUE,")
                    .replace(",\n    UNIQUE (id, source)", ""),
            )
            .unwrap();
            c.execute(
                "INSERT INTO events VALUES (7, '42', 'k', 'urn:a', NULL, 't', 'application/json', NULL, x'7b7d', '{}', '42')",
                [],
            )
            .unwrap();
            c.execute("INSERT INTO deliveries VALUES ('g', 7, 0, 0)", [])
                .unwrap();
        }
        let mut c = open(&dir).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let tx = c.transaction().unwrap();
        assert_eq!(
            insert_event(&tx, &said("urn:a")).unwrap(),
            None,
            "a duplicate"
        );
        assert_eq!(insert_event(&tx, &said("urn:b")).unwrap(), Some(8));
        tx.commit().unwrap();
        let kept: (String, i64) = c
            .query_row(
                "SELECT e.source, d.seq FROM deliveries d JOIN events e ON e.seq = d.seq",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(kept, ("urn:a".into(), 7));
        let index: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'events_correlation'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(index, 1, "the correlation index is there");
        drop(c);
        // Opening again changes nothing.
        let c = open(&dir).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A connection opened beside the host's writer (a guest's state
    /// reader, a CLI command) writes nothing, so the transaction the
    /// writer has begun and read in still commits: SQLite fails a
    /// transaction whose snapshot another connection's write made stale
    /// at once (`SQLITE_BUSY_SNAPSHOT`), whatever the busy timeout.
    #[test]
    fn opening_the_store_beside_a_writer_does_not_fail_its_transaction() {
        let dir = std::env::temp_dir().join(format!("troupe-store-{}", uuid::Uuid::new_v4()));
        let mut w = open_writer(&dir).unwrap();
        let tx = w.transaction().unwrap();
        let n: i64 = tx
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        let other = open(&dir).unwrap();
        assert_eq!(insert_event(&tx, &said("urn:a")).unwrap(), Some(1));
        tx.commit().unwrap();
        let seen: i64 = other
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, 1);
        // And a new store is still made to give pages back.
        let mode: i64 = other
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, 2, "incremental");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
