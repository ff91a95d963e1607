//! Taking messages from the server: each durable consumer's pull task,
//! which fills its group's queue (a message that is not a CloudEvent is
//! dead-lettered whole instead), and one-off scans of a stream (traces,
//! the DLQ).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
    stream::Stream,
};
use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};

use super::{Inner, NatsAck, PULL_BATCH, codec, nats};
use crate::broker::{Ack, BrokerError, Consumer, Delivery};
use crate::event::Event;
use crate::protocol::FailureClass;
use crate::retry::RetryPolicy;

/// A consumer group: the queue its pull tasks fill, and their consumers.
pub(super) struct Group {
    pub(super) retry: RetryPolicy,
    /// One per subject: the group's commands, and each type it consumes.
    pub(super) pulls: std::sync::Mutex<Vec<Pull>>,
    pub(super) tx: async_channel::Sender<Delivery>,
    pub(super) rx: async_channel::Receiver<Delivery>,
    /// While set, the pull tasks take nothing and hand back what they get
    /// (`Consumer::pause`).
    pub(super) paused: tokio::sync::watch::Sender<bool>,
    /// Where handing back runs (it is asked from workers' threads).
    pub(super) runtime: tokio::runtime::Handle,
}

/// One durable consumer of a group, and the task that pulls from it.
pub(super) struct Pull {
    pub(super) subject: String,
    pub(super) durable: String,
    /// Stops the task (the group no longer consumes the subject).
    pub(super) stop: tokio::sync::watch::Sender<bool>,
}

#[async_trait]
impl Consumer for Group {
    async fn next(&self) -> Option<Delivery> {
        self.rx.recv().await.ok()
    }

    fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
        if paused {
            // What is queued here goes back to the server for the group's
            // other members.
            while let Ok(d) = self.rx.try_recv() {
                self.hand_back(d);
            }
        }
    }

    fn hand_back(&self, d: Delivery) {
        self.runtime.spawn(async move {
            if let Some(a) = d.ack.get::<NatsAck>() {
                let _ = a.acker.ack_with(jetstream::AckKind::Nak(None)).await;
            }
        });
    }
}

impl Inner {
    /// Declare group `group`'s durable consumer of `subject` (starting at
    /// `from` if it is new) and start pulling from it into `tx`.
    pub(super) async fn start_pull(
        self: &Arc<Self>,
        group: &Arc<str>,
        subject: String,
        from: DeliverPolicy,
        tx: &async_channel::Sender<Delivery>,
        paused: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Pull, BrokerError> {
        let durable = self.names.consumer(group, &subject);
        let c: PullConsumer = self
            .events
            .get_or_create_consumer(
                &durable,
                pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject: subject.clone(),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: super::ACK_WAIT,
                    deliver_policy: from,
                    max_ack_pending: 20_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| nats(format!("consumer {durable} on {subject}: {e}")))?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(
            self.clone()
                .pull(c, group.clone(), tx.clone(), stopped, paused),
        );
        Ok(Pull {
            subject,
            durable,
            stop,
        })
    }

    /// Pull from `consumer` into `tx` until the broker closes.
    pub(super) async fn pull(
        self: Arc<Self>,
        consumer: PullConsumer,
        group: Arc<str>,
        tx: async_channel::Sender<Delivery>,
        mut stop: tokio::sync::watch::Receiver<bool>,
        mut paused: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut closed = self.closed.subscribe();
        loop {
            if *closed.borrow_and_update() || *stop.borrow_and_update() {
                return;
            }
            let now_paused = *paused.borrow_and_update();
            if now_paused {
                // Paused: no pull request is out, so the server gives the
                // group's messages to its other members.
                tokio::select! {
                    _ = paused.wait_for(|p| !*p) => continue,
                    _ = closed.changed() => return,
                    _ = stop.changed() => return,
                }
            }
            let mut messages = match consumer
                .stream()
                .max_messages_per_batch(PULL_BATCH)
                .expires(super::PULL_EXPIRES)
                .messages()
                .await
            {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(%group, "cannot pull from NATS ({e}); retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = closed.changed() => return,
                        _ = stop.changed() => return,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    m = messages.next() => m,
                    _ = closed.changed() => return,
                    _ = stop.changed() => return,
                    Ok(()) = paused.changed() => {
                        let now_paused = *paused.borrow_and_update();
                        if now_paused {
                            // Hand back what the pull already brought, and
                            // end it (its request with it).
                            while let Some(Some(m)) = messages.next().now_or_never() {
                                if let Ok(m) = m {
                                    let _ = m.ack_with(jetstream::AckKind::Nak(None)).await;
                                }
                            }
                            break;
                        }
                        continue;
                    }
                };
                let msg = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::debug!(%group, "NATS pull: {e}");
                        continue;
                    }
                    None => break,
                };
                let (attempt, stream_seq, stored) = match msg.info() {
                    Ok(i) => (
                        i.delivered.max(1) as u32,
                        i.stream_sequence,
                        std::time::SystemTime::from(i.published),
                    ),
                    Err(e) => {
                        tracing::warn!(%group, "a message without JetStream metadata: {e}");
                        continue;
                    }
                };
                let given = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(super::seal::HEADER));
                let decoded =
                    codec::decode(msg.headers.as_ref(), &msg.payload, stored).map(|mut e| {
                        self.seal
                            .unless_sealed(&mut e, given.map(|v| v.as_str()), &msg.subject);
                        e
                    });
                let (msg, acker) = msg.split();
                let ack = Ack::new(NatsAck { acker, stream_seq });
                match decoded {
                    Ok(event) => {
                        let d = Delivery {
                            version: None,
                            group: group.clone(),
                            event: Arc::new(event),
                            attempt,
                            ack,
                        };
                        let back = d.ack.clone();
                        let sent = tokio::select! {
                            r = tx.send(d) => r,
                            // Paused while the queue is full: this one goes back.
                            () = async { let _ = paused.wait_for(|p| *p).await; } => {
                                if let Some(a) = back.get::<NatsAck>() {
                                    let _ = a.acker.ack_with(jetstream::AckKind::Nak(None)).await;
                                }
                                continue;
                            }
                        };
                        if let Err(async_channel::SendError(d)) = sent {
                            // Nobody takes the group's deliveries here any
                            // more: hand this one back for another member.
                            if let Some(a) = d.ack.get::<NatsAck>() {
                                let _ = a.acker.ack_with(jetstream::AckKind::Nak(None)).await;
                            }
                            return;
                        }
                    }
                    Err(why) => {
                        // Not a CloudEvent: keep it, as the DLQ's, whole.
                        let mut e = Event::new(
                            msg.subject.as_str(),
                            &format!("nats://{}", msg.subject),
                            msg.payload.to_vec(),
                        );
                        e.content_type = "application/octet-stream".into();
                        let d = Delivery {
                            version: None,
                            group: group.clone(),
                            event: Arc::new(e),
                            attempt,
                            ack,
                        };
                        if let Err(err) = self.dead_letter(&d, FailureClass::Contract, &why).await {
                            tracing::error!(%group, "cannot dead-letter a malformed message (it will be redelivered): {err}");
                        }
                    }
                }
            }
        }
    }
}

