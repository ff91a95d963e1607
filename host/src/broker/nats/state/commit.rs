//! The invoking side of a commit with step state (steps 1 and 3 in
//! `mod.rs`): put the invocation's log entry in the log, wait for the
//! applier's verdict, then publish the outputs of the entry that committed
//! and settle the delivery. An operator's write is a log entry too.

use std::sync::Arc;

use base64::Engine;
use tokio::sync::oneshot;

use super::super::nats;
use super::{Kv, LOG_HEADROOM, LogEntry, VERDICT_GIVE_UP, VERDICT_POLL, Verdict};
use crate::broker::{BrokerError, Commit};
use crate::event::Event;
use crate::kv::Refused;

impl Kv {
    /// Commit an invocation's state with its outputs and settle its
    /// delivery (steps 1 and 3 in `mod.rs`).
    pub(in crate::broker::nats) async fn commit(
        self: Arc<Self>,
        c: Commit,
        publisher: super::super::publish::Publisher,
    ) -> Result<(), BrokerError> {
        let kv = c.kv.as_ref().expect("a state commit");
        if !c.state.is_empty() {
            return Err(BrokerError::Misuse(
                "a commit with both run state and step state".into(),
            ));
        }
        let d = c.ack.as_ref().ok_or_else(|| {
            BrokerError::Misuse("a commit of step state settles a delivery".into())
        })?;
        let k = invocation_key(&d.group, &d.event.identity());
        let entry = LogEntry {
            k: k.clone(),
            reply: self.inbox.clone(),
            reads: kv.writes.reads.clone(),
            lists: kv.writes.lists.clone(),
            writes: kv
                .writes
                .writes
                .iter()
                .map(|(b, k, v)| {
                    (
                        b.clone(),
                        k.clone(),
                        v.as_ref()
                            .map(|v| base64::prelude::BASE64_STANDARD.encode(v)),
                    )
                })
                .collect(),
            max_keys: kv.limits.max_keys,
            max_bucket_bytes: kv.limits.max_bucket_bytes,
            events: c.events.iter().map(Event::to_json).collect(),
        };
        let v = self.decide(entry).await?;
        if let Some(r) = v.verdict.refused {
            return Err(BrokerError::Refused(r));
        }
        let events = if v.verdict.seq == v.seq {
            c.events
        } else {
            // A duplicate: the outputs of the entry that committed.
            self.logged_events(v.verdict.seq).await?
        };
        super::super::publish::stored(publisher.send(&events, &[]).await?).await?;
        super::super::acker(d)?
            .acker
            .double_ack()
            .await
            .map_err(nats)?;
        Ok(())
    }

    /// An operator's write: a log entry of its own, no quota.
    pub(in crate::broker::nats) async fn write(
        self: &Arc<Self>,
        bucket: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), BrokerError> {
        let ours = self.clone().run_applier();
        let entry = LogEntry {
            k: uuid::Uuid::new_v4().simple().to_string(),
            reply: self.inbox.clone(),
            reads: Vec::new(),
            lists: Vec::new(),
            writes: vec![(
                bucket.to_string(),
                key.to_string(),
                value.map(|v| base64::prelude::BASE64_STANDARD.encode(v)),
            )],
            max_keys: u64::MAX,
            max_bucket_bytes: u64::MAX,
            events: Vec::new(),
        };
        let r = self.decide(entry).await;
        if ours {
            self.stop_applier().await;
        }
        match r?.verdict.refused {
            Some(r) => Err(BrokerError::Refused(r)),
            None => Ok(()),
        }
    }

    /// Put `entry` in the log and wait for its verdict.
    async fn decide(&self, entry: LogEntry) -> Result<Decided, BrokerError> {
        let body = serde_json::to_vec(&entry).expect("JSON");
        if body.len() + LOG_HEADROOM > self.max_payload {
            return Err(BrokerError::Refused(Refused::Quota(format!(
                "the invocation's state commit ({} bytes: reads {}, writes {}, outputs {}) does \
                 not fit in one NATS message (max_payload {}), as a commit with step state on \
                 NATS must",
                body.len(),
                json_len(&(&entry.reads, &entry.lists)),
                json_len(&entry.writes),
                json_len(&entry.events),
                self.max_payload
            ))));
        }
        let _turn = self.deciding.acquire().await.expect("never closed");
        let (tx, mut rx) = oneshot::channel();
        self.waiting
            .lock()
            .expect("waiting lock")
            .insert(entry.k.clone(), tx);
        let r = async {
            let seq = self
                .js
                .publish(self.log_subject.clone(), body.into())
                .await
                .map_err(nats)?
                .await
                .map_err(|e| nats(format!("storing a state commit: {e}")))?
                .sequence;
            let mine = |v: &Verdict| v.refused.is_none() || v.seq == seq;
            let give_up = tokio::time::Instant::now() + VERDICT_GIVE_UP;
            loop {
                tokio::select! {
                    v = &mut rx => {
                        if let Ok(v) = v && mine(&v) {
                            return Ok(Decided { seq, verdict: v });
                        }
                        // A stale word, or none: look for it below.
                        let (tx, again) = oneshot::channel();
                        rx = again;
                        self.waiting.lock().expect("waiting lock").insert(entry.k.clone(), tx);
                    }
                    _ = tokio::time::sleep(VERDICT_POLL) => {}
                }
                if let Some(v) = self.verdict(&entry.k).await?.0
                    && mine(&v)
                {
                    return Ok(Decided { seq, verdict: v });
                }
                if tokio::time::Instant::now() > give_up {
                    return Err(nats(format!(
                        "no verdict on state commit #{seq} after {}s (is a host of this app running?)",
                        VERDICT_GIVE_UP.as_secs()
                    )));
                }
            }
        }
        .await;
        self.waiting.lock().expect("waiting lock").remove(&entry.k);
        r
    }

    async fn logged(&self, seq: u64) -> Result<LogEntry, BrokerError> {
        let m = self
            .log
            .direct_get(seq)
            .await
            .map_err(|e| nats(format!("state commit #{seq}: {e}")))?;
        serde_json::from_slice(&m.payload)
            .map_err(|e| nats(format!("state commit #{seq} is unreadable: {e}")))
    }

    async fn logged_events(&self, seq: u64) -> Result<Vec<Event>, BrokerError> {
        self.logged(seq)
            .await?
            .events
            .into_iter()
            .map(|v| {
                Event::from_json(v, "troupe")
                    .map_err(|e| nats(format!("an output of state commit #{seq}: {e}")))
            })
            .collect()
    }
}

/// A verdict, and the log entry it was waited for by.
struct Decided {
    seq: u64,
    verdict: Verdict,
}

/// The key of the invocation of `group` on the event of `identity`: every
/// run and every delivery of it has the same.
fn invocation_key(group: &str, identity: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{group}/{identity}").as_bytes(),
    )
    .simple()
    .to_string()
}

/// The bytes of `v` as JSON, to say which part of a commit is too large.
fn json_len<T: serde::Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map_or(0, |b| b.len())
}
