//! Retention on the embedded broker: what `[retention]` lets go, pruned in
//! bounded batches.
//!
//! A pruner thread asks the writer for a batch every [`TICK`] (and again at
//! once while a batch finds more); the writer runs each batch in a
//! transaction of its own, between two groups of commits, so no commit
//! waits behind more than one batch and a failed batch fails no commit.
//!
//! How old an event is comes from `marks`: each batch notes the highest
//! sequence number stored so far and the time, so "stored before T" is
//! "sequence number at most that of the last mark at or before T" (one row
//! a second, nothing on the hot path). Ended runs' records are named by
//! the commit that ended them (`Commit::ended`, table `ended`).
//!
//! **Never pruned**: an event with a pending delivery (in any group,
//! subscribed here or not), an event a dead letter points at, a dead
//! letter younger than `dead_letters`, the record of a run not ended and
//! the events of such a run (its recovery replays them). Past `max_store`
//! the oldest settled events and ended runs go whatever their age; the
//! rest stays. Freed pages are reused by later writes, so the file stops
//! growing; a store created since retention also gives pages back to the
//! file system when it is larger than `max_store`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::broker::retention::Retention;
use crate::broker::{BrokerError, ENDED_RUN_STATES, Horizon, RUN_ROW};

/// Rows looked at per batch, of each kind.
const BATCH: usize = 2000;
/// How often the pruner looks.
pub(super) const TICK: Duration = Duration::from_secs(1);
/// How often a pass over the events starts again from the oldest, so
/// that those kept last time (pending, dead-lettered, an active run's)
/// are looked at again.
const REPASS_MS: i64 = 30_000;
/// Pages given back to the file system per batch, when the file is larger
/// than `max_store`.
const VACUUM_PAGES: i64 = 4096;

/// What one batch pruned.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Pruned {
    pub events: u64,
    pub dead_letters: u64,
    /// Ended records (runs, and the idempotency keys that started them).
    pub records: u64,
    /// The store was over `max_store`.
    pub capped: bool,
    /// There is more to prune now: ask again without waiting.
    pub more: bool,
    /// Bytes of the store in use after the batch.
    pub store_bytes: u64,
}

/// Where the pruner is in its pass over the events; kept on the writer
/// thread between batches.
#[derive(Debug, Default)]
pub(super) struct Cursor {
    events: i64,
    pass_started_ms: i64,
}

/// Bring a store written before retention up to date: name the runs that
/// had ended (their records say so), as ended now.
pub(super) fn upgrade(conn: &Connection) -> Result<(), BrokerError> {
    let states = ENDED_RUN_STATES
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    conn.execute(
        &format!(
            "INSERT OR IGNORE INTO ended (key, at_ms)
             SELECT key, ?1 FROM state
             WHERE key >= ?2 AND key < ?3 AND json_valid(CAST(value AS TEXT))
               AND json_extract(CAST(value AS TEXT), '$.state') IN ({states})"
        ),
        params![crate::clock::now_ms() as i64, RUN_ROW, row_end(RUN_ROW)],
    )?;
    Ok(())
}

/// The first key after every key that starts with `prefix`.
fn row_end(prefix: &str) -> String {
    let mut end = prefix.to_string();
    let last = end.pop().expect("a prefix");
    end.push(char::from_u32(last as u32 + 1).expect("ASCII"));
    end
}

/// Bytes of the store in use (pages not on the free list).
pub(super) fn used_bytes(c: &Connection) -> Result<u64, BrokerError> {
    let (pages, free, size) = pages(c)?;
    Ok((pages - free) * size)
}

/// (pages, free pages, page size).
fn pages(c: &Connection) -> Result<(u64, u64, u64), BrokerError> {
    let get = |p: &str| c.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, u64>(0));
    Ok((
        get("page_count")?,
        get("freelist_count")?,
        get("page_size")?,
    ))
}

