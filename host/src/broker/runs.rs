//! The run index: what finding runs needs (`GET /v1/runs`, `troupe runs`,
//! counts per flow and state), kept by each backend beside the runs'
//! records and written in the same commits ([`crate::broker::Commit::runs`]).
//!
//! - The embedded broker keeps it in SQLite (`embedded/runs.rs`): a table
//!   and an index per filter, so a page is a range of one index, never a
//!   scan of every run.
//! - NATS keeps one entry per run in the app's state bucket (`runidx.ID`);
//!   every host follows those entries into a [`MemIndex`] (`nats/runs.rs`).
//!
//! **Runs are listed newest first by id.** A run's id is a UUID v7 drawn
//! when it starts: its first 48 bits are its start time in ms, so the
//! order of ids is the order of starts, a page's cursor is the last id it
//! holds (the next page is every id below it: stable while runs start
//! and end), and a time range is a range of ids ([`id_floor`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A run as the index holds it: what lists and counts need, small (its
/// outputs stay in the run's record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEntry {
    pub id: String,
    pub flow: String,
    /// The run's state, as its record names it (`running`, `failed`, ...).
    pub state: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<u64>,
    /// The `Idempotency-Key` it was started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Why it failed, cut to [`MAX_ERROR`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The most bytes of a run's error an index entry keeps.
pub const MAX_ERROR: usize = 300;

/// The most runs one page holds.
pub const MAX_LIMIT: usize = 500;
/// A page's size when the caller does not say.
pub const DEFAULT_LIMIT: usize = 50;

/// Which runs, and how many.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunQuery {
    pub flow: Option<String>,
    pub state: Option<String>,
    /// Started at or after this time (epoch ms).
    pub since_ms: Option<u64>,
    /// Started before this time (epoch ms).
    pub until_ms: Option<u64>,
    pub key: Option<String>,
    /// At most this many (1 to [`MAX_LIMIT`]).
    pub limit: usize,
    /// The cursor a previous page gave: runs after it (older).
    pub after: Option<String>,
}

impl RunQuery {
    /// The bounds of the ids this query looks at: `[lo, hi)`.
    pub fn id_range(&self) -> (String, Option<String>) {
        let lo = id_floor(self.since_ms.unwrap_or(0));
        let until = self.until_ms.map(id_floor);
        let hi = match (until, &self.after) {
            (Some(u), Some(a)) => Some(if *a < u { a.clone() } else { u }),
            (u, a) => u.or_else(|| a.clone()),
        };
        (lo, hi)
    }
}

/// One page of runs, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunPage {
    pub runs: Vec<RunEntry>,
    /// The cursor of the next page, when there may be one.
    pub next: Option<String>,
}

impl RunPage {
    /// The page made of `runs` (at most `limit + 1` found: the extra one
    /// says there is a next page).
    pub fn of(mut runs: Vec<RunEntry>, limit: usize) -> RunPage {
        let more = runs.len() > limit;
        runs.truncate(limit);
        let next = more.then(|| runs.last().map(|r| r.id.clone())).flatten();
        RunPage { runs, next }
    }
}

/// How many runs of a flow are in a state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RunCount {
    pub flow: String,
    pub state: String,
    pub count: u64,
}

/// The smallest run id a run started at `ms` (epoch) can have: a UUID v7
/// whose time is `ms` and whose other bits are all zero, as text (ids
/// compare as text in the order of their bits: fixed width, lowercase
/// hex).
pub fn id_floor(ms: u64) -> String {
    let ms = ms.min((1 << 48) - 1);
    format!(
        "{:08x}-{:04x}-0000-0000-000000000000",
        ms >> 16,
        ms & 0xffff
    )
}

/// Every run's entry, in memory, with an ordered set per filter: what a
/// NATS host follows the app's entries into. Pure: no I/O.
#[derive(Debug, Default)]
pub struct MemIndex {
    runs: BTreeMap<Arc<str>, RunEntry>,
    by_flow: BTreeSet<(Arc<str>, Arc<str>)>,
    by_state: BTreeSet<(Arc<str>, Arc<str>)>,
    by_flow_state: BTreeSet<(Arc<str>, Arc<str>, Arc<str>)>,
    by_key: HashMap<String, BTreeSet<Arc<str>>>,
    counts: BTreeMap<(String, String), u64>,
}

impl MemIndex {
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Take `e` in place of what the index held of its run.
    pub fn put(&mut self, e: RunEntry) {
        self.remove(&e.id);
        let id: Arc<str> = e.id.as_str().into();
        let flow: Arc<str> = e.flow.as_str().into();
        let state: Arc<str> = e.state.as_str().into();
        self.by_flow.insert((flow.clone(), id.clone()));
        self.by_state.insert((state.clone(), id.clone()));
        self.by_flow_state.insert((flow, state, id.clone()));
        if let Some(k) = &e.key {
            self.by_key.entry(k.clone()).or_default().insert(id.clone());
        }
        *self
            .counts
            .entry((e.flow.clone(), e.state.clone()))
            .or_default() += 1;
        self.runs.insert(id, e);
    }

