//! Step state in the embedded broker: the `kv` and `kv_buckets` tables,
//! read by the sandbox and written in the commit that settles a delivery
//! (see [`crate::kv`]).
//!
//! - `kv`: one row per entry: bucket, key, value, and the version that
//!   wrote it.
//! - `kv_buckets`: one row per bucket ever written: its version (the
//!   greatest version written to it, deletions included), and its keys and
//!   bytes (keys and values) for the quotas. Rows are never removed, so the
//!   greatest bucket version is the app's version clock and **no version
//!   is given twice**.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::broker::BrokerError;
use crate::kv::{KvLimits, ReadError, Refused, Version, Writes, check};

/// The tables (part of the store's schema).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv_buckets (
    bucket TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    keys INTEGER NOT NULL,
    bytes INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Connections that read steps' buckets, one per reader at a time (the
/// workers of every step read at once); opened as needed and kept.
pub(super) struct Readers {
    dir: std::path::PathBuf,
    pool: std::sync::Arc<std::sync::Mutex<Vec<Connection>>>,
}

impl Readers {
    pub(super) fn new(dir: &std::path::Path) -> Readers {
        Readers {
            dir: dir.to_path_buf(),
            pool: Default::default(),
        }
    }

    /// Run `f` on a read connection, on this thread: for the sandbox,
    /// whose host calls run on the step's worker thread. A point read of
    /// the store's log never waits on its writer; a read connection that
    /// finds the store locked gives up after [`READ_BUSY`] rather than
    /// hold the guest's call (the guest sees the store unavailable).
    fn read_here<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let taken = self.pool.lock().expect("kv readers lock").pop();
        let conn = match taken {
            Some(c) => c,
            None => {
                let c = super::store::open(&self.dir)?;
                c.busy_timeout(READ_BUSY)?;
                c
            }
        };
        let r = f(&conn);
        self.pool.lock().expect("kv readers lock").push(conn);
        r
    }

    /// Run `f` on a read connection, on a blocking thread (for callers on
    /// the async runtime: the HTTP API).
    pub(super) async fn read<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce(&Connection) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, BrokerError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.read_here(f))
            .await
            .map_err(|e| BrokerError::Store(e.to_string()))?
    }
}

/// How long a guest's read waits for a store another connection locked.
const READ_BUSY: std::time::Duration = std::time::Duration::from_millis(100);

#[async_trait::async_trait]
impl crate::kv::Reader for Readers {
    async fn kv_get(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, Version)>, ReadError> {
        self.read_here(|c| get(c, bucket, key))
            .map_err(crate::broker::read_error)
    }

    async fn kv_list(&self, bucket: &str) -> Result<(Vec<String>, Version), ReadError> {
        self.read_here(|c| list(c, bucket))
            .map_err(crate::broker::read_error)
    }
}

/// An operator's write of one entry (`None` deletes), in a transaction
/// of its own on the store in `state_dir`, beside a host that may be
/// running (SQLite serialises the two writers).
pub(super) fn write_one(
    state_dir: &std::path::Path,
    bucket: &str,
    key: &str,
    value: Option<Vec<u8>>,
) -> Result<(), BrokerError> {
    let mut conn = super::store::open(state_dir)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let w = Writes {
        writes: vec![(bucket.to_string(), key.to_string(), value)],
        ..Writes::default()
    };
    // No quota: an operator may need to go over one to mend things.
    let unbounded = KvLimits {
        max_keys: u64::MAX,
        max_bucket_bytes: u64::MAX,
        ..KvLimits::default()
    };
    if let Err(refused) = apply(&tx, &w, &unbounded)? {
        return Err(BrokerError::Refused(refused));
    }
    tx.commit()?;
    Ok(())
}

/// The committed entry `bucket`/`key`: its value and version.
pub fn get(
    conn: &Connection,
    bucket: &str,
    key: &str,
) -> Result<Option<(Vec<u8>, Version)>, BrokerError> {
    Ok(conn
        .prepare_cached("SELECT value, version FROM kv WHERE bucket = ?1 AND key = ?2")?
        .query_row(params![bucket, key], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? as Version))
        })
        .optional()?)
}

