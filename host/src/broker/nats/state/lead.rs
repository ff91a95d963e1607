//! A host leading partitions of the app's step state (step 2 in `mod.rs`):
//! it reads the whole commit log in order and applies the entries of the
//! partitions it leads (`lease.rs` says which), in batches (`apply.rs`).
//!
//! Every host of the app that runs steps runs [`Kv::apply_loop`]. A
//! leader reads the log with an ordered consumer from the lowest applied
//! index of all partitions, so it sees every entry not yet applied, and
//! sorts each:
//! - an entry of partitions it leads only: decided and applied here, in
//!   batches, against what the entries before it left;
//! - an entry of partitions led elsewhere only: skipped, its invocation's
//!   key noted (below);
//! - an entry that crosses into partitions led elsewhere: a **barrier**.
//!   Each leader of one of its partitions applies everything before it,
//!   records its index just below it and stops there. The leader of its
//!   lowest partition (its home) waits until every other partition's
//!   index has reached it, decides it against the server's state (nothing
//!   else writes those partitions meanwhile), writes it in every
//!   partition and moves its own index past it; the others wait for that,
//!   drop what they cached and go on. Every leader reads the log in the
//!   same order and a wait at sequence `S` only waits for leaders reaching
//!   `S`, so no cycle of waits can form.
//!
//! Two entries of one invocation (an event delivered again, whose run
//! touched other keys) may fall in partitions of different leaders. An
//! entry whose invocation has an earlier entry elsewhere in the log, not
//! yet decided as far as its verdict says, is refused without a verdict
//! (`apply.rs`): its invocation runs again, and is a duplicate once the
//! first is decided. So two leaders never decide one invocation at once.
//!
//! **Nothing a leader holds in memory is needed by the next one**: its
//! cache is the server's state as of its indexes plus what it wrote, and a
//! leader that takes a partition over starts from the partition's index,
//! where an entry already decided has its verdict and its writes are
//! finished, and an entry not decided is decided again.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, push};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::super::nats;
use super::apply::{Cache, Deciding};
use super::lease::{ANNOUNCE_AFTER, Held, Index, LEASE_RENEW};
use super::part::{Mask, PARTITIONS, each, home};
use super::{Kv, LogEntry};
use crate::broker::BrokerError;

/// The most log entries applied in one batch, and their most bytes.
const MAX_BATCH: usize = 512;
const MAX_BATCH_BYTES: usize = 16 << 20;
/// How often a leader stopped at a barrier looks at the other
/// partitions' indexes if it hears of no index written.
const BARRIER_POLL: Duration = Duration::from_millis(100);

/// Why a leader stopped leading.
pub(super) enum Ended {
    /// Asked to stop.
    Stopped,
    /// Its leases were lost, or another leader wrote.
    Lost,
    /// It leads other partitions now: it starts again with them.
    Moved(Held),
}

/// A leader's state while it leads the partitions `mine`.
pub(super) struct Leader<'a> {
    kv: &'a Kv,
    mine: Mask,
    /// The applied index of each partition this leader leads.
    index: Vec<Index>,
    /// Invocations with an entry in the log that another leader decides:
    /// the latest such entry's sequence.
    others: HashMap<String, u64>,
    cache: Cache,
    /// Per partition: the last entry read that touches it, and the last
    /// such entry that another leader decides.
    touched: Vec<u64>,
    theirs: Vec<u64>,
    /// The last log sequence up to which this leader's partitions are
    /// applied (their indexes may be written behind it).
    at: u64,
    until: Instant,
    renew: Instant,
    /// When this host's applier started (`lease.rs`: [`ANNOUNCE_AFTER`]).
    since: Instant,
    stop: &'a mut watch::Receiver<bool>,
}