/// One batch: dead letters past their age, ended records past theirs,
/// then up to [`BATCH`] events.
pub(super) fn batch(
    tx: &Transaction,
    r: &Retention,
    now: i64,
    cur: &mut Cursor,
) -> Result<Pruned, BrokerError> {
    let ms = |d: Duration| d.as_millis() as i64;
    let capped = used_bytes(tx)? > r.max_store;
    let mut p = Pruned {
        capped,
        ..Pruned::default()
    };
    tx.prepare_cached(
        "INSERT OR IGNORE INTO marks (seq, at_ms) SELECT ifnull(max(seq), 0), ?1 FROM events",
    )?
    .execute([now])?;

    let dead_before = now - ms(r.dead_letters);
    p.dead_letters = tx
        .prepare_cached(
            "DELETE FROM dlq WHERE id IN (SELECT id FROM dlq WHERE time < ?1 ORDER BY time LIMIT ?2)",
        )?
        .execute(params![micros(dead_before), BATCH])? as u64;

    let runs_before = if capped { now } else { now - ms(r.runs) };
    let ended: Vec<String> = tx
        .prepare_cached("SELECT key FROM ended WHERE at_ms < ?1 ORDER BY at_ms LIMIT ?2")?
        .query_map(params![runs_before, BATCH], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for key in &ended {
        tx.prepare_cached("DELETE FROM state WHERE key = ?1")?
            .execute([key])?;
        if let Some(id) = key.strip_prefix(RUN_ROW) {
            super::runs::forget(tx, id)?;
        }
        tx.prepare_cached("DELETE FROM ended WHERE key = ?1")?
            .execute([key])?;
    }
    p.records = ended.len() as u64;

    let events_before = if capped { now } else { now - ms(r.events) };
    let horizon: i64 = if capped {
        tx.query_row("SELECT ifnull(max(seq), 0) FROM events", [], |row| {
            row.get(0)
        })?
    } else {
        tx.prepare_cached("SELECT ifnull(max(seq), 0) FROM marks WHERE at_ms <= ?1")?
            .query_row([events_before], |row| row.get(0))?
    };
    if cur.events >= horizon && now - cur.pass_started_ms >= REPASS_MS {
        cur.events = 0;
        cur.pass_started_ms = now;
    }
    if cur.events < horizon {
        let (pruned, looked) = events(tx, cur.events, horizon)?;
        p.events = pruned;
        cur.events = looked.unwrap_or(horizon);
        // A full batch, or (over the cap) anything freed: look again.
        p.more = looked.is_some() && (pruned > 0 || !capped);
    }
    tx.prepare_cached(
        "DELETE FROM marks WHERE seq < (SELECT ifnull(max(seq), 0) FROM marks WHERE at_ms <= ?1)",
    )?
    .execute([now - ms(r.events)])?;

    for (what, n, before) in [
        ("events", p.events, events_before),
        ("runs", p.records, runs_before),
        ("dead_letters", p.dead_letters, dead_before),
    ] {
        if n > 0 {
            tx.prepare_cached(
                "INSERT INTO pruned (what, before_ms, count, capped) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (what) DO UPDATE SET before_ms = max(before_ms, ?2),
                   count = count + ?3, capped = ?4",
            )?
            .execute(params![what, before, n, capped])?;
        }
    }
    p.more |= p.dead_letters == BATCH as u64 || p.records == BATCH as u64;

    let (pages, free, size) = pages(tx)?;
    if free > 0 && pages * size > r.max_store {
        let vacuum: i64 = tx.query_row("PRAGMA auto_vacuum", [], |row| row.get(0))?;
        if vacuum == 2 {
            tx.execute_batch(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))?;
        }
    }
    p.store_bytes = used_bytes(tx)?;
    Ok(p)
}

