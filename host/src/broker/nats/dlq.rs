//! Dead letters on NATS: one message per dead letter on the DLQ stream
//! (`NS.dlq.APP.ID`), the dead letter as JSON. A record too large for one
//! message keeps its event's data in a message of its own beside it
//! (`NS.dlq.APP.ID.data`, stored first), so a dead letter lives and is
//! pruned in the DLQ stream alone. (Records written before that kept the
//! data by reference, as the event's sequence in the events stream; they
//! are still read.)

use async_nats::jetstream::message::PublishMessage;
use async_trait::async_trait;

use super::publish::stored;
use super::pulling::scan;
use super::{Inner, Nats, acker, codec, nats};
use crate::broker::{BrokerError, DeadLetter, DeadLetters, Delivery};
use crate::event::derived_id;
use crate::protocol::FailureClass;

impl Inner {
    pub(super) async fn dead_letter(
        &self,
        d: &Delivery,
        class: FailureClass,
        message: &str,
    ) -> Result<String, BrokerError> {
        let a = acker(d)?;
        // The same message dead-lettered twice (a crash before the ack)
        // gets the same id, and the server drops the second copy.
        let id = derived_id(&d.event.id, &format!("dlq/{}/{}", d.group, a.stream_seq));
        let dl = DeadLetter {
            id: id.clone(),
            step: d.group.to_string(),
            class,
            message: crate::text::clean(message, crate::text::MAX_REASON),
            attempts: d.attempt,
            time: crate::event::now_rfc3339(),
            event: (*d.event).clone(),
            deployment: d.version.as_ref().map(|v| v.0),
            component: d.version.as_ref().map(|v| v.1.to_string()),
        };
        let mut record = dl.to_json(true);
        let mut body = serde_json::to_vec(&record).expect("JSON");
        if body.len() + DLQ_HEADROOM > self.max_payload {
            // Too large for one message: the data goes in a message of
            // its own (it fitted in one as the event's payload).
            if let Some(e) = record["event"].as_object_mut() {
                e.remove("data");
                e.remove("data_base64");
            }
            record[DATA_APART] = true.into();
            body = serde_json::to_vec(&record).expect("JSON");
            let data = PublishMessage::build()
                .payload(d.event.data.clone().into())
                .message_id(format!("{id}/data"));
            self.store_dlq(data_subject(&self.names.dlq_subject(&id)), data)
                .await?;
        }
        let p = PublishMessage::build().payload(body.into()).message_id(&id);
        self.store_dlq(self.names.dlq_subject(&id), p).await?;
        a.acker.double_ack().await.map_err(nats)?;
        tracing::warn!(step = %d.group, event = %d.event.id, %class, "dead-lettered: {}", dl.message);
        Ok(id)
    }

    /// Publish `p` on `subject` and wait until the server has stored it.
    async fn store_dlq(&self, subject: String, p: PublishMessage) -> Result<(), BrokerError> {
        let ack = self
            .js
            .send_publish(subject.clone(), p)
            .await
            .map_err(nats)?;
        stored(vec![(subject, ack)]).await
    }

    /// The dead letter `id` (with its event's data, fetched from the
    /// events stream if it is kept by reference) and its sequence in the
    /// DLQ stream.
    pub(super) async fn dead_letter_entry(
        &self,
        id: &str,
    ) -> Result<(DeadLetter, u64), BrokerError> {
        let m = self
            .dlq
            .get_last_raw_message_by_subject(&self.names.dlq_subject(id))
            .await
            .map_err(|_| BrokerError::NoSuchDeadLetter(id.to_string()))?;
        let (mut dl, apart) = parse_dead_letter(&m.payload)?;
        match apart {
            Apart::No => {}
            Apart::Beside => {
                let subject = data_subject(&self.names.dlq_subject(id));
                let d = self
                    .dlq
                    .get_last_raw_message_by_subject(&subject)
                    .await
                    .map_err(|e| nats(format!("the event data of dead letter {id}: {e}")))?;
                dl.event.data = d.payload.to_vec();
            }
            Apart::InEvents(seq) => {
                let e =
                    self.events.get_raw_message(seq).await.map_err(|e| {
                        nats(format!("the event of dead letter {id} (#{seq}): {e}"))
                    })?;
                dl.event.data = e.payload.to_vec();
            }
        }
        Ok((dl, m.sequence))
    }
}

/// The field of a dead-letter record whose event's data is in a message
/// of its own.
const DATA_APART: &str = "data_apart";
/// The field of an older record that kept its event's data by reference:
/// the event's sequence in the events stream.
const EVENT_SEQ: &str = "event_seq";
/// Room kept in a dead-letter message for its headers.
pub(super) const DLQ_HEADROOM: usize = 1024;

/// The subject of the data of the dead letter on `subject`.
pub(super) fn data_subject(subject: &str) -> String {
    format!("{subject}.data")
}

/// Where a dead letter's event data is, when not in its record.
pub(super) enum Apart {
    No,
    Beside,
    InEvents(u64),
}

/// A dead-letter record, and where its event's data is if not in it.
pub(super) fn parse_dead_letter(body: &[u8]) -> Result<(DeadLetter, Apart), BrokerError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| nats(format!("unreadable dead letter: {e}")))?;
    let dl = DeadLetter::from_json(&v).map_err(|e| nats(format!("unreadable dead letter: {e}")))?;
    let apart = match (v[DATA_APART].as_bool(), v[EVENT_SEQ].as_u64()) {
        (Some(true), _) => Apart::Beside,
        (_, Some(seq)) => Apart::InEvents(seq),
        _ => Apart::No,
    };
    Ok((dl, apart))
}

#[async_trait]
impl DeadLetters for Nats {
    async fn dlq_list(&self) -> Result<Vec<DeadLetter>, BrokerError> {
        let i = &self.inner;
        scan(&i.dlq, &i.names.dlq_records())
            .await?
            .iter()
            .map(|m| parse_dead_letter(&m.payload).map(|(dl, _)| dl))
            .collect()
    }

    async fn dlq_get(&self, id: &str) -> Result<DeadLetter, BrokerError> {
        Ok(self.inner.dead_letter_entry(id).await?.0)
    }

    async fn dlq_replay(&self, id: &str) -> Result<(), BrokerError> {
        let i = &self.inner;
        let (dl, seq) = i.dead_letter_entry(id).await?;
        let subject = i.names.group_subject(&dl.step);
        let p = codec::message(&dl.event, &format!("{}/replay/{id}", dl.event.id), &i.seal);
        let ack = i.js.send_publish(subject.clone(), p).await.map_err(nats)?;
        stored(vec![(subject, ack)]).await?;
        i.dlq.delete_message(seq).await.map_err(nats)?;
        let data = data_subject(&i.names.dlq_subject(id));
        i.dlq.purge().filter(data).await.map_err(nats)?;
        Ok(())
    }

    async fn dlq_purge(&self, id: &str) -> Result<(), BrokerError> {
        let i = &self.inner;
        let (_, seq) = i.dead_letter_entry(id).await?;
        i.dlq.delete_message(seq).await.map_err(nats)?;
        let data = data_subject(&i.names.dlq_subject(id));
        i.dlq.purge().filter(data).await.map_err(nats)?;
        Ok(())
    }
}
