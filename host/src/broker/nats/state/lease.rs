//! Who leads which partition of an app's step state (`part.rs`), and how
//! far each partition is applied.
//!
//! Every host of the app that runs steps announces itself
//! (`$KV.B._host.ID`, renewed with the leases) and, every [`LEASE_RENEW`],
//! renews the partitions' leases it holds (`$KV.B._lease.N`, each taken
//! and renewed by compare-and-set on the subject's last sequence) and
//! takes free ones, up to its share: `ceil(P / hosts)`. A host over its
//! share (another joined) lets the rest go; a host that stops lets all of
//! its leases go, so others take them at once rather than after
//! [`LEASE_TTL`]. A holder that cannot renew stops applying
//! [`LEASE_MARGIN`] before its leases could run out.
//!
//! A partition's applied index (`$KV.B._ap.N`) is the last log sequence
//! up to which every entry of the partition is decided and written.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::part::{Mask, PARTITIONS};
use super::{Current, Kv};
use crate::broker::BrokerError;
use crate::broker::nats::nats;

/// How long a lease (and a host's announcement) lasts unless renewed.
pub(super) const LEASE_TTL: Duration = Duration::from_secs(6);
/// How often a holder renews its leases, and hosts try for free ones.
pub(super) const LEASE_RENEW: Duration = Duration::from_secs(2);
/// How long an applier runs before it announces itself: a command that
/// writes or reads state for a moment (`troupe kv put`) takes only free
/// partitions, and does not make the hosts share theirs with it.
pub(super) const ANNOUNCE_AFTER: Duration = Duration::from_secs(4);
/// How long before its leases could run out a holder that could not
/// renew stops applying (the hosts' clocks may differ by this much).
const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// A partition's lease, as stored; a host's announcement is one too.
#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    holder: String,
    until_ms: u64,
}

/// An applied index, as stored.
#[derive(Debug, Serialize, Deserialize)]
struct Applied {
    seq: u64,
}

/// A partition's applied index as a leader knows it: the last sequence
/// applied (`None`: none recorded yet) and the index subject's last
/// sequence (for the compare-and-set that moves it).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Index {
    pub(super) seq: Option<u64>,
    pub(super) row: u64,
}

/// The leases a host holds after a turn, and until when it may apply.
pub(super) struct Held {
    pub(super) mine: Mask,
    pub(super) until: Instant,
}

fn body<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("JSON"))
}

/// The sequence an applied index's message records.
pub(super) fn applied_of(payload: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Applied>(payload)
        .ok()
        .map(|a| a.seq)
}

fn lease_of(c: &Current) -> Option<Lease> {
    c.value
        .as_ref()
        .and_then(|v| serde_json::from_slice::<Lease>(v).ok())
}

impl Kv {
    /// Partition `n`'s applied index.
    pub(super) async fn applied(&self, n: usize) -> Result<Index, BrokerError> {
        let c = self.current(&self.applied_subject(n)).await?;
        let seq = c.value.as_deref().and_then(applied_of);
        if let Some(seq) = seq {
            self.heard(n, seq);
        }
        Ok(Index { seq, row: c.seq })
    }

    /// Every partition's applied index.
    pub(super) async fn applied_all(&self) -> Result<Vec<Index>, BrokerError> {
        futures_util::future::try_join_all((0..PARTITIONS).map(|n| self.applied(n))).await
    }

    /// Record `seq` as partition `n`'s last sequence applied, if its
    /// index is still `at`; the index as written (`None`: another leader
    /// wrote it).
    pub(super) async fn put_applied(
        &self,
        n: usize,
        seq: u64,
        at: Index,
    ) -> Result<Option<Index>, BrokerError> {
        let row = self
            .put_if(
                &self.applied_subject(n),
                Some(body(&Applied { seq })),
                0,
                at.row,
            )
            .await?;
        if row.is_some() {
            self.heard(n, seq);
        }
        Ok(row.map(|row| Index {
            seq: Some(seq),
            row,
        }))
    }

