//! Retention on NATS: what `[retention]` lets go, purged by the hosts.
//!
//! Stream limits (`max_age`, `max_bytes`) would drop a message whatever
//! waits for it, so nothing here is left to them: each host that runs
//! steps purges, every [`tick`], only below what every consumer has
//! settled.
//!
//! - **Events** (`NS_EVENTS`, shared by the namespace's apps): below the
//!   *floor*, the lowest sequence any durable consumer of any app has not
//!   settled, and stored longer ago than the longest `events` any of the
//!   namespace's apps asks (each app records its `[retention]` in its
//!   state bucket, `app/retention`). Past the largest `max_store` any app
//!   asks, settled events go whatever their age, oldest first.
//! - **Dead letters** of this app (`NS.dlq.APP.>`): older than
//!   `dead_letters`. A dead letter's event is kept beside it (`dlq.rs`),
//!   never by reference to the events stream, so it stays exactly as long.
//! - **Ended runs**: a commit that ends a run writes a marker
//!   `_ended.KEY` beside its rows in the state bucket; markers older than
//!   `runs` are taken oldest first, the rows they name purged, then the
//!   markers. A run that has not ended has no marker.
//! - **Step state's log and verdicts** (`state/`): kept while the event
//!   they belong to could be delivered again, and for `events` at least.
//!
//! What was pruned is recorded in `app/pruned` for [`Inner::horizon`], so
//! a host that did not prune (or the CLI) says so too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::PRUNED_KEY;
use super::pulling::first_from;
use super::{Inner, nats};
use crate::broker::retention::Retention;
use crate::broker::{BrokerError, Horizon};

/// The app's `[retention]`, as other apps of the namespace read it.
const RETENTION_KEY: &str = "app/retention";
/// Ended runs' markers taken per tick.
const RUNS_BATCH: usize = 1000;
/// Purges of ended runs' rows in flight at once.
const PURGES_IN_FLIGHT: usize = 32;

/// How often a host prunes: a quarter of the shortest age, within 1-30 s.
pub(super) fn tick(r: &Retention) -> Duration {
    (r.events.min(r.runs).min(r.dead_letters) / 4)
        .clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// What an app asks of the namespace's shared events stream.
#[derive(Debug, Serialize, Deserialize)]
struct Asked {
    events_ms: u64,
    max_store: u64,
}

/// What has been pruned, for [`Horizon`].
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Pruned {
    runs_before: Option<String>,
    dead_letters_before: Option<String>,
    capped: bool,
}

/// What retention pruned since the host started, and the namespace's
/// streams' bytes after the last pass (`/metrics`, `/readyz`).
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) events: AtomicU64,
    pub(super) dead_letters: AtomicU64,
    pub(super) records: AtomicU64,
    /// 0 until a pass has measured it.
    pub(super) store_bytes: AtomicU64,
}

