//! One batch of the commit log, applied (step 2 in `mod.rs`): every entry
//! decided in log order (a duplicate, refused, or committed) against the
//! state the entries before it left, then what the batch changes written:
//! the verdicts, then the entries and totals, then the applied index. The
//! leader that calls it, and the lease that makes it the only one, are
//! `lead.rs`.
//!
//! A batch costs about four round trips to the server however many entries
//! it holds (the subjects it needs and does not know yet, its verdicts,
//! its writes, the index), where each entry used to cost four.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;

use super::super::nats;
use super::part::{PARTITIONS, partition, totals_key};
use super::{Current, Kv, LogEntry, Totals, Verdict, totals_of};
use crate::broker::BrokerError;
use crate::kv::{Conflict, Refused, Writes, check};

/// Subjects read at once.
const READ_AHEAD: usize = 64;
/// A cache larger than this is dropped and read again as needed.
const MAX_CACHED: usize = 200_000;

/// The last message of each subject the leader has read or written: the
/// server's state as of the applied index. While a batch is decided it
/// also holds what the batch's earlier entries wrote (with the subject's
/// sequence before the batch, for the compare-and-set that writes it).
#[derive(Default)]
pub(super) struct Cache(HashMap<String, Current>);

/// What a leader decides a batch with (`lead.rs`): the partitions it
/// leads, the invocations with an entry that another leader decides (the
/// latest such entry's sequence), and its cache.
pub(super) struct Deciding<'a> {
    pub(super) mine: super::part::Mask,
    pub(super) others: &'a HashMap<String, u64>,
    pub(super) cache: &'a mut Cache,
}

impl Cache {
    /// Forget everything: read again as needed.
    pub(super) fn clear(&mut self) {
        self.0.clear();
    }
}

/// What a batch writes to a subject: the value (`None`: a deletion
/// marker) and the version it carries.
type Staged = HashMap<String, (Option<Bytes>, u64)>;

/// An invocation's verdict as read (`None`: none yet), and its subject's
/// last sequence.
type Decided = (Option<Verdict>, u64);

impl Kv {
    /// Start this host's applier, once; `true` if this call started it.
    pub(in crate::broker::nats) fn run_applier(self: Arc<Self>) -> bool {
        let mut started = false;
        let me = self.clone();
        self.applier.get_or_init(|| {
            started = true;
            self.runtime.spawn(me.apply_loop())
        });
        started
    }