    /// How many hosts of the app are running: those whose announcement is
    /// current. Announcements run out are purged. (The subjects are
    /// listed, then each read: no consumer is made, and nothing waits for
    /// a message purged meanwhile.)
    async fn hosts(&self, now: u64) -> Result<usize, BrokerError> {
        use futures_util::TryStreamExt;
        let filter = format!("{}._host.*", self.prefix);
        let subjects: Vec<String> = self
            .data
            .info_with_subjects(&filter)
            .await
            .map_err(nats)?
            .map_ok(|(subject, _)| subject)
            .try_collect()
            .await
            .map_err(nats)?;
        let rows =
            futures_util::future::try_join_all(subjects.iter().map(|s| self.current(s))).await?;
        let mut live = 0;
        for (subject, c) in subjects.iter().zip(&rows) {
            match lease_of(c) {
                Some(l) if l.until_ms >= now => live += 1,
                _ => {
                    let _ = self.data.purge().filter(subject.clone()).await;
                }
            }
        }
        Ok(live)
    }

    /// One turn: announce this host (once it has run its applier for
    /// [`ANNOUNCE_AFTER`]), renew the leases it holds, take free ones up to
    /// its share and let those over it go.
    pub(super) async fn hold(&self, announce: bool) -> Result<Held, BrokerError> {
        let asked = Instant::now();
        let now = crate::clock::now_ms();
        let until_ms = now + LEASE_TTL.as_millis() as u64;
        let me = Lease {
            holder: self.id.clone(),
            until_ms,
        };
        if announce {
            let host = self.current(&self.host_subject()).await?;
            self.put_if(&self.host_subject(), Some(body(&me)), 0, host.seq)
                .await?;
        }
        let share = PARTITIONS.div_ceil(self.hosts(now).await?.max(1));
        let subjects: Vec<String> = (0..PARTITIONS).map(|n| self.lease_subject(n)).collect();
        let rows =
            futures_util::future::try_join_all(subjects.iter().map(|s| self.current(s))).await?;
        let mut ours = Vec::new();
        let mut free = Vec::new();
        for (n, c) in rows.iter().enumerate() {
            match lease_of(c) {
                Some(l) if l.holder == self.id && l.until_ms > 0 => ours.push(n),
                Some(l) if l.until_ms >= now => {}
                _ => free.push(n),
            }
        }
        // Free partitions are taken from a place of this host's own, so
        // hosts starting together do not all race for the same ones.
        let offset = self.id.bytes().map(usize::from).sum::<usize>() % PARTITIONS;
        free.sort_by_key(|n| (n + PARTITIONS - offset) % PARTITIONS);
        let keep = ours.len().min(share);
        let take: Vec<usize> = free.into_iter().take(share.saturating_sub(keep)).collect();
        let renewed =
            futures_util::future::try_join_all(
                ours[..keep].iter().chain(&take).map(|&n| {
                    let subject = &subjects[n];
                    let last = rows[n].seq;
                    let b = body(&me);
                    async move {
                        Ok::<_, BrokerError>((n, self.put_if(subject, Some(b), 0, last).await?))
                    }
                }),
            )
            .await?;
        let released = Lease {
            holder: self.id.clone(),
            until_ms: 0,
        };
        for &n in &ours[keep..] {
            let _ = self
                .put_if(&subjects[n], Some(body(&released)), 0, rows[n].seq)
                .await;
        }
        let mine = renewed
            .into_iter()
            .filter(|(_, row)| row.is_some())
            .fold(0, |m, (n, _)| m | 1 << n);
        Ok(Held {
            mine,
            until: asked + LEASE_TTL - LEASE_MARGIN,
        })
    }

    /// Let every lease of this host go, and its announcement: the others
    /// take its partitions over without waiting for them to run out.
    pub(super) async fn release(&self) {
        let released = Lease {
            holder: self.id.clone(),
            until_ms: 0,
        };
        for n in 0..PARTITIONS {
            let subject = self.lease_subject(n);
            let Ok(c) = self.current(&subject).await else {
                continue;
            };
            if lease_of(&c).is_some_and(|l| l.holder == self.id) {
                let _ = self.put_if(&subject, Some(body(&released)), 0, c.seq).await;
            }
        }
        let _ = self.data.purge().filter(self.host_subject()).await;
    }
}
