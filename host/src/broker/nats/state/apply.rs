//! The applier: takes the app's log entries one at a time, in order,
//! decides each (a duplicate, refused, or committed) and writes what a
//! committed one changes (step 2 in `mod.rs`). Every host of the app that
//! runs steps runs one; the log's consumer hands each entry to one of them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    AckKind,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
};
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;

use super::super::nats;
use super::{APPLY_WAIT, Current, Kv, LogEntry, Totals, Verdict, totals_of};
use crate::broker::BrokerError;
use crate::kv::{Refused, Writes, check};

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

    async fn apply_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            if *stop.borrow_and_update() {
                return;
            }
            let consumer: PullConsumer = match self
                .log
                .get_or_create_consumer(
                    "apply",
                    pull::Config {
                        durable_name: Some("apply".into()),
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: APPLY_WAIT,
                        deliver_policy: DeliverPolicy::All,
                        max_ack_pending: 1,
                        ..Default::default()
                    },
                )
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("cannot take state commits from NATS ({e}); retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            // The consumer hands out one entry at a time whatever the batch
            // (`max_ack_pending`); the batch only keeps a pull request
            // open. At a batch of one, async-nats can miss that its request
            // was answered and wait out the request's expiry with entries
            // waiting (it did, for 35 s at a time under load).
            let messages = consumer
                .stream()
                .max_messages_per_batch(8)
                .expires(super::super::PULL_EXPIRES)
                .messages()
                .await;
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("cannot take state commits from NATS ({e}); retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    m = messages.next() => m,
                    _ = stop.changed() => return,
                };
                let m = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::debug!("NATS state commits: {e}");
                        continue;
                    }
                    None => break,
                };
                let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                match serde_json::from_slice::<LogEntry>(&m.payload) {
                    Err(e) => {
                        tracing::error!("state commit #{seq} is unreadable, skipped: {e}");
                        let _ = m.ack().await;
                    }
                    Ok(entry) => match self.apply(seq, &entry).await {
                        Ok(v) => {
                            // Not waited for: a lost ack only has the entry
                            // come again, and it is decided already.
                            if let Err(e) = m.ack().await {
                                tracing::warn!("acking state commit #{seq}: {e}");
                            }
                            let body = serde_json::to_vec(&v).expect("JSON");
                            let _ = self.client.publish(entry.reply, body.into()).await;
                        }
                        Err(e) => {
                            // Taken again shortly (by this host or another).
                            tracing::warn!("applying state commit #{seq}: {e}");
                            let again = AckKind::Nak(Some(Duration::from_millis(200)));
                            let _ = m.ack_with(again).await;
                        }
                    },
                }
            }
        }
    }

    /// Decide log entry `seq` and, committed, write it (step 2 above).
    ///
    /// Four round trips to the server when nothing races: everything the
    /// decision needs is read at once (the verdict, the entries read and
    /// written, the buckets' totals), the verdict is written, then the
    /// entries and totals, each a compare-and-set on the sequence read in
    /// the first round; then the log entry is acked (by the caller).
    async fn apply(&self, seq: u64, e: &LogEntry) -> Result<Verdict, BrokerError> {
        let writes = decode_writes(e)?;
        loop {
            let (verdict, seen) =
                futures_util::future::try_join(self.verdict(&e.k), self.seen(e, &writes)).await?;
            let (old, verdict_seq) = verdict;
            // Decided before: this very entry (an applier cut short, whose
            // writes are finished here), or an earlier entry of the same
            // invocation that committed (this one is a duplicate).
            if let Some(v) = old.filter(|v| v.seq == seq || v.refused.is_none()) {
                if v.seq == seq && v.refused.is_none() {
                    self.finish(seq, &writes, &v.totals, &Seen::new()).await?;
                }
                return Ok(v);
            }
            let v = self.judge(seq, e, &writes, &seen);
            let body = Bytes::from(serde_json::to_vec(&v).expect("JSON"));
            if !self
                .put_if(&self.verdict_subject(&e.k), Some(body), seq, verdict_seq)
                .await?
            {
                continue; // another applier got there: look again
            }
            if v.refused.is_none() {
                self.finish(seq, &writes, &v.totals, &seen).await?;
            }
            return Ok(v);
        }
    }

    /// The last message of every subject deciding `e` needs, read at once:
    /// the entries it read and writes, and the totals of the buckets it
    /// listed and writes.
    async fn seen(&self, e: &LogEntry, writes: &Writes) -> Result<Seen, BrokerError> {
        let mut subjects: Vec<String> = e
            .reads
            .iter()
            .map(|(b, k, _)| self.entry_subject(b, k))
            .chain(
                writes
                    .writes
                    .iter()
                    .flat_map(|(b, k, _)| [self.entry_subject(b, k), self.totals_subject(b)]),
            )
            .chain(e.lists.iter().map(|(b, _)| self.totals_subject(b)))
            .collect();
        subjects.sort();
        subjects.dedup();
        let read =
            futures_util::future::try_join_all(subjects.iter().map(|s| self.current(s))).await?;
        Ok(subjects.into_iter().zip(read).collect())
    }

    /// The verdict on `e`, from what was `seen`: refused, or committed
    /// with the buckets' totals after it.
    fn judge(&self, seq: u64, e: &LogEntry, writes: &Writes, seen: &Seen) -> Verdict {
        let refused = |r: Refused| Verdict {
            k: e.k.clone(),
            seq,
            totals: BTreeMap::new(),
            refused: Some(r),
        };
        let key = |b: &str, k: &str| &seen[&self.entry_subject(b, k)];
        let bucket = |b: &str| &seen[&self.totals_subject(b)];
        if let Err(c) = check(writes, |b, k| key(b, k).version, |b| bucket(b).version) {
            return refused(c.into());
        }
        // The buckets' totals after the writes.
        let mut totals = BTreeMap::<String, Totals>::new();
        for (b, k, v) in &writes.writes {
            let t = totals
                .entry(b.clone())
                .or_insert_with(|| totals_of(bucket(b)));
            if let Some(old) = &key(b, k).value {
                t.keys -= 1;
                t.bytes -= (k.len() + old.len()) as i64;
            }
            if let Some(v) = v {
                t.keys += 1;
                t.bytes += (k.len() + v.len()) as i64;
            }
        }
        for (b, t) in &totals {
            if t.keys as u64 > e.max_keys {
                return refused(Refused::Quota(format!(
                    "bucket {b} would hold {} keys, over its limit of {}",
                    t.keys, e.max_keys
                )));
            }
            if t.bytes as u64 > e.max_bucket_bytes {
                return refused(Refused::Quota(format!(
                    "bucket {b} would hold {} bytes, over its limit of {}",
                    t.bytes, e.max_bucket_bytes
                )));
            }
        }
        Verdict {
            k: e.k.clone(),
            seq,
            totals,
            refused: None,
        }
    }

    /// Write the entries and totals of committed log entry `seq`, each
    /// unless already written (by an applier cut short before): what
    /// carries version `seq` or later is. A subject in `seen` is first
    /// written on the sequence seen there; one that moved since is read
    /// again.
    async fn finish(
        &self,
        seq: u64,
        writes: &Writes,
        totals: &BTreeMap<String, Totals>,
        seen: &Seen,
    ) -> Result<(), BrokerError> {
        let mut todo: Vec<(String, Option<Bytes>)> = writes
            .writes
            .iter()
            .map(|(b, k, v)| (self.entry_subject(b, k), v.clone().map(Bytes::from)))
            .collect();
        for (b, t) in totals {
            todo.push((
                self.totals_subject(b),
                Some(serde_json::to_vec(t).expect("JSON").into()),
            ));
        }
        let done = futures_util::future::try_join_all(todo.iter().map(|(subject, value)| async {
            if let Some(c) = seen.get(subject)
                && self.put_if(subject, value.clone(), seq, c.seq).await?
            {
                return Ok(());
            }
            loop {
                let c = self.current(subject).await?;
                if c.stamp >= seq {
                    return Ok::<_, BrokerError>(());
                }
                if self.put_if(subject, value.clone(), seq, c.seq).await? {
                    return Ok(());
                }
            }
        }));
        done.await.map(|_| ())
    }
}

/// Subjects' last messages, read before deciding a log entry.
type Seen = HashMap<String, Current>;

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
