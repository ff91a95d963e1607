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
use futures_util::StreamExt;

use super::{Inner, NatsAck, PULL_BATCH, codec, nats};
use crate::broker::{Ack, BrokerError, Consumer, Delivery};
use crate::event::Event;
use crate::protocol::FailureClass;
use crate::retry::RetryPolicy;

/// A consumer group: the queue its pull tasks fill, and their consumers.
pub(super) struct Group {
    pub(super) retry: RetryPolicy,
    pub(super) consumers: Vec<String>,
    pub(super) rx: async_channel::Receiver<Delivery>,
}

#[async_trait]
impl Consumer for Group {
    async fn next(&self) -> Option<Delivery> {
        self.rx.recv().await.ok()
    }
}

impl Inner {
    /// Pull from `consumer` into `tx` until the broker closes.
    pub(super) async fn pull(
        self: Arc<Self>,
        consumer: PullConsumer,
        group: Arc<str>,
        tx: async_channel::Sender<Delivery>,
    ) {
        let mut closed = self.closed.subscribe();
        loop {
            if *closed.borrow_and_update() {
                return;
            }
            let mut messages = match consumer
                .stream()
                .max_messages_per_batch(PULL_BATCH)
                .messages()
                .await
            {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(%group, "cannot pull from NATS ({e}); retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = closed.changed() => return,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    m = messages.next() => m,
                    _ = closed.changed() => return,
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
                let decoded = codec::decode(msg.headers.as_ref(), &msg.payload, stored);
                let (msg, acker) = msg.split();
                let ack = Ack::new(NatsAck { acker, stream_seq });
                match decoded {
                    Ok(event) => {
                        let d = Delivery {
                            group: group.clone(),
                            event: Arc::new(event),
                            attempt,
                            ack,
                        };
                        if tx.send(d).await.is_err() {
                            return; // closed; the server redelivers
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

/// Every message of `stream` on `filter`, oldest first.
pub(super) async fn scan(
    stream: &Stream,
    filter: &str,
) -> Result<Vec<jetstream::Message>, BrokerError> {
    let consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            filter_subject: filter.to_string(),
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::All,
            inactive_threshold: Duration::from_secs(10),
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    let mut left = consumer.cached_info().num_pending as usize;
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
        left -= out.len() - before;
    }
    let _ = stream.delete_consumer(&consumer.cached_info().name).await;
    Ok(out)
}
