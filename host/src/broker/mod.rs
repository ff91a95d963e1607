//! The message broker: a small trait, and its backends.
//!
//! - [`embedded`]: the default. SQLite in the app's `.troupe/` folder, group
//!   commits, in-memory dispatch. One host per app.
//! - [`nats`]: NATS JetStream. Many hosts per app, many apps per account.
//!
//! [`BrokerUrl`] says which (`--broker`, `TROUPE_BROKER`, or `[broker]` in
//! `troupe.toml`) and [`open`] opens it.
//!
//! The trait, in five facets (`Transport`, `RunState`, `DeadLetters`,
//! `Traces`, `Buckets`), is what the rest of Troupe sees. Its promises, which every
//! backend keeps:
//!
//! - **`publish` returns only when the events are durable**; nothing a
//!   producer was told is accepted is lost when the process dies.
//! - One consumer group per subscribed step: each event of a kind the group
//!   subscribed to is delivered to one member of the group, at least once.
//! - **`complete` acknowledges a delivery and publishes what the step
//!   emitted as one unit** where the backend can (the embedded one does, in
//!   one transaction); elsewhere outputs are published first, then the ack,
//!   so a crash between them yields a duplicate with the same event id,
//!   never a loss.
//! - `fail` redelivers with exponential backoff up to the group's retry
//!   budget, then dead-letters; `dead_letter` does so at once.
//! - A dead letter keeps the original event, the step, the reason class and
//!   the message (escaped and cut to [`crate::text::MAX_REASON`]), and can
//!   be replayed to the same step.

mod dead_letter;
pub mod embedded;
mod error;
mod health;
pub mod nats;
pub mod retention;
pub mod runs;
mod url;

pub use dead_letter::{DeadLetter, DlqFilter};
pub use error::{BrokerError, ErrorKind};

pub use health::{Failing, Health, LOW_DISK};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::event::Event;
use crate::protocol::FailureClass;
use crate::retry::RetryPolicy;

/// How the backend that made a delivery identifies it when it is settled:
/// opaque to everyone else (the embedded broker keeps its event's
/// sequence number here, NATS the message's acknowledgement handle). A
/// backend handed another's delivery finds nothing of its own in it.
#[derive(Clone)]
pub struct Ack(Arc<dyn std::any::Any + Send + Sync>);

impl Ack {
    pub(crate) fn new<T: std::any::Any + Send + Sync>(token: T) -> Ack {
        Ack(Arc::new(token))
    }

    /// The backend's token, if this delivery is of that backend.
    pub(crate) fn get<T: std::any::Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ack(..)")
    }
}

/// One event handed to one consumer group.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The consumer group (the step's name).
    pub group: Arc<str>,
    pub event: Arc<Event>,
    /// 1 for the first delivery, 2 for the first retry, ...
    pub attempt: u32,
    pub(crate) ack: Ack,
    /// The version of the step that handled it (its deployment and its
    /// component's digest), set by the worker: a dead letter records it.
    pub version: Option<(u64, Arc<str>)>,
}

/// What happened to a failed delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// It will be delivered again after this wait.
    Retry(Duration),
    /// The retry budget is spent: it is in the DLQ under this id.
    DeadLettered(String),
}

/// Which broker an app runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerUrl {
    /// `embedded`: SQLite in the app's state folder (the default).
    Embedded,
    /// `nats://[USER:PASSWORD@]HOST:PORT[/NAMESPACE]`: NATS JetStream.
    /// Apps that share a namespace (default `troupe`) share events. The
    /// password is never shown (`Display` writes `***`).
    Nats { server: String, namespace: String },
}

/// Open the broker `url` names for the app `app_name` whose state folder is
/// `state_dir`. Must be called within a tokio runtime.
pub async fn open(
    url: &BrokerUrl,
    app_name: &str,
    state_dir: &std::path::Path,
    retention: &retention::Retention,
) -> Result<Arc<dyn Broker>, BrokerError> {
    Ok(match url {
        BrokerUrl::Embedded => Arc::new(embedded::Embedded::open(state_dir, retention)?),
        BrokerUrl::Nats { server, namespace } => {
            Arc::new(nats::Nats::connect(server, namespace, app_name, retention).await?)
        }
    })
}