fn rfc3339(t: OffsetDateTime) -> String {
    crate::clock::rfc3339((t.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
}

/// The lowest sequence of `stream` a durable consumer (with acks) has not
/// settled, given `last`, the stream's last sequence read before the
/// consumers: `last + 1` when all have settled everything.
pub(super) fn floor(consumers: &[consumer::Info], last: u64) -> u64 {
    consumers
        .iter()
        .filter(|c| c.config.ack_policy != AckPolicy::None)
        .map(|c| {
            if c.num_ack_pending > 0 {
                c.ack_floor.stream_sequence + 1
            } else if c.num_pending > 0 {
                c.delivered.stream_sequence + 1
            } else {
                last + 1
            }
        })
        .fold(last + 1, u64::min)
}

/// Purge the messages of `stream` on `filter` (all when empty) below
/// sequence `seq`; how many went. (The server reads a `seq` of 0 or 1 as
/// no bound at all, and would purge every message on `filter`.)
pub(super) async fn purge_below(
    stream: &async_nats::jetstream::stream::Stream,
    filter: &str,
    seq: u64,
) -> Result<u64, BrokerError> {
    if seq <= 1 {
        return Ok(0);
    }
    let purge = stream.purge().sequence(seq);
    let r = if filter.is_empty() {
        purge.await
    } else {
        purge.filter(filter).await
    };
    Ok(r.map_err(nats)?.purged)
}

impl Inner {
    /// Record what this app asks of the namespace, and start pruning
    /// (once per broker).
    pub(super) async fn start_pruning(self: &std::sync::Arc<Self>) -> Result<(), BrokerError> {
        if self.pruning.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let asked = Asked {
            events_ms: self.retention.events.as_millis() as u64,
            max_store: self.retention.max_store,
        };
        self.state
            .put(
                RETENTION_KEY,
                serde_json::to_vec(&asked).expect("JSON").into(),
            )
            .await
            .map_err(|e| nats(format!("recording the app's retention: {e}")))?;
        let me = std::sync::Arc::downgrade(self);
        let mut closed = self.closed.subscribe();
        let every = tick(&self.retention);
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = closed.changed() => return,
                }
                let Some(i) = me.upgrade() else { return };
                match i.prune().await {
                    Ok(()) => warned = false,
                    // Pruning waits for the server like everything else;
                    // one warning per outage.
                    Err(e) if !warned => {
                        tracing::warn!("retention: cannot prune ({e}); trying again");
                        warned = true;
                    }
                    Err(e) => tracing::debug!("retention: cannot prune ({e})"),
                }
            }
        });
        Ok(())
    }

    /// One pass: events, dead letters, ended runs, step state.
    async fn prune(&self) -> Result<(), BrokerError> {
        let now = OffsetDateTime::now_utc();
        let mut pruned = self.pruned_record().await?;
        let before = (
            pruned.runs_before.clone(),
            pruned.dead_letters_before.clone(),
        );
        let (floor, capped) = self.prune_events(now).await?;
        pruned.capped |= capped;
        let dl_cutoff = now - self.retention.dead_letters;
        if self.prune_dead_letters(dl_cutoff).await? > 0 {
            pruned.dead_letters_before = Some(rfc3339(dl_cutoff));
        }
        if let Some(t) = self.prune_runs(now - self.retention.runs).await? {
            pruned.runs_before = Some(rfc3339(t));
        }
        // Step state's verdicts: while their event could come back (it
        // is at or above the floor), and for `events` at least.
        let floor_time = match first_from(
            &self.events,
            "",
            DeliverPolicy::ByStartSequence {
                start_sequence: floor,
            },
        )
        .await?
        {
            Some((_, t)) => t,
            None => now,
        };
        self.kv
            .prune((now - self.retention.events).min(floor_time))
            .await?;
        if capped
            || (
                pruned.runs_before.clone(),
                pruned.dead_letters_before.clone(),
            ) != before
        {
            self.state
                .put(
                    PRUNED_KEY,
                    serde_json::to_vec(&pruned).expect("JSON").into(),
                )
                .await
                .map_err(nats)?;
        }
        self.pruned
            .store_bytes
            .store(self.namespace_bytes().await?, Ordering::Relaxed);
        Ok(())
    }

    /// What the namespace's streams hold, in bytes: the events and dead
    /// letters every app of the namespace shares, and each app's buckets
    /// and logs.
    async fn namespace_bytes(&self) -> Result<u64, BrokerError> {
        let mut bytes = 0;
        for n in namespace_streams(&self.js, &self.names.ns).await? {
            if let Ok(mut s) = self.js.get_stream(&n).await
                && let Ok(i) = s.info().await
            {
                bytes += i.state.bytes;
            }
        }
        Ok(bytes)
    }

    async fn pruned_record(&self) -> Result<Pruned, BrokerError> {
        Ok(self
            .state
            .get(PRUNED_KEY)
            .await
            .map_err(nats)?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default())
    }

    /// The longest `events` and the largest `max_store` the namespace's
    /// apps ask.
    async fn namespace_asks(&self) -> Result<(Duration, u64), BrokerError> {
        let mut events = self.retention.events;
        let mut max_store = self.retention.max_store;
        let prefix = format!("KV_{}_", self.names.ns);
        let mut names = self.js.stream_names();
        while let Some(n) = names.next().await {
            let n = n.map_err(nats)?;
            let Some(bucket) = n
                .strip_prefix("KV_")
                .filter(|_| n.starts_with(&prefix) && n.ends_with("_state"))
            else {
                continue;
            };
            let Ok(s) = self.js.get_stream(&n).await else {
                continue; // deleted since it was listed
            };
            let subject = format!("$KV.{bucket}.{RETENTION_KEY}");
            if let Ok(m) = s.get_last_raw_message_by_subject(&subject).await
                && let Ok(a) = serde_json::from_slice::<Asked>(&m.payload)
            {
                events = events.max(Duration::from_millis(a.events_ms));
                max_store = max_store.max(a.max_store);
            }
        }
        Ok((events, max_store))
    }

    /// Purge settled events past their age (or past `max_store`); the
    /// floor, and whether `max_store` was reached.
    async fn prune_events(&self, now: OffsetDateTime) -> Result<(u64, bool), BrokerError> {
        let info = self.events.get_info().await.map_err(nats)?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut consumers = Vec::new();
        let mut all = self.events.consumers();
        while let Some(c) = all.next().await {
            consumers.push(c.map_err(nats)?);
        }
        let floor = floor(&consumers, last);
        let (age, max_store) = self.namespace_asks().await?;
        let by_age = first_from(
            &self.events,
            "",
            DeliverPolicy::ByStartTime {
                start_time: now - age,
            },
        )
        .await?
        .map_or(last + 1, |(seq, _)| seq);
        let mut upto = by_age.min(floor);
        let mut capped = false;
        if info.state.bytes > max_store && info.state.messages > 0 {
            // The oldest settled events, enough to come back to 90% of
            // the cap (by the average message).
            let excess = info.state.bytes - max_store / 10 * 9;
            let per = (info.state.bytes / info.state.messages).max(1);
            let target = first.saturating_add(excess / per + 1).min(floor);
            if target > upto {
                upto = target;
                capped = true;
            }
        }
        if upto > first {
            let purged = purge_below(&self.events, "", upto).await?;
            self.pruned.events.fetch_add(purged, Ordering::Relaxed);
            if capped {
                tracing::warn!(
                    "retention: the events stream is over max_store ({} MiB); settled events \
                     younger than [retention] events were pruned",
                    max_store >> 20
                );
            }
        }
        Ok((floor, capped))
    }

    /// Purge this app's dead letters stored before `cutoff`; how many
    /// messages went.
    async fn prune_dead_letters(&self, cutoff: OffsetDateTime) -> Result<u64, BrokerError> {
        let filter = self.names.dlq_filter();
        let info = self.dlq.get_info().await.map_err(nats)?;
        if info.state.messages == 0 {
            return Ok(0);
        }
        let upto = first_from(
            &self.dlq,
            &filter,
            DeliverPolicy::ByStartTime { start_time: cutoff },
        )
        .await?
        .map_or(info.state.last_sequence + 1, |(seq, _)| seq);
        let purged = purge_below(&self.dlq, &filter, upto).await?;
        self.pruned
            .dead_letters
            .fetch_add(purged, Ordering::Relaxed);
        Ok(purged)
    }

    /// Purge the rows of runs that ended before `cutoff` (a batch of
    /// them); when the last of them ended, if any went.
    async fn prune_runs(
        &self,
        cutoff: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, BrokerError> {
        let prefix = format!("$KV.{}.", self.names.state_bucket());
        let markers = format!("{prefix}{}>", super::ENDED_MARKER);
        let ended = super::pulling::oldest(&self.state_stream, &markers, RUNS_BATCH, 1).await?;
        let due: Vec<_> = ended.into_iter().take_while(|m| m.time < cutoff).collect();
        let Some((last_seq, last_time)) = due.last().map(|m| (m.seq, m.time)) else {
            return Ok(None);
        };
        let stream = &self.state_stream;
        // A deleted marker: the run went on again (a redrive); its rows
        // stay. A run's index entry goes with its record.
        let rows: Vec<String> = due
            .iter()
            .filter(|m| !m.deleted)
            .flat_map(|m| {
                let key = &m.subject[markers.len() - 1..];
                let entry = key
                    .strip_prefix(crate::broker::RUN_ROW)
                    .map(|id| format!("{prefix}{}", super::runs::entry_key(id)));
                std::iter::once(format!("{prefix}{key}")).chain(entry)
            })
            .collect();
        let purged: Vec<Result<_, _>> = futures_util::stream::iter(rows)
            .map(|row| {
                let stream = stream.clone();
                async move { stream.purge().filter(row).await }
            })
            .buffer_unordered(PURGES_IN_FLIGHT)
            .collect()
            .await;
        for r in purged {
            r.map_err(nats)?;
        }
        purge_below(stream, &markers, last_seq + 1).await?;
        let gone = due.iter().filter(|m| !m.deleted).count();
        self.pruned
            .records
            .fetch_add(gone as u64, Ordering::Relaxed);
        Ok(Some(last_time))
    }

    /// How far retention has pruned: events from the events stream (its
    /// first message's time, once anything was purged from it), runs and
    /// dead letters from what the pruners recorded.
    pub(super) async fn horizon(&self) -> Result<Horizon, BrokerError> {
        let p = self.pruned_record().await?;
        let info = self.events.get_info().await.map_err(nats)?;
        let events_before = (info.state.first_sequence > 1).then(|| {
            if info.state.messages == 0 {
                rfc3339(OffsetDateTime::now_utc())
            } else {
                rfc3339(info.state.first_timestamp)
            }
        });
        Ok(Horizon {
            events_before,
            runs_before: p.runs_before,
            dead_letters_before: p.dead_letters_before,
            capped: p.capped,
        })
    }
}