    /// Stop the applier between two entries, and wait for it.
    pub(in crate::broker::nats) async fn stop_applier(&self) {
        let _ = self.stop.send(true);
        if let Some(h) = self.applier.get() {
            // The task ends at its next turn; a handle cannot be taken out
            // of the cell, so wait for it to finish by polling.
            while !h.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    /// Apply a batch of the log entries of `leader`'s partitions: decide
    /// each in log order, then write what the batch changes. `false`:
    /// another leader wrote first (a verdict), so this host no longer
    /// applies; it starts again from its partitions' indexes.
    pub(super) async fn apply_batch(
        &self,
        entries: Vec<(u64, LogEntry)>,
        leader: Deciding<'_>,
    ) -> Result<bool, BrokerError> {
        if entries.is_empty() {
            return Ok(true);
        }
        let cache = leader.cache;
        if cache.0.len() > MAX_CACHED {
            cache.0.clear();
        }
        let entries: Vec<(u64, LogEntry, Writes)> = entries
            .into_iter()
            .filter_map(|(seq, e)| match decode_writes(&e) {
                Ok(w) => Some((seq, e, w)),
                Err(err) => {
                    tracing::error!("state commit #{seq} is unreadable, skipped: {err}");
                    None
                }
            })
            .collect();
        // What deciding them needs and the cache does not hold, and each
        // invocation's verdict, read at once. Subjects of partitions led
        // elsewhere (another partition's totals, for a quota; anything of
        // an entry that crosses partitions) are read every time, and
        // dropped after the batch.
        let mut wanted = HashSet::new();
        let mut foreign = HashSet::new();
        for (_, e, w) in &entries {
            for (subject, n) in self.subjects(e, w) {
                if leader.mine & 1 << n == 0 {
                    foreign.insert(subject.clone());
                    wanted.insert(subject);
                } else if !cache.0.contains_key(&subject) {
                    wanted.insert(subject);
                }
            }
        }
        let read = read_all(wanted, |s| async move { self.current(&s).await }).await?;
        cache.0.extend(read);
        let ks: HashSet<String> = entries.iter().map(|(_, e, _)| e.k.clone()).collect();
        let mut decided: HashMap<String, Decided> =
            read_all(ks, |k| async move { self.verdict(&k).await })
                .await?
                .into_iter()
                .collect();
        // Each entry decided against what the entries before it left.
        let mut verdicts: HashMap<String, (Verdict, u64)> = HashMap::new();
        let mut staged = Staged::new();
        let mut replies = Vec::new();
        for (seq, e, w) in &entries {
            let (old, at) = decided.get(&e.k).cloned().unwrap_or((None, 0));
            // Decided before: this very entry (by a leader cut short, whose
            // writes are finished here), or an earlier entry of the same
            // invocation that committed (this one is a duplicate).
            if let Some(v) = old
                .as_ref()
                .filter(|v| v.seq == *seq || v.refused.is_none())
            {
                if v.seq == *seq && v.refused.is_none() {
                    self.stage(*seq, w, &v.totals, cache, &mut staged);
                }
                replies.push((e.reply.clone(), v.clone()));
                continue;
            }
            // An earlier entry of the same invocation that another leader
            // decides, and whose verdict is not in yet: this one is
            // refused, unrecorded, and runs again (a duplicate, once the
            // other is decided).
            if let Some(&other) = leader.others.get(&e.k)
                && other < *seq
                && old.as_ref().is_none_or(|v| v.seq < other)
            {
                let refused = Conflict::Invocation { seq: other };
                replies.push((e.reply.clone(), Verdict::refused(e, *seq, refused.into())));
                continue;
            }
            let v = self.judge(*seq, e, w, &cache.0);
            if v.refused.is_none() {
                self.stage(*seq, w, &v.totals, cache, &mut staged);
            }
            decided.insert(e.k.clone(), (Some(v.clone()), at));
            // Of two entries of one invocation in a batch, the verdict on
            // the later is the one stored (the earlier was refused).
            verdicts.insert(e.k.clone(), (v.clone(), at));
            replies.push((e.reply.clone(), v));
        }
        // The verdicts first: once one is stored, whoever applies next
        // finishes its entry's writes rather than deciding it again.
        let stored = futures_util::future::try_join_all(verdicts.iter().map(|(k, (v, at))| {
            let body = Bytes::from(serde_json::to_vec(v).expect("JSON"));
            async move {
                self.put_if(&self.verdict_subject(k), Some(body), v.seq, *at)
                    .await
            }
        }))
        .await?;
        if stored.iter().any(Option::is_none) {
            cache.0.clear();
            return Ok(false);
        }
        // Then the entries and totals, each on the sequence it had before
        // the batch: one that moved since (written by another leader) is
        // read again and written only if it does not carry this version or
        // a later one.
        let written = futures_util::future::try_join_all(staged.into_iter().map(
            |(subject, (value, version))| {
                let before = cache.0.get(&subject).map_or(0, |c| c.seq);
                async move {
                    let seq = self
                        .put_if(&subject, value.clone(), version, before)
                        .await?;
                    if seq.is_none() {
                        self.write_over(&subject, value, version).await?;
                    }
                    Ok::<_, BrokerError>((subject, seq))
                }
            },
        ))
        .await?;
        for (subject, seq) in written {
            match seq {
                Some(seq) => {
                    if let Some(c) = cache.0.get_mut(&subject) {
                        c.seq = seq;
                    }
                }
                None => {
                    cache.0.remove(&subject);
                }
            }
        }
        for subject in foreign {
            cache.0.remove(&subject);
        }
        // The batch's writes are stored: the invoking hosts may publish.
        for (reply, v) in replies {
            let body = serde_json::to_vec(&v).expect("JSON");
            let _ = self.client.publish(reply, body.into()).await;
        }
        Ok(true)
    }

    /// The subjects deciding `e` reads, each with its partition: the
    /// entries it read and writes, and every partition's totals of the
    /// buckets it listed and writes.
    fn subjects<'a>(
        &'a self,
        e: &'a LogEntry,
        w: &'a Writes,
    ) -> impl Iterator<Item = (String, usize)> + 'a {
        let totals = move |b: &'a str| (0..PARTITIONS).map(move |n| (self.totals_subject(b, n), n));
        e.reads
            .iter()
            .map(|(b, k, _)| (self.entry_subject(b, k), partition(b, k)))
            .chain(
                w.writes
                    .iter()
                    .map(|(b, k, _)| (self.entry_subject(b, k), partition(b, k))),
            )
            .chain(
                w.writes
                    .iter()
                    .flat_map(move |(b, _, _)| totals(b.as_str())),
            )
            .chain(e.lists.iter().flat_map(move |(b, _)| totals(b.as_str())))
    }

