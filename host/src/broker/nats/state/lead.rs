//! Who applies the app's state commits: one host at a time, the holder of
//! the applier's lease, reading the commit log in order from the last
//! entry applied (step 2 in `mod.rs`; the batch itself is `apply.rs`).
//!
//! Every host of the app that runs steps runs [`Kv::apply_loop`]: it tries
//! for the lease (`$KV.B._lease.0`, taken and renewed by compare-and-set
//! on the subject's last sequence) every [`LEASE_RENEW`]; the holder reads
//! the log with an ordered consumer from the applied index
//! (`$KV.B._ap.0`: the last log sequence whose writes are all stored),
//! takes what is waiting in batches and applies them. A holder that cannot
//! renew stops applying [`LEASE_MARGIN`] before its lease could run out;
//! a host that stops releases the lease, so another takes over at once
//! rather than after [`LEASE_TTL`].
//!
//! **Nothing a leader holds in memory is needed by the next one**: its
//! cache of subjects is the server's state as of its applied index plus
//! what it wrote itself, and a leader that takes over starts from the
//! applied index, where an entry decided by the last leader has its
//! verdict and its writes are finished, and an entry not decided is
//! decided again, the same way (a decision depends only on the state the
//! entries before it left, and on the entry).

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, push};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use super::super::nats;
use super::apply::Cache;
use super::{Kv, LogEntry};
use crate::broker::BrokerError;

/// How long the applier's lease lasts unless renewed.
const LEASE_TTL: Duration = Duration::from_secs(6);
/// How often the holder renews it, and the other hosts try for it.
const LEASE_RENEW: Duration = Duration::from_secs(2);
/// How long before its lease could run out a holder that could not renew
/// stops applying (the hosts' clocks may differ by this much).
const LEASE_MARGIN: Duration = Duration::from_secs(2);
/// The most log entries applied in one batch, and their most bytes.
const MAX_BATCH: usize = 512;
const MAX_BATCH_BYTES: usize = 16 << 20;

/// The applier's lease, as stored.
#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    holder: String,
    until_ms: u64,
}

/// The applied index, as stored.
#[derive(Debug, Serialize, Deserialize)]
struct Applied {
    seq: u64,
}

/// Why a leader stopped leading.
enum Ended {
    /// Asked to stop.
    Stopped,
    /// Its lease was lost, or another leader wrote: the other host applies.
    Lost,
}

impl Kv {
    fn lease_subject(&self) -> String {
        format!("{}._lease.0", self.prefix)
    }

    fn applied_subject(&self) -> String {
        format!("{}._ap.0", self.prefix)
    }

    /// The last log sequence applied (`None`: no entry yet, or a log
    /// applied before there was an index), and the index's own sequence.
    pub(super) async fn applied(&self) -> Result<(Option<u64>, u64), BrokerError> {
        let c = self.current(&self.applied_subject()).await?;
        let applied = c
            .value
            .as_ref()
            .and_then(|v| serde_json::from_slice::<Applied>(v).ok())
            .map(|a| a.seq);
        Ok((applied, c.seq))
    }

    /// Record `seq` as the last log sequence applied, if the index's last
    /// sequence is still `index`; the index's new sequence (`None`: another
    /// leader wrote it).
    pub(super) async fn put_applied(
        &self,
        seq: u64,
        index: u64,
    ) -> Result<Option<u64>, BrokerError> {
        let body = Bytes::from(serde_json::to_vec(&Applied { seq }).expect("JSON"));
        self.put_if(&self.applied_subject(), Some(body), 0, index)
            .await
    }

    /// Take or renew the applier's lease: until when this host may apply
    /// (`None`: another host holds it).
    async fn hold(&self) -> Result<Option<Instant>, BrokerError> {
        let subject = self.lease_subject();
        let c = self.current(&subject).await?;
        let now = crate::clock::now_ms();
        let held = c
            .value
            .as_ref()
            .and_then(|v| serde_json::from_slice::<Lease>(v).ok());
        if let Some(l) = held
            && l.holder != self.id
            && l.until_ms >= now
        {
            return Ok(None);
        }
        let asked = Instant::now();
        let lease = Lease {
            holder: self.id.clone(),
            until_ms: now + LEASE_TTL.as_millis() as u64,
        };
        let body = Bytes::from(serde_json::to_vec(&lease).expect("JSON"));
        Ok(self
            .put_if(&subject, Some(body), 0, c.seq)
            .await?
            .map(|_| asked + LEASE_TTL - LEASE_MARGIN))
    }