/// The events of the app `app_name` as a process other than its host
/// reaches them (the CLI): the embedded broker's files, whether or not a
/// host holds them, or the NATS server itself.
pub async fn open_app_events(
    url: &BrokerUrl,
    app_name: &str,
    state_dir: &std::path::Path,
) -> Result<Arc<dyn AppEvents>, BrokerError> {
    Ok(match url {
        BrokerUrl::Embedded => Arc::new(embedded::Offline::new(state_dir)),
        BrokerUrl::Nats { server, namespace } => {
            Arc::new(nats::Nats::connect(server, namespace, app_name, &Default::default()).await?)
        }
    })
}

/// What a failed attempt of `d` leads to under its group's retry `policy`
/// (`None`: the group is unknown): another delivery after this wait, or,
/// with the budget spent, `None`: the DLQ.
pub(crate) fn next_try(
    policy: Option<RetryPolicy>,
    d: &Delivery,
) -> Result<Option<Duration>, BrokerError> {
    let policy =
        policy.ok_or_else(|| BrokerError::Misuse(format!("unknown group {:?}", d.group)))?;
    Ok((d.attempt < policy.max_attempts).then(|| policy.backoff(d.attempt)))
}

/// What [`Transport::commit_then`] does as one unit.
#[derive(Debug, Default)]
pub struct Commit {
    /// The delivery to settle.
    pub ack: Option<Delivery>,
    /// Events to publish (routed by type, or to the group named by their
    /// `troupeto` extension).
    pub events: Vec<Event>,
    /// State rows to write (`None` deletes).
    pub state: Vec<(String, Option<Vec<u8>>)>,
    /// A step's bucket writes, applied before anything else of the commit
    /// and only if every version its invocation read is still the
    /// committed one and the buckets stay within `limits`; otherwise
    /// nothing of the commit is applied ([`BrokerError::Refused`]).
    pub kv: Option<KvCommit>,
    /// Deliver `events` as soon as they are written, before they are
    /// durable, where the backend can (the embedded one). Only for events
    /// that can be derived again from what is durable: the orchestrator's
    /// commands (and hybrid steps' events) sent on a step's reply (the
    /// reply is durable, and after a crash the run is rebuilt from it and
    /// the same event, same id, is sent again). Whatever the receiver commits in turn still becomes
    /// visible only after this commit is durable: commits are applied and
    /// made durable in order.
    pub early: bool,
    /// State rows (written by this commit or earlier) that record
    /// something that ended with it, a run: kept for `[retention] runs`
    /// from now, then pruned.
    pub ended: Vec<String>,
    /// State rows named `ended` by an earlier commit that record
    /// something going on again (a redriven run): no longer pruned.
    pub reopened: Vec<String>,
    /// The run index's entries of runs whose record this commit writes
    /// ([`runs`]).
    pub runs: Vec<runs::RunEntry>,
}

/// An invocation's state changes, for its commit.
#[derive(Debug, Clone)]
pub struct KvCommit {
    pub writes: crate::kv::Writes,
    pub limits: crate::kv::KvLimits,
}

/// A callback that receives the outcome of a broker call.
pub type Then = Box<dyn FnOnce(Result<(), BrokerError>) + Send>;

/// A step state read that failed in the broker, as the guest sees it.
pub(crate) fn read_error(e: BrokerError) -> crate::kv::ReadError {
    crate::kv::ReadError(e.to_string())
}

/// The members of one consumer group take deliveries from this.
#[async_trait]
pub trait Consumer: Send + Sync {
    /// The next delivery, waiting for one; `None` once the broker closes.
    async fn next(&self) -> Option<Delivery>;