    /// Put the writes of committed entry `seq` (and the buckets' `totals`
    /// after it) in the batch, and in the cache for the entries after it:
    /// each unless the subject carries version `seq` or a later one
    /// already (written by a leader cut short).
    fn stage(
        &self,
        seq: u64,
        w: &Writes,
        totals: &BTreeMap<String, Totals>,
        cache: &mut Cache,
        staged: &mut Staged,
    ) {
        let entries = w
            .writes
            .iter()
            .map(|(b, k, v)| (self.entry_subject(b, k), v.clone().map(Bytes::from)));
        let totals = totals.iter().map(|(key, t)| {
            let body = Bytes::from(serde_json::to_vec(t).expect("JSON"));
            (self.totals_subject_of(key), Some(body))
        });
        for (subject, value) in entries.chain(totals) {
            let Some(c) = cache.0.get_mut(&subject) else {
                continue; // never: read before the batch was decided
            };
            if c.stamp >= seq {
                continue;
            }
            c.version = if value.is_some() { seq } else { 0 };
            c.stamp = seq;
            c.value.clone_from(&value);
            staged.insert(subject, (value, seq));
        }
    }

    /// Write `value` with `version` on `subject` unless it carries that
    /// version or a later one, whatever its last sequence.
    async fn write_over(
        &self,
        subject: &str,
        value: Option<Bytes>,
        version: u64,
    ) -> Result<(), BrokerError> {
        loop {
            let c = self.current(subject).await?;
            if c.stamp >= version
                || self
                    .put_if(subject, value.clone(), version, c.seq)
                    .await?
                    .is_some()
            {
                return Ok(());
            }
        }
    }
    /// The verdict on `e`, from what was `seen`: refused, or committed
    /// with the buckets' totals after it (per partition).
    fn judge(
        &self,
        seq: u64,
        e: &LogEntry,
        writes: &Writes,
        seen: &HashMap<String, Current>,
    ) -> Verdict {
        let key = |b: &str, k: &str| &seen[&self.entry_subject(b, k)];
        let part = |b: &str, n: usize| &seen[&self.totals_subject(b, n)];
        // A bucket's version: the last commit that wrote it, in any
        // partition.
        let bucket_version = |b: &str| {
            (0..PARTITIONS)
                .map(|n| part(b, n).version)
                .max()
                .unwrap_or(0)
        };
        if let Err(c) = check(writes, |b, k| key(b, k).version, bucket_version) {
            return Verdict::refused(e, seq, c.into());
        }
        // The totals of the partitions written, after the writes.
        let mut changed = BTreeMap::<(String, usize), Totals>::new();
        for (b, k, v) in &writes.writes {
            let n = partition(b, k);
            let t = changed
                .entry((b.clone(), n))
                .or_insert_with(|| totals_of(part(b, n)));
            if let Some(old) = &key(b, k).value {
                t.keys -= 1;
                t.bytes -= (k.len() + old.len()) as i64;
            }
            if let Some(v) = v {
                t.keys += 1;
                t.bytes += (k.len() + v.len()) as i64;
            }
        }
        // Each bucket written, over all its partitions.
        let buckets: BTreeSet<&String> = changed.keys().map(|(b, _)| b).collect();
        for b in buckets {
            let t = (0..PARTITIONS).fold(Totals::default(), |sum, n| {
                let t = changed
                    .get(&(b.clone(), n))
                    .copied()
                    .unwrap_or_else(|| totals_of(part(b, n)));
                Totals {
                    keys: sum.keys + t.keys,
                    bytes: sum.bytes + t.bytes,
                }
            });
            for (what, held, limit) in [
                ("keys", t.keys, e.max_keys),
                ("bytes", t.bytes, e.max_bucket_bytes),
            ] {
                if held > 0 && held as u64 > limit {
                    let why =
                        format!("bucket {b} would hold {held} {what}, over its limit of {limit}");
                    return Verdict::refused(e, seq, Refused::Quota(why));
                }
            }
        }
        Verdict {
            k: e.k.clone(),
            seq,
            totals: changed
                .into_iter()
                .map(|((b, n), t)| (totals_key(&b, n), t))
                .collect(),
            refused: None,
        }
    }
}

/// `read(key)` for every key, [`READ_AHEAD`] at a time: each key with
/// what was read, or the first error.
async fn read_all<T, F>(
    keys: HashSet<String>,
    read: impl Fn(String) -> F,
) -> Result<Vec<(String, T)>, BrokerError>
where
    F: Future<Output = Result<T, BrokerError>>,
{
    let read = &read;
    futures_util::stream::iter(keys)
        .map(|k| async move {
            let v = read(k.clone()).await?;
            Ok((k, v))
        })
        .buffer_unordered(READ_AHEAD)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

fn decode_writes(e: &LogEntry) -> Result<Writes, BrokerError> {
    let writes = e
        .writes
        .iter()
        .map(|(b, k, v)| {
            let v = v
                .as_ref()
                .map(|v| base64::prelude::BASE64_STANDARD.decode(v))
                .transpose()
                .map_err(|e| nats(format!("a state commit's value: {e}")))?;
            Ok((b.clone(), k.clone(), v))
        })
        .collect::<Result<_, BrokerError>>()?;
    Ok(Writes {
        reads: e.reads.clone(),
        lists: e.lists.clone(),
        writes,
    })
}