/// Prune settled events with sequence numbers in (`after`, `upto`], up to
/// [`BATCH`] looked at: how many were pruned, and the last sequence number
/// looked at if the batch was full (`None`: all of them were).
fn events(tx: &Transaction, after: i64, upto: i64) -> Result<(u64, Option<i64>), BrokerError> {
    let rows: Vec<(i64, String)> = tx
        .prepare_cached(
            "SELECT seq, correlation FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
        )?
        .query_map(params![after, upto, BATCH], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let (Some(&(lo, _)), Some(&(hi, _))) = (rows.first(), rows.last()) else {
        return Ok((0, None));
    };
    let mut kept: HashSet<i64> = HashSet::new();
    // Pending deliveries, group by group (the table is keyed by group).
    let groups: Vec<String> = tx
        .prepare_cached(
            "WITH RECURSIVE g(grp) AS (
               SELECT min(grp) FROM deliveries
               UNION ALL
               SELECT (SELECT min(grp) FROM deliveries WHERE grp > g.grp) FROM g WHERE g.grp IS NOT NULL
             ) SELECT grp FROM g WHERE grp IS NOT NULL",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for g in &groups {
        let mut stmt = tx.prepare_cached(
            "SELECT seq FROM deliveries WHERE grp = ?1 AND seq >= ?2 AND seq <= ?3",
        )?;
        for seq in stmt.query_map(params![g, lo, hi], |r| r.get(0))? {
            kept.insert(seq?);
        }
    }
    let mut stmt = tx.prepare_cached("SELECT seq FROM dlq WHERE seq >= ?1 AND seq <= ?2")?;
    for seq in stmt.query_map(params![lo, hi], |r| r.get(0))? {
        kept.insert(seq?);
    }
    // The events of runs not ended.
    let mut active: HashMap<&str, bool> = HashMap::new();
    let mut pruned = 0;
    for (seq, correlation) in &rows {
        if kept.contains(seq) {
            continue;
        }
        let live = match active.get(correlation.as_str()) {
            Some(&live) => live,
            None => {
                let live = run_active(tx, correlation)?;
                active.insert(correlation, live);
                live
            }
        };
        if live {
            continue;
        }
        pruned += tx
            .prepare_cached("DELETE FROM events WHERE seq = ?1")?
            .execute([seq])? as u64;
    }
    let full = rows.len() == BATCH;
    Ok((pruned, full.then_some(hi)))
}

/// Whether `correlation` names a run whose record is there and not ended.
fn run_active(tx: &Transaction, correlation: &str) -> Result<bool, BrokerError> {
    let key = format!("{RUN_ROW}{correlation}");
    let there = tx
        .prepare_cached("SELECT 1 FROM state WHERE key = ?1")?
        .query_row([&key], |_| Ok(()))
        .optional()?
        .is_some();
    if !there {
        return Ok(false);
    }
    let ended = tx
        .prepare_cached("SELECT 1 FROM ended WHERE key = ?1")?
        .query_row([&key], |_| Ok(()))
        .optional()?
        .is_some();
    Ok(!ended)
}

/// A write that needs a page: whether the store takes writes again.
pub(super) fn probe(tx: &Transaction, now: i64) -> Result<(), BrokerError> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO pruned (what, before_ms, count, capped) VALUES ('probe', ?1, 0, 0)",
    )?
    .execute([now])?;
    Ok(())
}

/// Records that ended and go on again (`Commit::reopened`: a redriven
/// run) are no longer pruned.
pub(super) fn reopen(tx: &Transaction, keys: &[String]) -> Result<(), BrokerError> {
    for key in keys {
        tx.prepare_cached("DELETE FROM ended WHERE key = ?1")?
            .execute([key])?;
    }
    Ok(())
}

/// Name ended records (`Commit::ended`) in a commit's transaction.
pub(super) fn mark_ended(tx: &Transaction, keys: &[String], now: i64) -> Result<(), BrokerError> {
    for key in keys {
        tx.prepare_cached("INSERT OR REPLACE INTO ended (key, at_ms) VALUES (?1, ?2)")?
            .execute(params![key, now])?;
    }
    Ok(())
}

/// How far pruning has gone.
pub(super) fn horizon(c: &Connection) -> Result<Horizon, BrokerError> {
    let mut h = Horizon::default();
    let known = c
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pruned'",
            [],
            |_| Ok(()),
        )
        .optional()?;
    if known.is_none() {
        // A store written before retention, read by a newer CLI.
        return Ok(h);
    }
    let mut stmt = c.prepare_cached("SELECT what, before_ms, capped FROM pruned")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, bool>(2)?,
        ))
    })?;
    for row in rows {
        let (what, before, capped) = row?;
        let at = Some(crate::clock::rfc3339(before.max(0) as u64));
        match what.as_str() {
            "events" => h.events_before = at,
            "runs" => h.runs_before = at,
            "dead_letters" => h.dead_letters_before = at,
            _ => {}
        }
        h.capped |= capped;
    }
    Ok(h)
}