    /// Stop taking the group's deliveries in this process, handing what it
    /// holds back to the group's other members at once (a host that cannot
    /// load the app's current deployment), or take them again. A broker
    /// that serves one host (embedded) has no other member to hand to.
    fn pause(&self, _paused: bool) {}

    /// Hand back a delivery taken and not handled, for another member (or
    /// this one, later) to take.
    fn hand_back(&self, d: Delivery);
}

/// A message broker backend: its facets. The host holds an
/// `Arc<dyn Broker>` and uses the facet it needs (import the facet's trait
/// to call its methods); what needs fewer takes fewer: the CLI reaches an
/// app whose host may be running through [`AppEvents`] (publish, dead
/// letters, traces), which the embedded broker's files serve without a
/// host (`embedded::Offline`) and NATS serves as it is.
pub trait Broker: Transport + RunState + DeadLetters + Traces + Buckets {}

impl<T: Transport + RunState + DeadLetters + Traces + Buckets> Broker for T {}

/// What a producer or an operator needs of an app's broker, whether or not
/// its host runs: publish, dead letters, traces.
pub trait AppEvents: Publish + DeadLetters + Traces + Buckets {
    /// Whether publishing and replays are queued for the app's host (the
    /// embedded broker's files) rather than done at once (NATS).
    fn queued(&self) -> bool {
        false
    }
}

/// Publishing events durably.
#[async_trait]
pub trait Publish: Send + Sync {
    /// Publish events; returns when they are durable. An event whose id was
    /// already published is ignored (deduplication).
    async fn publish(&self, events: Vec<Event>) -> Result<(), BrokerError>;

    /// Whether `event` fits in one of this broker's messages
    /// ([`BrokerError::TooLarge`] if not). Checked before an event is
    /// accepted or committed, so that nothing is taken on that the broker
    /// cannot store (it would be redelivered forever).
    fn check_size(&self, _event: &Event) -> Result<(), BrokerError> {
        Ok(())
    }
}

/// Moving events: groups subscribe, deliveries are settled (with what
/// handling them emitted, as one commit), retried or dead-lettered.
#[async_trait]
pub trait Transport: Publish {
    /// Declare consumer group `group` for event types `kinds`, with its retry
    /// budget. Deliveries left pending by an earlier process are resumed.
    async fn subscribe(
        &self,
        group: &str,
        kinds: &[String],
        retry: RetryPolicy,
    ) -> Result<Arc<dyn Consumer>, BrokerError>;

    /// Change the event types group `group` takes (a deploy): from now on
    /// it is routed events of `kinds` and no more of the types it no longer
    /// consumes. Its commands are unchanged, and so are the deliveries of
    /// dropped types it already has (its workers settle them). A group not
    /// subscribed in this process is left alone.
    async fn route(&self, group: &str, kinds: &[String]) -> Result<(), BrokerError>;

    /// This process stops taking `group`'s deliveries (the orchestrator of
    /// a host that lost its lease): once its consumer is dropped, what it
    /// had taken and not settled goes to the group's other members, and
    /// the group may be subscribed again. A broker that serves one host
    /// (embedded) never needs it.
    fn unsubscribe(&self, _group: &str) {}

    /// Every group is declared: start taking events queued from outside
    /// (other processes' `troupe publish`) and routing them.
    async fn ready(&self) -> Result<(), BrokerError>;

    /// Settle a delivery, publish events and write state rows as one unit
    /// (atomically in the embedded broker), without waiting: returns at
    /// once, and `then` is called with the outcome once it is known (on a
    /// broker thread; it must not block). Workers and the orchestrator use
    /// this, so that neither ever waits for a commit.
    fn commit_then(&self, commit: Commit, then: Then);

    /// Acknowledge `delivery` and publish what handling it emitted; returns
    /// when that is durable.
    async fn complete(&self, delivery: &Delivery, emitted: Vec<Event>) -> Result<(), BrokerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let commit = Commit {
            ack: Some(delivery.clone()),
            events: emitted,
            ..Commit::default()
        };
        self.commit_then(
            commit,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.map_err(|_| BrokerError::Closed)?
    }

