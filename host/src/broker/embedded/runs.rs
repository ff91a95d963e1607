//! The run index on the embedded broker ([`crate::broker::runs`]): a
//! `runs` table with an index per filter, and `run_counts`, the number of
//! runs per flow and state, kept exact in the same transactions (so
//! `/metrics` and `GET /v1/runs/counts` read a handful of rows, never the
//! runs). Written by the writer with the runs' records; pruned with them.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::broker::BrokerError;
use crate::broker::runs::{MAX_LIMIT, RunCount, RunEntry, RunPage, RunQuery};

/// Tables and indexes: each filter (flow, state, both, key) has an index
/// that ends with the id, so a page is one range of one index, newest
/// first.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    flow TEXT NOT NULL,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    deployment INTEGER,
    key TEXT,
    error TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_flow ON runs (flow, id);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state, id);
CREATE INDEX IF NOT EXISTS runs_flow_state ON runs (flow, state, id);
CREATE INDEX IF NOT EXISTS runs_key ON runs (key, id) WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS run_counts (
    flow TEXT NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (flow, state)
) WITHOUT ROWID;
";

/// Bring a store written before the index up to date: an entry for every
/// run's record (one pass, once), and the counts.
pub(super) fn upgrade(conn: &Connection) -> Result<(), BrokerError> {
    let filled: bool = conn.prepare("SELECT 1 FROM runs LIMIT 1")?.exists([])?;
    if filled {
        return Ok(());
    }
    conn.execute_batch(
        "INSERT OR IGNORE INTO runs (id, flow, state, created_ms, updated_ms, deployment, key, error)
         SELECT json_extract(v, '$.id'), json_extract(v, '$.flow'), json_extract(v, '$.state'),
                json_extract(v, '$.created_ms'),
                ifnull(CAST((julianday(json_extract(v, '$.updated')) - 2440587.5) * 86400000 AS INTEGER),
                       json_extract(v, '$.created_ms')),
                json_extract(v, '$.deployment'), json_extract(v, '$.key'),
                substr(json_extract(v, '$.error'), 1, 300)
         FROM (SELECT CAST(value AS TEXT) AS v FROM state
               WHERE key >= 'run/' AND key < 'run0' AND json_valid(CAST(value AS TEXT)))
         WHERE json_extract(v, '$.id') IS NOT NULL AND json_extract(v, '$.flow') IS NOT NULL
           AND json_extract(v, '$.state') IS NOT NULL AND json_extract(v, '$.created_ms') IS NOT NULL;
         DELETE FROM run_counts;
         INSERT INTO run_counts SELECT flow, state, count(*) FROM runs GROUP BY flow, state;",
    )?;
    Ok(())
}

/// Write run `e`'s entry in place of the one it had, and move its count.
pub(super) fn put(tx: &Transaction, e: &RunEntry) -> Result<(), BrokerError> {
    let old = was(tx, &e.id)?;
    // An update in place (a run's flow, key and start never change): only
    // the indexes of what changed are written.
    tx.prepare_cached(
        "INSERT INTO runs (id, flow, state, created_ms, updated_ms, deployment, key, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms,
           deployment = excluded.deployment, error = excluded.error",
    )?
    .execute(params![
        e.id,
        e.flow,
        e.state,
        e.created_ms as i64,
        e.updated_ms as i64,
        e.deployment.map(|d| d as i64),
        e.key,
        e.error
    ])?;
    if old.as_ref() != Some(&(e.flow.clone(), e.state.clone())) {
        if let Some((flow, state)) = old {
            count(tx, &flow, &state, -1)?;
        }
        count(tx, &e.flow, &e.state, 1)?;
    }
    Ok(())
}

/// Forget run `id`'s entry (its record was pruned).
pub(super) fn forget(tx: &Transaction, id: &str) -> Result<(), BrokerError> {
    if let Some((flow, state)) = was(tx, id)? {
        tx.prepare_cached("DELETE FROM runs WHERE id = ?1")?
            .execute([id])?;
        count(tx, &flow, &state, -1)?;
    }
    Ok(())
}