/// Delete everything namespace `ns` holds on `server`: its streams, every
/// app's state bucket and their consumers. For tests and for resetting a
/// namespace; returns how many streams were deleted.
pub async fn purge_namespace(server: &str, ns: &str) -> Result<usize, BrokerError> {
    let (options, server) = super::auth::connect_options(server);
    let client = options
        .connect(server.as_str())
        .await
        .map_err(|e| BrokerError::Nats(format!("cannot connect to {server}: {e}")))?;
    let js = async_nats::jetstream::new(client);
    let doomed = namespace_streams(&js, ns).await?;
    for n in &doomed {
        js.delete_stream(n).await.map_err(nats)?;
    }
    Ok(doomed.len())
}

/// The names of namespace `ns`'s streams: `NS_...` (events, dead letters,
/// logs) and `KV_NS_...` (every app's buckets).
async fn namespace_streams(js: &Context, ns: &str) -> Result<Vec<String>, BrokerError> {
    let prefixes = [format!("{}_", ns.to_uppercase()), format!("KV_{ns}_")];
    let mut names = js.stream_names();
    let mut found = Vec::new();
    while let Some(n) = names.next().await {
        let n = n.map_err(nats)?;
        if prefixes.iter().any(|p| n.starts_with(p.as_str())) {
            found.push(n);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(
        ack: AckPolicy,
        ack_pending: usize,
        pending: u64,
        floor: u64,
        delivered: u64,
    ) -> consumer::Info {
        let mut v: consumer::Info = serde_json::from_value(serde_json::json!({
            "stream_name": "S", "name": "c", "created": "2026-01-01T00:00:00Z",
            "config": {"ack_policy": "explicit", "deliver_policy": "all", "replay_policy": "instant"},
            "delivered": {"consumer_seq": 0, "stream_seq": delivered},
            "ack_floor": {"consumer_seq": 0, "stream_seq": floor},
            "num_ack_pending": ack_pending, "num_redelivered": 0,
            "num_waiting": 0, "num_pending": pending,
        }))
        .expect("a consumer's info");
        v.config.ack_policy = ack;
        v
    }

    #[test]
    fn the_floor_is_below_whatever_a_consumer_has_not_settled() {
        let last = 100;
        // Nobody: everything is settled.
        assert_eq!(floor(&[], last), 101);
        // Caught up.
        assert_eq!(
            floor(&[consumer(AckPolicy::Explicit, 0, 0, 90, 90)], last),
            101
        );
        // Messages in flight: above the ack floor may be unsettled.
        assert_eq!(
            floor(&[consumer(AckPolicy::Explicit, 3, 5, 40, 60)], last),
            41
        );
        // Behind, nothing in flight: the next is after what was delivered.
        assert_eq!(
            floor(&[consumer(AckPolicy::Explicit, 0, 7, 60, 60)], last),
            61
        );
        // A scan without acks holds nothing back; the lowest of the rest counts.
        let all = [
            consumer(AckPolicy::None, 0, 99, 0, 1),
            consumer(AckPolicy::Explicit, 1, 0, 70, 71),
            consumer(AckPolicy::Explicit, 2, 0, 20, 30),
        ];
        assert_eq!(floor(&all, last), 21);
    }

    #[test]
    fn pruning_ticks_a_quarter_of_the_shortest_age_within_bounds() {
        let mut r = Retention::default();
        assert_eq!(tick(&r), Duration::from_secs(30));
        r.events = Duration::from_secs(2);
        assert_eq!(tick(&r), Duration::from_secs(1));
        r.events = Duration::from_secs(40);
        r.runs = Duration::from_secs(20);
        assert_eq!(tick(&r), Duration::from_secs(5));
    }
}