    /// A retryable failure: redeliver later, or dead-letter as `class` when
    /// the group's retry budget is spent.
    async fn fail(
        &self,
        delivery: &Delivery,
        class: FailureClass,
        message: &str,
    ) -> Result<Disposition, BrokerError>;

    /// Dead-letter `delivery` now; returns the DLQ id.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        class: FailureClass,
        message: &str,
    ) -> Result<String, BrokerError>;

    /// Deliveries not yet settled (waiting, in flight, or backing off).
    async fn backlog(&self) -> Result<u64, BrokerError>;

    /// What the backend knows of its health, now.
    fn health(&self) -> Health {
        Health::default()
    }

    /// Stop delivering: consumers get `None`. Calls already made still
    /// complete; dropping the broker flushes them.
    async fn close(&self);
}

/// The orchestrator's durable state: rows by key (runs, idempotency
/// keys), written in the same commits as the events, and the lease that
/// says which host drives an app's flows.
#[async_trait]
pub trait RunState: Send + Sync {
    /// The largest state row (a run's record) the broker stores, if it has
    /// a limit.
    fn max_state_bytes(&self) -> Option<usize> {
        None
    }

    /// A state row (the orchestrator's runs), if there is one.
    async fn state_get(&self, key: &str) -> Result<Option<Vec<u8>>, BrokerError>;

    /// State rows whose key starts with `prefix`.
    async fn state_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, BrokerError>;

    /// Write state row `key` only if there is none (a deployment's
    /// record): whether it was written; `false` if the key was taken
    /// first. Returns once the row is durable.
    async fn state_create(&self, key: &str, value: Vec<u8>) -> Result<bool, BrokerError>;

    /// Hold lease `name` as `holder` for `ttl`: take it if nobody holds it
    /// or its holder let it expire, extend it if `holder` holds it.
    /// Whether `holder` holds it now. A backend that serves one host (the
    /// embedded one) grants every lease.
    async fn lease(&self, _name: &str, _holder: &str, _ttl: Duration) -> Result<bool, BrokerError> {
        Ok(true)
    }

    /// A page of the runs `query` asks for, newest first, from the run
    /// index ([`runs`]): never a scan of every run.
    async fn runs_list(&self, query: &runs::RunQuery) -> Result<runs::RunPage, BrokerError>;

    /// How many runs of each flow are in each state.
    async fn runs_counts(&self) -> Result<Vec<runs::RunCount>, BrokerError>;

    /// Steps' buckets, as their invocations read them (see [`crate::kv`]),
    /// for a host that runs steps (on NATS, it takes part in applying the
    /// app's state commits from then on); `None` where this broker keeps
    /// no step state (a step's bucket calls fail inside the guest).
    fn kv_reader(&self) -> Option<Arc<dyn crate::kv::Reader>> {
        None
    }
}

/// The dead-letter queue: what could not be handled, kept with its
/// reason class, and replayable.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Dead letters, oldest first.
    async fn dlq_list(&self) -> Result<Vec<DeadLetter>, BrokerError>;

    /// One dead letter.
    async fn dlq_get(&self, id: &str) -> Result<DeadLetter, BrokerError>;

    /// Deliver a dead letter to its step again, with a fresh retry budget,
    /// and remove it from the DLQ.
    async fn dlq_replay(&self, id: &str) -> Result<(), BrokerError>;

    /// Remove a dead letter from the DLQ without delivering it.
    async fn dlq_purge(&self, id: &str) -> Result<(), BrokerError>;
}

/// Steps' buckets as an operator sees them (`troupe kv`, `GET /v1/kv`):
/// outside any step's invocation. A write is applied at once, in a commit
/// of its own, with a new version, so an invocation that read the entry
/// before is run again ([`crate::kv`]); no quota applies to it.
#[async_trait]
pub trait Buckets: Send + Sync {
    /// `bucket`'s keys, sorted (none for a bucket never written).
    async fn bucket_keys(&self, bucket: &str) -> Result<Vec<String>, BrokerError>;