    /// Forget run `id` (its records were pruned).
    pub fn remove(&mut self, id: &str) -> Option<RunEntry> {
        let (id, e) = self.runs.remove_entry(id)?;
        let flow: Arc<str> = e.flow.as_str().into();
        let state: Arc<str> = e.state.as_str().into();
        self.by_flow.remove(&(flow.clone(), id.clone()));
        self.by_state.remove(&(state.clone(), id.clone()));
        self.by_flow_state.remove(&(flow, state, id.clone()));
        if let Some(k) = &e.key
            && let Some(ids) = self.by_key.get_mut(k)
        {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_key.remove(k);
            }
        }
        let slot = (e.flow.clone(), e.state.clone());
        if let Some(n) = self.counts.get_mut(&slot) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&slot);
            }
        }
        Some(e)
    }

    /// Forget the runs that ended (a final `state`, one of `ended`) and
    /// were last updated before `before_ms`: retention pruned them.
    pub fn forget_ended_before(&mut self, ended: &[&str], before_ms: u64) -> usize {
        let gone: Vec<Arc<str>> = ended
            .iter()
            .flat_map(|s| {
                let s: Arc<str> = (*s).into();
                self.by_state
                    .range((s.clone(), Arc::from(""))..)
                    .take_while(move |(st, _)| *st == s)
                    .map(|(_, id)| id.clone())
            })
            .filter(|id| self.runs[id].updated_ms < before_ms)
            .collect();
        for id in &gone {
            self.remove(id);
        }
        gone.len()
    }

    /// A page of the runs `q` asks for, newest first.
    pub fn query(&self, q: &RunQuery) -> RunPage {
        let (lo, hi) = q.id_range();
        let limit = q.limit.clamp(1, MAX_LIMIT);
        let fits = |id: &str| id >= lo.as_str() && hi.as_deref().is_none_or(|h| id < h);
        let keep = |e: &RunEntry| {
            q.flow.as_ref().is_none_or(|f| *f == e.flow)
                && q.state.as_ref().is_none_or(|s| *s == e.state)
                && q.key.as_ref().is_none_or(|k| e.key.as_ref() == Some(k))
        };
        // The narrowest set that holds every run the query may want,
        // walked from its newest id down.
        let ids: Box<dyn Iterator<Item = &Arc<str>>> = match (&q.key, &q.flow, &q.state) {
            (Some(k), _, _) => match self.by_key.get(k) {
                Some(ids) => Box::new(ids.iter().rev()),
                None => Box::new(std::iter::empty()),
            },
            (None, Some(f), Some(s)) => {
                let (f, s): (Arc<str>, Arc<str>) = (f.as_str().into(), s.as_str().into());
                let top = hi.as_deref().unwrap_or("\u{10ffff}");
                Box::new(
                    self.by_flow_state
                        .range(..(f.clone(), s.clone(), Arc::from(top)))
                        .rev()
                        .take_while(move |(ff, ss, _)| *ff == f && *ss == s)
                        .map(|(_, _, id)| id),
                )
            }
            (None, Some(one), None) | (None, None, Some(one)) => {
                let set = if q.flow.is_some() {
                    &self.by_flow
                } else {
                    &self.by_state
                };
                let one: Arc<str> = one.as_str().into();
                let top = hi.as_deref().unwrap_or("\u{10ffff}");
                Box::new(
                    set.range(..(one.clone(), Arc::from(top)))
                        .rev()
                        .take_while(move |(o, _)| *o == one)
                        .map(|(_, id)| id),
                )
            }
            (None, None, None) => match &hi {
                Some(h) => {
                    use std::ops::Bound::{Excluded, Unbounded};
                    let below = (Unbounded, Excluded(h.as_str()));
                    Box::new(self.runs.range::<str, _>(below).rev().map(|(id, _)| id))
                }
                None => Box::new(self.runs.keys().rev()),
            },
        };
        let runs = ids
            .skip_while(|id| !fits(id) && hi.as_deref().is_some_and(|h| id.as_ref() >= h))
            .take_while(|id| id.as_ref() >= lo.as_str())
            .filter(|id| fits(id))
            .map(|id| &self.runs[id])
            .filter(|e| keep(e))
            .take(limit + 1)
            .cloned()
            .collect();
        RunPage::of(runs, limit)
    }

    /// How many runs of each flow are in each state.
    pub fn counts(&self) -> Vec<RunCount> {
        self.counts
            .iter()
            .map(|((flow, state), n)| RunCount {
                flow: flow.clone(),
                state: state.clone(),
                count: *n,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
