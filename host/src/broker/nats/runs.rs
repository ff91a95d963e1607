//! The run index on NATS ([`crate::broker::runs`]). The orchestrator
//! writes each run's entry as `runidx.ID` in the app's state bucket, in
//! the commits that write the run's record (`publish.rs`); retention
//! purges it with the record (`prune.rs`).
//!
//! Every host that is asked follows those entries into a [`MemIndex`]:
//! an ordered consumer of the bucket's stream, from the last entry of each
//! run (one pass over entries of a few hundred bytes, not over records),
//! then every change as it is stored. A query waits until the index holds
//! what was stored when it began to follow; from then on a run shows up
//! within moments of its commit, on every host. Runs retention pruned are
//! forgotten by the horizon the pruner records (a purge leaves no message
//! to follow).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, push};
use async_nats::jetstream::stream::Stream;
use futures_util::StreamExt;
use tokio::sync::watch;

use super::nats;
use crate::broker::BrokerError;
use crate::broker::runs::{MemIndex, RunCount, RunEntry, RunPage, RunQuery};

/// The key of run `id`'s entry in the state bucket.
pub(super) fn entry_key(id: &str) -> String {
    format!("{ENTRY}{id}")
}

/// The prefix of entries' keys.
pub(super) const ENTRY: &str = "runidx.";

/// How long a query waits for the index to load before it answers
/// "unavailable, try again".
const LOAD_WAIT: Duration = Duration::from_secs(30);
/// How often the follower looks at what retention pruned.
const HORIZON_EVERY: Duration = Duration::from_secs(10);

/// This host's copy of the index, and whether it is complete.
#[derive(Default)]
pub(super) struct Follower {
    started: AtomicBool,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    index: RwLock<MemIndex>,
    /// Whether the index holds everything stored when it began.
    loaded: watch::Sender<bool>,
    /// Why following stopped last, while it starts again.
    error: Mutex<Option<String>>,
}

/// Where the follower reads.
pub(super) struct Source {
    pub stream: Stream,
    /// `$KV.BUCKET.`
    pub prefix: String,
    /// The state bucket, for what retention pruned.
    pub state: async_nats::jetstream::kv::Store,
    pub closed: watch::Receiver<bool>,
}

impl Follower {
    /// Start following (the first call), and wait until the index is
    /// loaded.
    pub(super) async fn ready(&self, source: impl FnOnce() -> Source) -> Result<(), BrokerError> {
        if !self.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(follow(self.shared.clone(), source()));
        }
        let mut loaded = self.shared.loaded.subscribe();
        match tokio::time::timeout(LOAD_WAIT, loaded.wait_for(|l| *l)).await {
            Ok(Ok(_)) => Ok(()),
            _ => {
                let why = self.shared.error.lock().expect("error lock").clone();
                let n = self.shared.index.read().expect("index lock").len();
                Err(BrokerError::Nats(format!(
                    "the run index is still loading ({n} runs so far{}): try again shortly",
                    why.map(|w| format!("; {w}")).unwrap_or_default()
                )))
            }
        }
    }

    pub(super) fn query(&self, q: &RunQuery) -> RunPage {
        self.shared.index.read().expect("index lock").query(q)
    }

    pub(super) fn counts(&self) -> Vec<RunCount> {
        self.shared.index.read().expect("index lock").counts()
    }
}

/// Follow the entries until the broker closes; start again (from the
/// beginning, into a fresh index) when the consumer fails.
async fn follow(shared: Arc<Shared>, mut source: Source) {
    loop {
        match follow_once(&shared, &mut source).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!("following the run index: {e}; starting again");
                *shared.error.lock().expect("error lock") = Some(e.to_string());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn follow_once(shared: &Shared, source: &mut Source) -> Result<(), BrokerError> {
    let consumer = source
        .stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: format!("_INBOX.troupe.runs.{}", uuid::Uuid::new_v4().simple()),
            filter_subject: format!("{}{ENTRY}>", source.prefix),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    // Loaded into a fresh index, which replaces the served one once it
    // holds everything (a restart may have missed deletions).
    let mut fresh = Some(MemIndex::default());
    let mut pending = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await.map_err(nats)?;
    let mut horizon = tokio::time::interval(HORIZON_EVERY);
    let apply = |index: &mut MemIndex, m: &async_nats::jetstream::Message| {
        let Some(id) = m.subject.strip_prefix(&source.prefix) else {
            return;
        };
        let id = id.strip_prefix(ENTRY).unwrap_or(id);
        let op = m
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .map(|v| v.as_str().to_string());
        match op.as_deref() {
            Some("DEL") | Some("PURGE") => {
                index.remove(id);
            }
            _ => match serde_json::from_slice::<RunEntry>(&m.payload) {
                Ok(e) => index.put(e),
                Err(e) => tracing::warn!(run = %id, "unreadable run index entry: {e}"),
            },
        }
    };
    loop {
        if pending == 0
            && let Some(index) = fresh.take()
        {
            *shared.index.write().expect("index lock") = index;
            *shared.error.lock().expect("error lock") = None;
            shared.loaded.send_replace(true);
        }
        tokio::select! {
            m = messages.next() => {
                let m = match m {
                    Some(m) => m.map_err(nats)?,
                    None => return Err(BrokerError::Nats("the run index's consumer ended".into())),
                };
                if let Ok(info) = m.info() {
                    pending = info.pending;
                }
                match fresh.as_mut() {
                    Some(index) => apply(index, &m),
                    None => apply(&mut shared.index.write().expect("index lock"), &m),
                }
            }
            _ = horizon.tick() => forget_pruned(shared, &source.state).await,
            _ = source.closed.changed() => return Ok(()),
        }
    }
}

/// Forget the ended runs retention pruned: those last updated before the
/// horizon the pruner recorded.
async fn forget_pruned(shared: &Shared, state: &async_nats::jetstream::kv::Store) {
    let Ok(Some(v)) = state.get(super::PRUNED_KEY).await else {
        return;
    };
    let before = serde_json::from_slice::<serde_json::Value>(&v)
        .ok()
        .and_then(|p| p["runs_before"].as_str().and_then(crate::clock::epoch_ms));
    if let Some(before) = before {
        let n = shared
            .index
            .write()
            .expect("index lock")
            .forget_ended_before(crate::broker::ENDED_RUN_STATES, before);
        if n > 0 {
            tracing::debug!(runs = n, "forgot pruned runs in the run index");
        }
    }
}
