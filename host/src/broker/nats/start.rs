//! Where a step's consumer of an event type starts reading.
//!
//! Events of a type live on the namespace's events stream whether or not
//! any host runs, so a new durable consumer must be told where to begin:
//!
//! - **the app's first start**: from the app's epoch, the moment something
//!   was first published through it (`troupe publish`, the API) or it first
//!   started, so nothing published to an app before its first host is lost
//!   (the embedded broker keeps the same promise). The epoch is a key-value
//!   entry (`app/epoch`) whose time is the server's, so hosts' clocks do not
//!   matter.
//! - **a step added to an app that has run before** (`app/started` is
//!   set): from the step's own first start. Replaying a type's whole history
//!   into a new step could be millions of events, each with its effects; a
//!   step that needs the past is given it by publishing it again.
//!
//! A consumer that exists keeps its position: these rules only pick the
//! start of a new one.

use std::sync::atomic::Ordering;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::kv::CreateErrorKind;

use super::{Inner, nats};
use crate::broker::BrokerError;

const EPOCH: &str = "app/epoch";
const STARTED: &str = "app/started";

impl Inner {
    /// Record the app's epoch if it has none yet (once per process).
    pub(super) async fn mark_epoch(&self) -> Result<(), BrokerError> {
        if self.epoch_marked.load(Ordering::Relaxed) {
            return Ok(());
        }
        match self.state.create(EPOCH, "epoch".into()).await {
            Ok(_) => {}
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(nats(format!("the app's epoch: {e}"))),
        }
        self.epoch_marked.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Where a new consumer of an event type starts (see the module).
    pub(super) async fn type_start(&self) -> Result<DeliverPolicy, BrokerError> {
        if self.state.get(STARTED).await.map_err(nats)?.is_some() {
            return Ok(DeliverPolicy::New);
        }
        self.mark_epoch().await?;
        let epoch = self.state.entry(EPOCH).await.map_err(nats)?;
        Ok(match epoch {
            Some(e) => DeliverPolicy::ByStartTime {
                start_time: e.created,
            },
            None => DeliverPolicy::New,
        })
    }

    /// Every step of the app is subscribed: from now on a new step is one
    /// added to an app that has run.
    pub(super) async fn mark_started(&self) -> Result<(), BrokerError> {
        self.state
            .put(STARTED, "started".into())
            .await
            .map_err(nats)?;
        Ok(())
    }
}
