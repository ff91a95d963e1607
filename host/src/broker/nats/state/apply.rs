//! The applier: takes the app's log entries one at a time, in order,
//! decides each (a duplicate, refused, or committed) and writes what a
//! committed one changes (step 2 in `mod.rs`). Every host of the app that
//! runs steps runs one; the log's consumer hands each entry to one of them.

use std::collections::BTreeMap;
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
use super::{APPLY_WAIT, Current, Kv, LogEntry, Totals, Verdict};
use crate::broker::BrokerError;
use crate::kv::{Refused, Version, Writes, check};

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
            let mut messages = match consumer.stream().max_messages_per_batch(1).messages().await {
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
                            if let Err(e) = m.double_ack().await {
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
    async fn apply(&self, seq: u64, e: &LogEntry) -> Result<Verdict, BrokerError> {
        let writes = decode_writes(e)?;
        loop {
            let (old, verdict_seq) = self.verdict(&e.k).await?;
            // Decided before: this very entry (an applier cut short, whose
            // writes are finished here), or an earlier entry of the same
            // invocation that committed (this one is a duplicate).
            if let Some(v) = old.filter(|v| v.seq == seq || v.refused.is_none()) {
                if v.seq == seq && v.refused.is_none() {
                    self.finish(seq, &writes, &v.totals).await?;
                }
                return Ok(v);
            }
            let v = self.judge(seq, e, &writes).await?;
            let body = Bytes::from(serde_json::to_vec(&v).expect("JSON"));
            if !self
                .put_if(&self.verdict_subject(&e.k), Some(body), seq, verdict_seq)
                .await?
            {
                continue; // another applier got there: look again
            }
            if v.refused.is_none() {
                self.finish(seq, &writes, &v.totals).await?;
            }
            return Ok(v);
        }
    }

    /// The verdict on `e`: refused, or committed with the buckets' totals
    /// after it.
    async fn judge(&self, seq: u64, e: &LogEntry, writes: &Writes) -> Result<Verdict, BrokerError> {
        let refused = |r: Refused| Verdict {
            k: e.k.clone(),
            seq,
            totals: BTreeMap::new(),
            refused: Some(r),
        };
        // What the check needs, read at once.
        let reads = futures_util::future::try_join_all(
            e.reads.iter().map(|(b, k, _)| self.current_entry(b, k)),
        );
        let lists = futures_util::future::try_join_all(e.lists.iter().map(|(b, _)| self.totals(b)));
        let (reads, lists) = futures_util::future::try_join(reads, lists).await?;
        let keys: BTreeMap<(&str, &str), Version> = e
            .reads
            .iter()
            .zip(&reads)
            .map(|((b, k, _), c)| ((b.as_str(), k.as_str()), c.version))
            .collect();
        let buckets: BTreeMap<&str, Version> = e
            .lists
            .iter()
            .zip(&lists)
            .map(|((b, _), (_, v))| (b.as_str(), *v))
            .collect();
        if let Err(c) = check(writes, |b, k| keys[&(b, k)], |b| buckets[b]) {
            return Ok(refused(c.into()));
        }
        // The buckets' totals after the writes.
        let mut totals = BTreeMap::<String, Totals>::new();
        for (b, _, _) in &writes.writes {
            if !totals.contains_key(b) {
                totals.insert(b.clone(), self.totals(b).await?.0);
            }
        }
        let olds = futures_util::future::try_join_all(
            writes
                .writes
                .iter()
                .map(|(b, k, _)| self.current_entry(b, k)),
        )
        .await?;
        for ((b, k, v), old) in writes.writes.iter().zip(olds) {
            let t = totals.get_mut(b).expect("inserted above");
            if let Some(old) = old.value {
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
                return Ok(refused(Refused::Quota(format!(
                    "bucket {b} would hold {} keys, over its limit of {}",
                    t.keys, e.max_keys
                ))));
            }
            if t.bytes as u64 > e.max_bucket_bytes {
                return Ok(refused(Refused::Quota(format!(
                    "bucket {b} would hold {} bytes, over its limit of {}",
                    t.bytes, e.max_bucket_bytes
                ))));
            }
        }
        Ok(Verdict {
            k: e.k.clone(),
            seq,
            totals,
            refused: None,
        })
    }

    async fn current_entry(&self, bucket: &str, key: &str) -> Result<Current, BrokerError> {
        self.current(&self.entry_subject(bucket, key)).await
    }

    /// Write the entries and totals of committed log entry `seq`, each
    /// unless already written (by an applier cut short before): what
    /// carries version `seq` or later is.
    async fn finish(
        &self,
        seq: u64,
        writes: &Writes,
        totals: &BTreeMap<String, Totals>,
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