/// A consumer of `stream` for one look (no acks, gone when dropped or
/// idle): messages on `filter` (all when empty) from `start`.
async fn look(
    stream: &Stream,
    filter: &str,
    start: DeliverPolicy,
    headers_only: bool,
) -> Result<PullConsumer, BrokerError> {
    stream
        .create_consumer(pull::Config {
            filter_subject: filter.to_string(),
            ack_policy: AckPolicy::None,
            deliver_policy: start,
            headers_only,
            inactive_threshold: Duration::from_secs(10),
            ..Default::default()
        })
        .await
        .map_err(nats)
}

/// Up to `max` messages of `consumer`, as many as it has pending.
async fn take(consumer: &PullConsumer, max: usize) -> Result<Vec<jetstream::Message>, BrokerError> {
    let mut left = (consumer.cached_info().num_pending as usize).min(max);
    let mut out = Vec::with_capacity(left);
    while left > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(left.min(1000))
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(nats)?;
        let before = out.len();
        while let Some(m) = batch.next().await {
            out.push(m.map_err(nats)?);
        }
        if out.len() == before {
            break; // nothing more came: the count was stale
        }
        left = left.saturating_sub(out.len() - before);
    }
    Ok(out)
}

/// Every message of `stream` on `filter`, oldest first.
pub(super) async fn scan(
    stream: &Stream,
    filter: &str,
) -> Result<Vec<jetstream::Message>, BrokerError> {
    let consumer = look(stream, filter, DeliverPolicy::All, false).await?;
    let out = take(&consumer, usize::MAX).await;
    let _ = stream.delete_consumer(&consumer.cached_info().name).await;
    out
}

/// A message looked at by [`oldest`].
pub(super) struct Seen {
    pub(super) seq: u64,
    pub(super) subject: String,
    pub(super) time: time::OffsetDateTime,
    /// A key-value deletion marker.
    pub(super) deleted: bool,
}

/// Up to `max` of the oldest messages of `stream` on `filter`, from
/// sequence `from` on (headers only).
pub(super) async fn oldest(
    stream: &Stream,
    filter: &str,
    max: usize,
    from: u64,
) -> Result<Vec<Seen>, BrokerError> {
    let start = DeliverPolicy::ByStartSequence {
        start_sequence: from.max(1),
    };
    let consumer = look(stream, filter, start, true).await?;
    let out = take(&consumer, max).await;
    let _ = stream.delete_consumer(&consumer.cached_info().name).await;
    out?.iter()
        .map(|m| {
            let i = m.info().map_err(nats)?;
            let deleted = m
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|v| v.as_str() != "PUT");
            Ok(Seen {
                seq: i.stream_sequence,
                subject: m.subject.to_string(),
                time: i.published,
                deleted,
            })
        })
        .collect()
}

/// The first message of `stream` on `filter` (all when empty) from
/// `start`, if there is one.
pub(super) async fn first_message(
    stream: &Stream,
    filter: &str,
    start: DeliverPolicy,
    headers_only: bool,
) -> Result<Option<jetstream::Message>, BrokerError> {
    let consumer = look(stream, filter, start, headers_only).await?;
    let out = take(&consumer, 1).await;
    let _ = stream.delete_consumer(&consumer.cached_info().name).await;
    Ok(out?.pop())
}

/// The sequence and time of that message.
pub(super) async fn first_from(
    stream: &Stream,
    filter: &str,
    start: DeliverPolicy,
) -> Result<Option<(u64, time::OffsetDateTime)>, BrokerError> {
    match first_message(stream, filter, start, true).await? {
        None => Ok(None),
        Some(m) => {
            let i = m.info().map_err(nats)?;
            Ok(Some((i.stream_sequence, i.published)))
        }
    }
}
