//! Retention of step state's bookkeeping: the commit log, the verdicts,
//! and deleted entries' markers. Buckets' live entries are never pruned.
//!
//! A verdict is needed while its invocation's event could be delivered
//! again (a duplicate must find it); the broker's pruner says until when
//! that is (`before`: every event stored before it has been settled by
//! every consumer, and `[retention] events` has passed). A log entry is
//! needed until it is applied (below every partition's applied index, `lease.rs`) and
//! while a verdict names it
//! (a duplicate's outputs are read back from it). A deleted entry's
//! marker only matters to an applier that could still write the entry,
//! one holding a log entry from before `before`: there is none.

use std::sync::atomic::Ordering;

use async_nats::jetstream::consumer::DeliverPolicy;
use time::OffsetDateTime;

use super::{Kv, Verdict};
use crate::broker::BrokerError;
use crate::broker::nats::nats;
use crate::broker::nats::prune::purge_below;
use crate::broker::nats::pulling::{first_from, first_message, oldest};

/// Markers looked at per pass.
const MARKERS_BATCH: usize = 2000;

impl Kv {
    /// Prune what no event stored from `before` on can need.
    pub(in crate::broker::nats) async fn prune(
        &self,
        before: OffsetDateTime,
    ) -> Result<(), BrokerError> {
        let log = self.log.get_info().await.map_err(nats)?;
        if log.state.last_sequence == 0 {
            return Ok(()); // no step of the app keeps state
        }
        // Verdicts older than `before`.
        let verdicts = format!("{}._tx.>", self.prefix);
        let data_last = self
            .data
            .get_info()
            .await
            .map_err(nats)?
            .state
            .last_sequence;
        let kept = first_from(
            &self.data,
            &verdicts,
            DeliverPolicy::ByStartTime { start_time: before },
        )
        .await?
        .map_or(data_last + 1, |(seq, _)| seq);
        purge_below(&self.data, &verdicts, kept).await?;
        // Log entries applied (below every partition's applied index)
        // that no verdict left names.
        let index = self.applied_all().await?;
        let Some(applied) = index.iter().map(|i| i.seq).min().flatten() else {
            return Ok(()); // a partition's leader has not recorded its progress yet
        };
        let mut upto = applied + 1;
        let first_verdict = first_message(&self.data, &verdicts, DeliverPolicy::All, false).await?;
        if let Some(v) =
            first_verdict.and_then(|m| serde_json::from_slice::<Verdict>(&m.payload).ok())
        {
            upto = upto.min(v.seq);
        }
        if upto > log.state.first_sequence {
            purge_below(&self.log, "", upto).await?;
        }
        self.prune_markers(before).await
    }

    /// Purge deleted entries' markers stored before `before`, from where
    /// the last pass stopped.
    async fn prune_markers(&self, before: OffsetDateTime) -> Result<(), BrokerError> {
        let from = self.markers_from.load(Ordering::Relaxed).max(1);
        let filter = format!("{}.>", self.prefix);
        let bookkeeping = format!("{}._", self.prefix);
        let mut next = from;
        for m in oldest(&self.data, &filter, MARKERS_BATCH, from).await? {
            if m.time >= before {
                break;
            }
            next = m.seq + 1;
            if m.deleted && !m.subject.starts_with(&bookkeeping) {
                // Only this marker: an entry written since stays.
                purge_below(&self.data, &m.subject, m.seq + 1).await?;
            }
        }
        self.markers_from.store(next, Ordering::Relaxed);
        Ok(())
    }
}