impl Kv {
    /// Take partitions, and apply them while this host holds them, until
    /// stopped.
    pub(super) async fn apply_loop(self: std::sync::Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut next = None;
        let since = Instant::now();
        loop {
            if *stop.borrow_and_update() {
                break;
            }
            let held = match next.take() {
                Some(h) => Ok(h),
                None => self.hold(since.elapsed() >= ANNOUNCE_AFTER).await,
            };
            match held {
                Ok(h) if h.mine != 0 => {
                    self.leading.store(h.mine, Ordering::Relaxed);
                    let r = self.lead(h, since, &mut stop).await;
                    self.leading.store(0, Ordering::Relaxed);
                    match r {
                        Ok(Ended::Stopped) => break,
                        Ok(Ended::Moved(h)) => {
                            next = Some(h);
                            continue;
                        }
                        Ok(Ended::Lost) => {
                            tracing::info!("other hosts apply this host's state partitions now");
                        }
                        Err(e) => tracing::warn!(
                            "applying state commits: {e}; starting again from the last one applied"
                        ),
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot take state partitions' leases ({e}); retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(LEASE_RENEW) => {}
                _ = stop.changed() => break,
            }
        }
        self.release().await;
    }

    /// Whether this host applies any of the app's state partitions now.
    pub(in crate::broker::nats) fn leading(&self) -> bool {
        self.leading.load(Ordering::Relaxed) != 0
    }

    /// How many of the app's state partitions this host applies now.
    pub(in crate::broker::nats) fn partitions_led(&self) -> u32 {
        self.leading.load(Ordering::Relaxed).count_ones()
    }

    /// Apply the log, from the lowest applied index on, for the
    /// partitions `held`, while their leases are renewed.
    async fn lead(
        &self,
        held: Held,
        since: Instant,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Ended, BrokerError> {
        // The applier of earlier versions: a durable consumer, gone now.
        let _ = self.log.delete_consumer("apply").await;
        let index = self.applied_all().await?;
        let from = match index.iter().map(|i| i.seq).collect::<Option<Vec<_>>>() {
            Some(seqs) => seqs.into_iter().min().unwrap_or(0) + 1,
            // A partition with no index yet: its entries already applied
            // are found decided, and their writes finished.
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
        let mut leader = Leader {
            kv: self,
            mine: held.mine,
            index,
            others: HashMap::new(),
            cache: Cache::default(),
            touched: vec![0; PARTITIONS],
            theirs: vec![0; PARTITIONS],
            at: from - 1,
            until: held.until,
            renew: Instant::now() + LEASE_RENEW,
            since,
            stop,
        };
        loop {
            if let Some(end) = leader.turn().await? {
                return Ok(end);
            }
            let first = tokio::select! {
                m = messages.next() => m,
                _ = tokio::time::sleep_until(leader.renew) => continue,
                _ = leader.stop.changed() => {
                    let _ = leader.record(leader.mine, leader.at).await;
                    return Ok(Ended::Stopped);
                }
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
            if let Some(end) = leader.take(entries).await? {
                return Ok(end);
            }
        }
    }
}

impl Leader<'_> {
    /// Renew the leases when it is time (and record how far this leader
    /// applied); `Some` when this leader must stop.
    async fn turn(&mut self) -> Result<Option<Ended>, BrokerError> {
        if Instant::now() >= self.renew {
            self.record(self.mine, self.at).await?;
            match self.kv.hold(self.since.elapsed() >= ANNOUNCE_AFTER).await {
                Ok(h) if h.mine == self.mine => self.until = h.until,
                Ok(h) => return Ok(Some(Ended::Moved(h))),
                // Kept while they last: renewing is tried again below.
                Err(e) => tracing::warn!("renewing state partitions' leases: {e}"),
            }
            // Entries of others' partitions below every index are decided.
            let index = self.kv.applied_all().await?;
            let low = index.iter().map(|i| i.seq).min().flatten().unwrap_or(0);
            self.others.retain(|_, seq| *seq > low);
            self.renew = Instant::now() + LEASE_RENEW;
        }
        if Instant::now() >= self.until {
            return Ok(Some(Ended::Lost));
        }
        Ok(None)
    }

    /// Move the indexes of partitions `m` (of this leader's) up to `seq`.
    async fn record(&mut self, m: Mask, seq: u64) -> Result<(), BrokerError> {
        let behind: Vec<usize> = each(m & self.mine)
            .filter(|&n| self.index[n].seq.is_none_or(|a| a < seq))
            .collect();
        let kv = self.kv;
        let index = &self.index;
        let written = futures_util::future::try_join_all(behind.iter().map(|&n| async move {
            Ok::<_, BrokerError>((n, kv.put_applied(n, seq, index[n]).await?))
        }))
        .await?;
        for (n, w) in written {
            match w {
                Some(i) => self.index[n] = i,
                None => {
                    return Err(nats(format!(
                        "another host moved state partition {n}'s index"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Sort a batch of log entries (`None`: unreadable, skipped) and apply
    /// what is this leader's; `Some` when it must stop.
    async fn take(
        &mut self,
        entries: Vec<(u64, Option<LogEntry>)>,
    ) -> Result<Option<Ended>, BrokerError> {
        let Some(last) = entries.last().map(|(seq, _)| *seq) else {
            return Ok(None);
        };
        let mut pending = Vec::new();
        let mut crossing = false;
        for (seq, e) in entries {
            let Some(e) = e else { continue };
            let m = e.partitions();
            let ours = m & self.mine;
            let homed = self.mine & 1 << home(m) != 0;
            if ours == 0 || (m & !self.mine != 0 && !homed) {
                self.others.insert(e.k.clone(), seq);
            }
            // Applied already (read again from a lower partition's index).
            let applied = each(ours).all(|n| self.index[n].seq.is_some_and(|a| seq <= a));
            if ours != 0 && !applied && m & !self.mine != 0 {
                // It crosses into partitions led elsewhere: a barrier.
                if !self.apply(std::mem::take(&mut pending)).await? {
                    return Ok(Some(Ended::Lost));
                }
                let end = if homed {
                    self.home_of(seq, m).await?
                } else {
                    self.stop_at(seq, m).await?
                };
                if let Some(end) = end {
                    return Ok(Some(end));
                }
                crossing |= homed;
            }
            self.note(seq, m, ours != 0 && (m & !self.mine == 0 || homed));
            if ours != 0 && !applied && (m & !self.mine == 0 || homed) {
                pending.push((seq, e));
            }
        }
        if !self.apply(pending).await? {
            return Ok(Some(Ended::Lost));
        }
        self.at = last;
        // Leaders stopped at an entry this one decided go on once its
        // index passes it; other indexes are written at the next turn (a
        // leader that takes a partition over reads at most a turn's
        // entries again).
        if crossing {
            self.publish(last).await?;
        }
        Ok(None)
    }

    /// Apply `pending` (entries this leader decides, in log order).
    async fn apply(&mut self, pending: Vec<(u64, LogEntry)>) -> Result<bool, BrokerError> {
        let deciding = Deciding {
            mine: self.mine,
            others: &self.others,
            cache: &mut self.cache,
        };
        self.kv.apply_batch(pending, deciding).await
    }

    /// Entry `seq`, touching partitions `m`, was read: whether this leader
    /// decides it.
    fn note(&mut self, seq: u64, m: Mask, decides: bool) {
        for n in each(m) {
            self.touched[n] = seq;
            if !decides {
                self.theirs[n] = seq;
            }
        }
    }

    /// Record every partition of this leader's with entries since its
    /// index as applied up to `seq` (all its entries up to `seq` are).
    async fn publish(&mut self, seq: u64) -> Result<(), BrokerError> {
        let behind = each(self.mine)
            .filter(|&n| self.index[n].seq.unwrap_or(0) < self.touched[n])
            .fold(0, |m, n| m | 1 << n);
        self.record(behind, seq).await
    }

    /// Entry `seq` crosses into partitions led elsewhere, and its lowest
    /// partition is this leader's: wait until every other partition of it
    /// has applied what came before it that this leader does not decide
    /// (nothing else writes them then, until this leader's index passes
    /// it).
    async fn home_of(&mut self, seq: u64, m: Mask) -> Result<Option<Ended>, BrokerError> {
        let need: Vec<(usize, u64)> = each(m & !self.mine).map(|n| (n, self.theirs[n])).collect();
        self.wait_for(seq, need).await
    }

    /// Entry `seq` crosses into this leader's partitions from another
    /// leader's, the one that decides it: stop until that one's index
    /// passes it, then forget what was cached (it wrote here).
    async fn stop_at(&mut self, seq: u64, m: Mask) -> Result<Option<Ended>, BrokerError> {
        if let Some(end) = self.wait_for(seq, vec![(home(m), seq)]).await? {
            return Ok(Some(end));
        }
        self.cache.clear();
        self.at = seq;
        Ok(None)
    }

    /// Stopped before entry `seq` (everything before it applied): wait
    /// until each partition of `need` has its index at its sequence,
    /// making this leader's progress known first if it must wait.
    async fn wait_for(
        &mut self,
        seq: u64,
        need: Vec<(usize, u64)>,
    ) -> Result<Option<Ended>, BrokerError> {
        let mut progress = self.kv.progress.subscribe();
        let mut polled = Instant::now();
        let mut published = false;
        loop {
            let known = progress.borrow_and_update().clone();
            if need.iter().all(|&(n, s)| known[n] >= s) {
                return Ok(None);
            }
            if !published {
                // The other leaders may be waiting for this one.
                self.publish(seq - 1).await?;
                published = true;
            }
            if polled.elapsed() >= BARRIER_POLL {
                // Word of an index written can be lost: read them.
                let kv = self.kv;
                futures_util::future::try_join_all(need.iter().map(|&(n, _)| kv.applied(n)))
                    .await?;
                polled = Instant::now();
                continue;
            }
            if let Some(end) = self.turn().await? {
                return Ok(Some(end));
            }
            tokio::select! {
                _ = progress.changed() => {}
                _ = tokio::time::sleep(BARRIER_POLL) => {}
                _ = self.stop.changed() => return Ok(Some(Ended::Stopped)),
            }
        }
    }
}