    /// The entry `bucket`/`key`: its value and version.
    async fn bucket_entry(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, crate::kv::Version)>, BrokerError>;

    /// Set `bucket`/`key` to `value` (`None` deletes it).
    async fn bucket_write(
        &self,
        bucket: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), BrokerError>;
}

/// What is wrong with `bucket` and `key` (if one is given), as a caller's
/// error.
pub(crate) fn check_entry_name(bucket: &str, key: Option<&str>) -> Result<(), BrokerError> {
    if !crate::kv::valid_bucket(bucket) {
        return Err(BrokerError::BadInput(format!(
            "{:?} is not a bucket name (1 to 64 lowercase letters, digits, `-` and `_`, \
             starting with a letter or digit)",
            crate::text::clean(bucket, 80)
        )));
    }
    match key {
        Some("") => Err(BrokerError::BadInput("a key must not be empty".into())),
        Some(k) if k.len() > crate::kv::MAX_KEY_BYTES => Err(BrokerError::BadInput(format!(
            "a key is at most {} bytes",
            crate::kv::MAX_KEY_BYTES
        ))),
        _ => Ok(()),
    }
}

/// Reading the log back: every event of a cascade or a run.
#[async_trait]
pub trait Traces: Send + Sync {
    /// Every event with correlation id `correlation_id` (a cascade or a
    /// run), in the order they were published.
    async fn trace(&self, correlation_id: &str) -> Result<Vec<Event>, BrokerError>;

    /// Whether [`Traces::trace`] is an index lookup rather than a scan of
    /// the log. Where it is, the orchestrator writes a run's record only at
    /// the transitions the log does not hold, and rebuilds the others from
    /// the run's replies after a restart (`Machine::replay` in `orchestrator/machine/`).
    fn indexed_trace(&self) -> bool {
        false
    }

    /// What retention has pruned so far, to explain a trace or a run
    /// asked for and not found.
    async fn horizon(&self) -> Result<Horizon, BrokerError> {
        Ok(Horizon::default())
    }
}

/// How far retention (`[retention]`, [`retention::Retention`]) has pruned.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Horizon {
    /// Settled events stored before this time (RFC 3339) may be gone.
    pub events_before: Option<String>,
    /// Runs that ended before this time may be gone.
    pub runs_before: Option<String>,
    /// Dead letters older than this may be gone.
    pub dead_letters_before: Option<String>,
    /// The store reached `max_store`, and events or runs younger than
    /// their age were pruned to stay under it.
    pub capped: bool,
}

impl Horizon {
    /// What to add to "not found" for a trace: `; settled events stored
    /// before T have been pruned (...)`, if any were.
    pub fn events_note(&self) -> String {
        self.note(&self.events_before, "settled events stored", "events")
    }

    /// What to add to "not found" for a run.
    pub fn runs_note(&self) -> String {
        self.note(&self.runs_before, "runs that ended", "runs")
    }

    fn note(&self, before: &Option<String>, what: &str, field: &str) -> String {
        match before {
            None => String::new(),
            Some(t) => format!(
                "; {what} before {t} have been pruned ([retention] {field}{})",
                if self.capped { ", or max_store" } else { "" }
            ),
        }
    }
}

/// The state rows the broker knows as runs' records: `run/ID`, where ID
/// is the correlation id of the run's events. Until such a row is named
/// in a commit's [`Commit::ended`], its run's events are never pruned
/// (the run's recovery replays them).
pub const RUN_ROW: &str = "run/";

/// The `state` of a run record that has ended, for stores written before
/// [`Commit::ended`] (the orchestrator's `RunState::is_final`, checked
/// against this list by its tests).
pub const ENDED_RUN_STATES: &[&str] = &[
    "completed",
    "compensated",
    "failed",
    "timed_out",
    "cancelled",
];