/// Epoch ms as the dead-letter table writes times (RFC 3339, microseconds),
/// so that they compare as text.
fn micros(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_micros(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: Duration = Duration::from_secs(60);

    fn retention() -> Retention {
        Retention {
            events: AGE,
            runs: AGE,
            dead_letters: AGE * 10,
            max_store: 1 << 40,
        }
    }

    /// Events 1..=6: a cascade (1, 2), an active run's event (3), an
    /// ended run's (4), one with a pending delivery (5), one a young dead
    /// letter points at (6); all stored by `t0`.
    fn store(t0: i64) -> (Dir, Connection) {
        let dir = Dir(std::env::temp_dir().join(format!("troupe-prune-{}", uuid::Uuid::new_v4())));
        let c = super::super::store::open(&dir.0).unwrap();
        for (seq, corr) in [
            (1, "c1"),
            (2, "c1"),
            (3, "r1"),
            (4, "r2"),
            (5, "c5"),
            (6, "c6"),
        ] {
            c.execute(
                "INSERT INTO events VALUES (?1, ?2, 'k', 'urn:t', NULL, 't', 'application/json', NULL, x'7b7d', '{}', ?3)",
                params![seq, format!("e{seq}"), corr],
            )
            .unwrap();
        }
        c.execute_batch(&format!(
            "INSERT INTO state VALUES ('run/r1', x'7b7d');
             INSERT INTO state VALUES ('run/r2', x'7b7d');
             INSERT INTO ended VALUES ('run/r2', {t0});
             INSERT INTO deliveries VALUES ('g', 5, 0, 0);
             INSERT INTO dlq (id, grp, seq, class, message, attempts, time) VALUES ('d6', 'g', 6, 'rejected', 'no', 1, '{}');
             INSERT INTO marks VALUES (6, {t0});",
            micros(t0)
        ))
        .unwrap();
        (dir, c)
    }

    fn seqs(c: &Connection) -> Vec<i64> {
        let mut s = c.prepare("SELECT seq FROM events ORDER BY seq").unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn prune(c: &mut Connection, now: i64, cur: &mut Cursor) -> Pruned {
        let tx = c.transaction().unwrap();
        let p = batch(&tx, &retention(), now, cur).unwrap();
        tx.commit().unwrap();
        p
    }

    #[test]
    fn what_must_stay_stays_and_the_rest_goes_by_age() {
        let t0 = 1_000_000_000;
        let (_dir, mut c) = store(t0);
        let mut cur = Cursor::default();
        // Younger than the age: nothing goes.
        let p = prune(&mut c, t0 + 1000, &mut cur);
        assert_eq!((p.events, p.records, p.dead_letters), (0, 0, 0));
        assert_eq!(seqs(&c), [1, 2, 3, 4, 5, 6]);
        // Past it: the cascade and the ended run (record and events) go;
        // the active run's, the pending and the dead-lettered stay.
        let later = t0 + AGE.as_millis() as i64 + 1;
        let p = prune(&mut c, later, &mut cur);
        assert_eq!((p.events, p.records, p.dead_letters), (3, 1, 0), "{p:?}");
        assert_eq!(seqs(&c), [3, 5, 6]);
        let runs: Vec<String> = c
            .prepare("SELECT key FROM state")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(runs, ["run/r1"]);
        let h = horizon(&c).unwrap();
        assert!(h.events_before.is_some() && h.runs_before.is_some() && !h.capped);
        // Settled, ended, past the dead letters' age: all go, once a new
        // pass starts.
        c.execute_batch("DELETE FROM deliveries; INSERT INTO ended VALUES ('run/r1', 0);")
            .unwrap();
        let much_later = t0 + 11 * AGE.as_millis() as i64;
        let p = prune(&mut c, much_later, &mut cur);
        assert_eq!(p.dead_letters, 1);
        assert_eq!(seqs(&c), Vec::<i64>::new(), "{p:?}");
    }

    #[test]
    fn past_max_store_settled_events_go_before_their_age() {
        let t0 = 1_000_000_000;
        let (_dir, mut c) = store(t0);
        let mut r = retention();
        r.max_store = MIN_STORE_FOR_TEST;
        let tx = c.transaction().unwrap();
        let p = batch(&tx, &r, t0 + 1, &mut Cursor::default()).unwrap();
        tx.commit().unwrap();
        assert!(p.capped);
        // Only what must stay is left, though nothing is past its age.
        assert_eq!(seqs(&c), [3, 5, 6]);
        assert!(horizon(&c).unwrap().capped);
    }

    /// A temporary directory, removed when dropped.
    struct Dir(std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Smaller than any store: every batch finds the store over it.
    const MIN_STORE_FOR_TEST: u64 = 1;
}
