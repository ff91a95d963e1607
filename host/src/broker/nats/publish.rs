//! Putting messages on the server: events (on their type's subject, or
//! their group's when addressed), state rows (key-value entries), and the
//! ordered commit task behind [`crate::broker::Transport::commit_then`].

use async_nats::jetstream::{Context, context::PublishAckFuture, message::PublishMessage};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{ENDED_MARKER, Names, acker, codec, nats};
use crate::broker::{BrokerError, Commit};
use crate::event::{Event, TARGET};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};

/// The most acks one [`Publisher::send`] holds before it waits for them.
/// The client lends at most 5,000 permits to acks not yet awaited and
/// makes a publish wait for one: a send holding that many itself would
/// wait forever.
const ACK_WINDOW: usize = 1000;

/// Await `acks` once there are [`ACK_WINDOW`] of them.
async fn hold_few(acks: &mut Vec<(String, PublishAckFuture)>) -> Result<(), BrokerError> {
    if acks.len() >= ACK_WINDOW {
        stored(std::mem::take(acks)).await?;
    }
    Ok(())
}

/// Wait until the server has stored every message sent.
pub(super) async fn stored(acks: Vec<(String, PublishAckFuture)>) -> Result<(), BrokerError> {
    for (subject, a) in acks {
        a.await
            .map_err(|e| BrokerError::Nats(format!("storing a message on {subject}: {e}")))?;
    }
    Ok(())
}

/// Note a write's outcome in `writes`: the server refusing to store (out
/// of storage, unreachable) counts as failing writes (`/readyz`), and a
/// delivery the write was to settle, `d`, is handed back after the retry
/// delay (a NAK) rather than at the end of its ack wait, so the backlog
/// drains soon after the server takes writes again.
pub(super) fn note(
    writes: &std::sync::Arc<crate::broker::health::Writes>,
    r: &Result<(), BrokerError>,
    d: Option<crate::broker::Delivery>,
) {
    let e = match r {
        Ok(()) => return writes.wrote(),
        Err(e @ (BrokerError::Nats(_) | BrokerError::Store(_))) => e,
        Err(_) => return,
    };
    writes.failed(e, 1);
    let (Some(d), Ok(runtime)) = (d, tokio::runtime::Handle::try_current()) else {
        return;
    };
    let delay = writes.retry_delay();
    runtime.spawn(async move {
        if let Ok(a) = acker(&d) {
            let nak = async_nats::jetstream::AckKind::Nak(Some(delay));
            let _ = a.acker.ack_with(nak).await;
        }
    });
}

/// While writes fail, write a small key of the app's state bucket every
/// second: when the server takes writes again, readiness says so even if
/// nothing else writes (the backlog drained, no producer is publishing).
pub(super) async fn probe(
    writes: std::sync::Arc<crate::broker::health::Writes>,
    state: async_nats::jetstream::kv::Store,
    mut closed: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = closed.changed() => return,
        }
        if !writes.is_failing() {
            continue;
        }
        let now = crate::event::now_rfc3339();
        let r = state.put(PROBE_KEY, Bytes::from(now)).await;
        note(&writes, &r.map(drop).map_err(nats), None);
    }
}

/// The state bucket's key [`probe`] writes.
const PROBE_KEY: &str = "health/probe";

/// A publish the client refused: too large for the server, or otherwise.
fn refused(e: PublishError) -> BrokerError {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => BrokerError::TooLarge(format!("NATS: {e}")),
        _ => nats(e),
    }
}

/// What publishing needs: names and the JetStream context (cheap to clone,
/// so the commit task does not keep the broker alive).
#[derive(Clone)]
pub(super) struct Publisher {
    pub(super) names: Names,
    pub(super) js: Context,
    /// What host-owned extensions are sealed with (`seal.rs`).
    pub(super) seal: super::seal::Seal,
}

impl Publisher {
    /// Hand `events` and `state` rows to the client in order; the futures
    /// resolve once the server has stored each (of a long batch, those
    /// before the last [`ACK_WINDOW`] are awaited here).
    pub(super) async fn send(
        &self,
        events: &[Event],
        state: &[(String, Option<Vec<u8>>)],
    ) -> Result<Vec<(String, PublishAckFuture)>, BrokerError> {
        let mut subjects = Vec::with_capacity(events.len());
        for e in events {
            subjects.push(match e.extensions.get(TARGET) {
                Some(group) => self.names.group_subject(group),
                None => self.names.event_subject(&e.kind)?,
            });
        }
        let mut acks = Vec::with_capacity(events.len() + state.len());
        for (e, subject) in events.iter().zip(subjects) {
            let ack = self
                .js
                .send_publish(
                    subject.clone(),
                    codec::message(e, &e.identity(), &self.seal),
                )
                .await;
            acks.push((subject, ack.map_err(refused)?));
            hold_few(&mut acks).await?;
        }
        // State rows are key-value entries: a message on `$KV.BUCKET.KEY`.
        for (key, value) in state {
            let subject = format!("$KV.{}.{key}", self.names.state_bucket());
            let p = match value {
                Some(v) => PublishMessage::build().payload(Bytes::from(v.clone())),
                None => PublishMessage::build().header("KV-Operation", "DEL"),
            };
            let ack = self.js.send_publish(subject.clone(), p).await;
            acks.push((subject, ack.map_err(refused)?));
            hold_few(&mut acks).await?;
        }
        Ok(acks)
    }

    /// Take commits in the order they were made and hand their messages to
    /// the client in that order (so two commits of one run reach the
    /// server in order); wait for the server's acks concurrently, then
    /// settle the delivery and answer.
    pub(super) async fn commits(
        self,
        mut rx: mpsc::UnboundedReceiver<(Commit, crate::broker::Then)>,
    ) {
        while let Some((c, then)) = rx.recv().await {
            // A run that ends leaves a marker beside its rows, written
            // with them: retention finds ended runs by it (`prune.rs`).
            // A run's index entry is a row beside its record (`runs.rs`).
            // A redriven run's marker is deleted: it goes on.
            let mut state = std::borrow::Cow::Borrowed(&c.state);
            if !c.ended.is_empty() || !c.runs.is_empty() || !c.reopened.is_empty() {
                let rows = state.to_mut();
                rows.extend(c.runs.iter().map(|e| {
                    let entry = serde_json::to_vec(e).expect("an index entry serialises");
                    (super::runs::entry_key(&e.id), Some(entry))
                }));
                rows.extend(
                    c.reopened
                        .iter()
                        .map(|k| (format!("{ENDED_MARKER}{k}"), None)),
                );
                rows.extend(
                    c.ended
                        .iter()
                        .map(|k| (format!("{ENDED_MARKER}{k}"), Some(Vec::new()))),
                );
            }
            match self.send(&c.events, &state).await {
                Err(e) => then(Err(e)),
                Ok(acks) => {
                    tokio::spawn(async move {
                        let r = async {
                            stored(acks).await?;
                            if let Some(d) = &c.ack {
                                acker(d)?.acker.double_ack().await.map_err(nats)?;
                            }
                            Ok(())
                        };
                        then(r.await)
                    });
                }
            }
        }
    }
}