    /// Let the lease go, if it is this host's: the next host takes it
    /// without waiting for it to run out.
    async fn release(&self) {
        let subject = self.lease_subject();
        let Ok(c) = self.current(&subject).await else {
            return;
        };
        let ours = c
            .value
            .as_ref()
            .and_then(|v| serde_json::from_slice::<Lease>(v).ok())
            .is_some_and(|l| l.holder == self.id);
        if ours {
            let lease = Lease {
                holder: self.id.clone(),
                until_ms: 0,
            };
            let body = Bytes::from(serde_json::to_vec(&lease).expect("JSON"));
            let _ = self.put_if(&subject, Some(body), 0, c.seq).await;
        }
    }

    /// Try for the lease, and apply while it is this host's, until stopped.
    pub(super) async fn apply_loop(self: std::sync::Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            if *stop.borrow_and_update() {
                break;
            }
            match self.hold().await {
                Ok(Some(until)) => match self.leading_while(self.lead(until, &mut stop)).await {
                    Ok(Ended::Stopped) => break,
                    Ok(Ended::Lost) => {
                        tracing::info!("another host applies the state commits now");
                    }
                    Err(e) => tracing::warn!(
                        "applying state commits: {e}; starting again from the last one applied"
                    ),
                },
                Ok(None) => {}
                Err(e) => tracing::warn!("cannot take the state applier's lease ({e}); retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(LEASE_RENEW) => {}
                _ = stop.changed() => break,
            }
        }
        self.release().await;
    }

    /// Whether this host applies the app's state commits now.
    pub(in crate::broker::nats) fn leading(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    /// `f`, with [`Self::leading`] true while it runs.
    async fn leading_while<T>(&self, f: impl Future<Output = T>) -> T {
        self.leading.store(true, Ordering::Relaxed);
        let r = f.await;
        self.leading.store(false, Ordering::Relaxed);
        r
    }

    /// Apply the log from the applied index on, in batches, while the
    /// lease (held until `until`) is renewed.
    async fn lead(
        &self,
        mut until: Instant,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Ended, BrokerError> {
        // The applier of earlier versions: a durable consumer, gone now.
        let _ = self.log.delete_consumer("apply").await;
        let (applied, mut index) = self.applied().await?;
        let from = match applied {
            Some(seq) => seq + 1,
            // Entries already applied are found decided, and their writes
            // finished: reading them again changes nothing.
            None => {
                let info = self.log.get_info().await.map_err(nats)?;
                info.state.first_sequence.max(1)
            }
        };
        let consumer = self
            .log
            .create_consumer(push::OrderedConfig {
                deliver_subject: format!("_INBOX.troupe.kvlog.{}", uuid::Uuid::new_v4().simple()),
                filter_subject: self.log_subject.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| nats(format!("reading the state commit log: {e}")))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| nats(format!("reading the state commit log: {e}")))?;
        let mut cache = Cache::default();
        let mut renew = Instant::now() + LEASE_RENEW;
        loop {
            if Instant::now() >= renew {
                match self.hold().await {
                    Ok(Some(u)) => until = u,
                    Ok(None) => return Ok(Ended::Lost),
                    // Kept while it lasts: renewing is tried again below.
                    Err(e) => tracing::warn!("renewing the state applier's lease: {e}"),
                }
                renew = Instant::now() + LEASE_RENEW;
            }
            if Instant::now() >= until {
                return Ok(Ended::Lost);
            }
            let first = tokio::select! {
                m = messages.next() => m,
                _ = tokio::time::sleep_until(renew) => continue,
                _ = stop.changed() => return Ok(Ended::Stopped),
            };
            let mut batch = vec![match first {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(nats(format!("reading the state commit log: {e}"))),
                None => return Err(nats("the state commit log's reader ended")),
            }];
            let mut bytes = batch[0].payload.len();
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match messages.next().now_or_never() {
                    Some(Some(Ok(m))) => {
                        bytes += m.payload.len();
                        batch.push(m);
                    }
                    Some(Some(Err(e))) => {
                        return Err(nats(format!("reading the state commit log: {e}")));
                    }
                    _ => break,
                }
            }
            let entries: Vec<(u64, Option<LogEntry>)> = batch
                .iter()
                .map(|m| {
                    let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                    let entry = serde_json::from_slice::<LogEntry>(&m.payload)
                        .inspect_err(|e| {
                            tracing::error!("state commit #{seq} is unreadable, skipped: {e}")
                        })
                        .ok();
                    (seq, entry)
                })
                .collect();
            if Instant::now() >= until {
                return Ok(Ended::Lost);
            }
            match self.apply_batch(entries, &mut cache, index).await? {
                Some(i) => index = i,
                None => return Ok(Ended::Lost),
            }
        }
    }
}