fn was(tx: &Transaction, id: &str) -> Result<Option<(String, String)>, BrokerError> {
    Ok(tx
        .prepare_cached("SELECT flow, state FROM runs WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

fn count(tx: &Transaction, flow: &str, state: &str, by: i64) -> Result<(), BrokerError> {
    tx.prepare_cached(
        "INSERT INTO run_counts (flow, state, n) VALUES (?1, ?2, ?3)
         ON CONFLICT (flow, state) DO UPDATE SET n = n + excluded.n",
    )?
    .execute(params![flow, state, by])?;
    Ok(())
}

/// The SQL of query `q`, and its parameters: one range of one index.
fn sql(q: &RunQuery) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value as V;
    let (lo, hi) = q.id_range();
    let mut sql = String::from(
        "SELECT id, flow, state, created_ms, updated_ms, deployment, key, error FROM runs WHERE id >= ?",
    );
    let mut args = vec![V::Text(lo)];
    if let Some(hi) = hi {
        sql.push_str(" AND id < ?");
        args.push(V::Text(hi));
    }
    for (column, value) in [("flow", &q.flow), ("state", &q.state), ("key", &q.key)] {
        if let Some(v) = value {
            sql.push_str(&format!(" AND {column} = ?"));
            args.push(V::Text(v.clone()));
        }
    }
    sql.push_str(" ORDER BY id DESC LIMIT ?");
    args.push(V::Integer(q.limit.clamp(1, MAX_LIMIT) as i64 + 1));
    (sql, args)
}

/// A page of the runs `q` asks for, newest first.
pub(super) fn query(conn: &Connection, q: &RunQuery) -> Result<RunPage, BrokerError> {
    let (sql, args) = sql(q);
    let mut stmt = conn.prepare_cached(&sql)?;
    let runs = stmt
        .query_map(rusqlite::params_from_iter(args), |r| {
            Ok(RunEntry {
                id: r.get(0)?,
                flow: r.get(1)?,
                state: r.get(2)?,
                created_ms: r.get::<_, i64>(3)? as u64,
                updated_ms: r.get::<_, i64>(4)? as u64,
                deployment: r.get::<_, Option<i64>>(5)?.map(|d| d as u64),
                key: r.get(6)?,
                error: r.get(7)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RunPage::of(runs, q.limit.clamp(1, MAX_LIMIT)))
}

/// How many runs of each flow are in each state.
pub(super) fn counts(conn: &Connection) -> Result<Vec<RunCount>, BrokerError> {
    // A count that went to zero stays as a row (deleting it would cost
    // a statement more each time a run leaves a state).
    let mut stmt = conn
        .prepare_cached("SELECT flow, state, n FROM run_counts WHERE n > 0 ORDER BY flow, state")?;
    let counts = stmt
        .query_map([], |r| {
            Ok(RunCount {
                flow: r.get(0)?,
                state: r.get(1)?,
                count: r.get::<_, i64>(2)? as u64,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c
    }

    /// Every filter is one range of one index: SQLite's plan searches an
    /// index and never scans the table, nor sorts.
    #[test]
    fn every_filter_is_answered_from_an_index_without_a_sort() {
        let c = store();
        let s = |v: &str| Some(v.to_string());
        let queries = [
            RunQuery::default(),
            RunQuery {
                flow: s("f"),
                ..RunQuery::default()
            },
            RunQuery {
                state: s("failed"),
                ..RunQuery::default()
            },
            RunQuery {
                flow: s("f"),
                state: s("failed"),
                ..RunQuery::default()
            },
            RunQuery {
                key: s("k"),
                ..RunQuery::default()
            },
            RunQuery {
                since_ms: Some(1),
                until_ms: Some(2),
                after: s("x"),
                ..RunQuery::default()
            },
            RunQuery {
                flow: s("f"),
                since_ms: Some(1),
                ..RunQuery::default()
            },
        ];
        for q in queries {
            let (sql, args) = sql(&q);
            let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(plan.starts_with("SEARCH"), "{q:?}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{q:?} sorts: {plan}");
        }
    }

    #[test]
    fn counts_follow_each_run_from_state_to_state_and_out() {
        let mut c = store();
        let e = |id: &str, state: &str| RunEntry {
            id: id.into(),
            flow: "f".into(),
            state: state.into(),
            created_ms: 1,
            updated_ms: 1,
            deployment: None,
            key: None,
            error: None,
        };
        let tx = c.transaction().unwrap();
        put(&tx, &e("a", "running")).unwrap();
        put(&tx, &e("b", "running")).unwrap();
        put(&tx, &e("a", "running")).unwrap();
        put(&tx, &e("a", "failed")).unwrap();
        forget(&tx, "b").unwrap();
        forget(&tx, "nobody").unwrap();
        tx.commit().unwrap();
        let got: Vec<(String, u64)> = counts(&c)
            .unwrap()
            .into_iter()
            .map(|c| (c.state, c.count))
            .collect();
        assert_eq!(got, [("failed".to_string(), 1)]);
    }
}