/// `bucket`'s committed keys, sorted, and the bucket's version, read
/// together (in one read transaction).
pub fn list(conn: &Connection, bucket: &str) -> Result<(Vec<String>, Version), BrokerError> {
    let tx = conn.unchecked_transaction()?;
    let version = bucket_version(&tx, bucket)?;
    let keys = tx
        .prepare_cached("SELECT key FROM kv WHERE bucket = ?1 ORDER BY key")?
        .query_map([bucket], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    tx.finish()?;
    Ok((keys, version))
}

fn bucket_version(conn: &Connection, bucket: &str) -> Result<Version, BrokerError> {
    Ok(conn
        .prepare_cached("SELECT version FROM kv_buckets WHERE bucket = ?1")?
        .query_row([bucket], |r| r.get::<_, i64>(0))
        .optional()?
        .map_or(0, |v| v as Version))
}

/// Apply `w` in `tx` if everything it read is still current and the
/// buckets stay within `limits`; otherwise write nothing and say why.
pub fn apply(
    tx: &Transaction,
    w: &Writes,
    limits: &KvLimits,
) -> Result<Result<(), Refused>, BrokerError> {
    // What the check needs, read first (the check itself is pure).
    let mut keys = BTreeMap::new();
    for (b, k, _) in &w.reads {
        let v = get(tx, b, k)?.map_or(0, |(_, v)| v);
        keys.insert((b.as_str(), k.as_str()), v);
    }
    let mut buckets = BTreeMap::new();
    for (b, _) in &w.lists {
        buckets.insert(b.as_str(), bucket_version(tx, b)?);
    }
    if let Err(c) = check(w, |b, k| keys[&(b, k)], |b| buckets[b]) {
        return Ok(Err(c.into()));
    }
    if w.writes.is_empty() {
        return Ok(Ok(()));
    }
    // The buckets' totals after the writes, checked before any is made.
    let mut totals: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for (b, k, v) in &w.writes {
        if !totals.contains_key(b.as_str()) {
            let t = tx
                .prepare_cached("SELECT keys, bytes FROM kv_buckets WHERE bucket = ?1")?
                .query_row([b], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .unwrap_or((0, 0));
            totals.insert(b, t);
        }
        let t = totals.get_mut(b.as_str()).expect("inserted above");
        let old: Option<i64> = tx
            .prepare_cached("SELECT length(value) FROM kv WHERE bucket = ?1 AND key = ?2")?
            .query_row(params![b, k], |r| r.get(0))
            .optional()?;
        if let Some(len) = old {
            t.0 -= 1;
            t.1 -= k.len() as i64 + len;
        }
        if let Some(v) = v {
            t.0 += 1;
            t.1 += (k.len() + v.len()) as i64;
        }
    }
    for (b, (n, bytes)) in &totals {
        if *n as u64 > limits.max_keys {
            return Ok(Err(Refused::Quota(format!(
                "bucket {b} would hold {n} keys, over its limit of {}",
                limits.max_keys
            ))));
        }
        if *bytes as u64 > limits.max_bucket_bytes {
            return Ok(Err(Refused::Quota(format!(
                "bucket {b} would hold {bytes} bytes, over its limit of {}",
                limits.max_bucket_bytes
            ))));
        }
    }
    let mut clock: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM kv_buckets",
        [],
        |r| r.get(0),
    )?;
    // Each bucket's version: the last version written to it.
    let mut last = BTreeMap::new();
    for (b, k, v) in &w.writes {
        clock += 1;
        last.insert(b.as_str(), clock);
        match v {
            Some(v) => tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO kv (bucket, key, value, version) \
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![b, k, v, clock])?,
            None => tx
                .prepare_cached("DELETE FROM kv WHERE bucket = ?1 AND key = ?2")?
                .execute(params![b, k])?,
        };
    }
    for (b, version) in last {
        let (n, bytes) = totals[b];
        tx.prepare_cached(
            "INSERT OR REPLACE INTO kv_buckets (bucket, version, keys, bytes) \
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![b, version, n, bytes])?;
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{Conflict, Txn};

    /// A store of its own; its folder is removed when the guard goes.
    struct Dir(std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn store() -> (Dir, Connection) {
        let dir = std::env::temp_dir().join(format!("troupe-kv-{}", uuid::Uuid::new_v4()));
        let conn = super::super::store::open(&dir).unwrap();
        (Dir(dir), conn)
    }

    fn commit(conn: &mut Connection, t: Txn, limits: &KvLimits) -> Result<(), Refused> {
        let tx = conn.transaction().unwrap();
        let r = apply(&tx, &t.into_writes(), limits).unwrap();
        tx.commit().unwrap();
        r
    }

    fn txn() -> Txn {
        Txn::new("reserve", &["stock".into()], KvLimits::default())
    }

    fn read(conn: &Connection, t: &mut Txn, b: &str, k: &str) {
        let e = get(conn, b, k).unwrap();
        let v = e.as_ref().map_or(0, |(_, v)| *v);
        t.saw(b, k, e.map(|(v, _)| v), v).unwrap();
    }

    #[test]
    fn writes_are_applied_with_versions_that_never_repeat() {
        let (_d, mut conn) = store();
        let l = KvLimits::default();
        let mut t = txn();
        t.set("stock", "tea", b"5".to_vec()).unwrap();
        t.set("stock", "coffee", b"7".to_vec()).unwrap();
        commit(&mut conn, t, &l).unwrap();
        let (tea, v1) = get(&conn, "stock", "tea").unwrap().unwrap();
        assert_eq!(tea, b"5");
        assert_eq!(list(&conn, "stock").unwrap().0, ["coffee", "tea"]);
        // Deleted and written again with the same value: a new version.
        let mut t = txn();
        t.delete("stock", "tea").unwrap();
        commit(&mut conn, t, &l).unwrap();
        assert_eq!(get(&conn, "stock", "tea").unwrap(), None);
        let mut t = txn();
        t.set("stock", "tea", b"5".to_vec()).unwrap();
        commit(&mut conn, t, &l).unwrap();
        let (_, v3) = get(&conn, "stock", "tea").unwrap().unwrap();
        assert!(v3 > v1);
        assert_eq!(list(&conn, "stock").unwrap().1, v3);
    }

    #[test]
    fn a_stale_read_refuses_the_whole_commit() {
        let (_d, mut conn) = store();
        let l = KvLimits::default();
        let mut a = txn();
        let mut b = txn();
        read(&conn, &mut a, "stock", "tea");
        read(&conn, &mut b, "stock", "tea");
        a.increment("stock", "tea", 1).unwrap();
        b.increment("stock", "tea", 1).unwrap();
        b.set("reserve", "o-2", b"held".to_vec()).unwrap();
        commit(&mut conn, a, &l).unwrap();
        assert!(matches!(
            commit(&mut conn, b, &l),
            Err(Refused::Conflict(Conflict::Key { .. }))
        ));
        assert_eq!(get(&conn, "reserve", "o-2").unwrap(), None);
        assert_eq!(get(&conn, "stock", "tea").unwrap().unwrap().0, b"1");
    }

    #[test]
    fn quotas_are_checked_before_anything_is_written() {
        let (_d, mut conn) = store();
        let l = KvLimits {
            max_keys: 2,
            max_bucket_bytes: 20,
            ..KvLimits::default()
        };
        let mut t = txn();
        t.set("stock", "a", b"1".to_vec()).unwrap();
        t.set("stock", "b", b"1".to_vec()).unwrap();
        commit(&mut conn, t, &l).unwrap();
        let mut t = txn();
        t.set("stock", "c", b"1".to_vec()).unwrap();
        let e = commit(&mut conn, t, &l).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bucket stock would hold 3 keys, over its limit of 2"
        );
        // Replacing one and deleting one stays within the quota.
        let mut t = txn();
        t.delete("stock", "a").unwrap();
        t.set("stock", "c", b"1".to_vec()).unwrap();
        commit(&mut conn, t, &l).unwrap();
        let mut t = txn();
        t.set("stock", "b", vec![b'x'; 30]).unwrap();
        assert!(matches!(commit(&mut conn, t, &l), Err(Refused::Quota(_))));
        assert_eq!(list(&conn, "stock").unwrap().0, ["b", "c"]);
        assert_eq!(get(&conn, "stock", "b").unwrap().unwrap().0, b"1");
    }
}
