//! The NATS JetStream backend: for more than one host, and for the apps of
//! different teams that exchange events through one NATS account.
//!
//! What lives on the server (names in [`codec`]):
//!
//! - stream `NS_EVENTS` holds every event (subjects `NS.ev.TYPE`) and every
//!   message addressed to one consumer group (`NS.to.APP.GROUP`: commands,
//!   replies, replays). Each message carries its event's identity (a UUIDv5
//!   of its source and id, [`Event::identity`]) as `Nats-Msg-Id`, so a
//!   republished event (a redelivered step's outputs) is dropped by
//!   the server within the stream's duplicate window.
//! - one durable pull consumer per (app, group, subject). Every host of an
//!   app binds the same consumers, so each message goes to one host: the
//!   consumer is the queue group. Acks are explicit; a failed attempt is
//!   NAKed with the group's backoff; when the group's budget is spent the
//!   message is dead-lettered by the host, not dropped by the server.
//! - stream `NS_DLQ`, one message per dead letter (`NS.dlq.APP.ID`, the dead
//!   letter as JSON; its event's data beside it when too large), deleted
//!   when replayed.
//! - key-value bucket `NS_APP_state`: the orchestrator's run records.
//! - steps' buckets: key-value bucket `NS_APP_kv`, written only by the
//!   applier of the commit log `NS_KVLOG_APP` (`state/`).
//!
//! Nothing here is atomic across messages: [`Transport::commit_then`]
//! hands the server the outputs, then the state rows, in that order,
//! waits until it has stored them all, and only then acks. A crash in
//! between redelivers the input; the outputs then get the same ids and are
//! deduplicated. Known gap: a crash between the events and the rows of a
//! run's start leaves a command without its run's record (the step runs
//! for a run that does not exist); sending the rows first would close it.
//!
//! Layout: `codec.rs` maps names to subjects, streams and consumers, and
//! events to messages; `dlq.rs` writes and reads dead letters; `rows.rs`
//! the orchestrator's rows and lease in the state bucket; `start.rs`
//! says where a new step's consumer starts; `prune.rs` is retention;
//! `publish.rs` puts events and state rows on the
//! server (and runs the ordered commit task); `pulling.rs` takes messages
//! off it (the consumers' pull tasks, stream scans); `state/` keeps
//! steps' buckets and commits their writes; this file declares
//! what lives on the server and implements the broker's facets on top.

mod auth;
mod codec;
mod dlq;
mod prune;
mod publish;
mod pulling;
mod rows;
mod runs;
mod seal;
mod start;
mod state;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind, Context,
    consumer::DeliverPolicy,
    kv,
    message::Acker,
    stream::{self, Stream},
};
use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use super::{
    AppEvents, BrokerError, Commit, Consumer, Delivery, Disposition, FailureClass, Publish, Traces,
    Transport,
};
use crate::event::Event;
use crate::retry::RetryPolicy;

pub use codec::{Names, valid_namespace};
pub use prune::purge_namespace;
use publish::{Publisher, stored};
use pulling::{Group, Pull, scan};

/// How long a delivery may stay unsettled before the server hands it to
/// another host. Steps are bounded by their deadline, far below this.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Messages a host pulls ahead per consumer; what it holds, other hosts
/// cannot take until it settles them (or dies and `ACK_WAIT` passes).
const PULL_BATCH: usize = 64;
/// How long a pull request stays open. async-nats counts what its open
/// requests will still bring, and can lose count when messages come in
/// before the request is answered; it then waits for the request to
/// expire (plus 5 s) before asking again, however much is waiting. A short
/// expiry bounds that stall, at the cost of one request per consumer this
/// often when idle.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// The stream's deduplication window for `Nats-Msg-Id`.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The state row where retention records what it pruned (`prune.rs`;
/// the run index forgets the pruned runs by it, `runs.rs`).
const PRUNED_KEY: &str = "app/pruned";

/// The state row beside a run's that says it ended (`prune.rs`):
/// `_ended.KEY`, one per row named in [`Commit::ended`].
const ENDED_MARKER: &str = "_ended.";

/// The stream of key-value bucket `bucket`, declared as the key-value API
/// would (async-nats's own `create_key_value` asks for account details in
/// a form that 2.9 servers do not answer).
fn kv_stream(bucket: &str) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

fn nats(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Nats(e.to_string())
}

/// How a NATS delivery is settled.
pub(crate) struct NatsAck {
    acker: Acker,
    /// The message's sequence in the events stream.
    stream_seq: u64,
}

impl std::fmt::Debug for NatsAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NatsAck({})", self.stream_seq)
    }
}

fn acker(d: &Delivery) -> Result<&NatsAck, BrokerError> {
    d.ack.get::<NatsAck>().ok_or_else(|| {
        BrokerError::Misuse("a delivery of another broker cannot be settled here".into())
    })
}

struct Inner {
    names: Names,
    /// The app's key for host-owned extensions (`seal.rs`).
    seal: seal::Seal,
    js: Context,
    publisher: Publisher,
    events: Stream,
    dlq: Stream,
    state: kv::Store,
    /// The stream behind `state`.
    state_stream: Stream,
    /// What `[retention]` lets go (`prune.rs`), and whether this host
    /// prunes.
    retention: crate::broker::retention::Retention,
    pruning: std::sync::atomic::AtomicBool,
    pruned: prune::Counts,
    groups: RwLock<HashMap<Arc<str>, Arc<Group>>>,
    closed: watch::Sender<bool>,
    /// The largest message the server takes (headers and payload).
    max_payload: usize,
    /// Whether the app's epoch is known to be recorded (`start.rs`).
    epoch_marked: std::sync::atomic::AtomicBool,
    /// Commits, in order, for [`Inner::commits`].
    commits: mpsc::UnboundedSender<(Commit, super::Then)>,
    /// Steps' buckets.
    kv: Arc<state::Kv>,
    /// Whether the server takes writes (`/readyz`).
    writes: Arc<crate::broker::health::Writes>,
    /// This host's copy of the run index (`runs.rs`).
    runs: runs::Follower,
}

/// The NATS JetStream broker.
pub struct Nats {
    inner: Arc<Inner>,
}

impl Nats {
    /// Connect to `server` and declare what namespace `ns` and `app` need.
    /// A host prunes by `retention` once its steps are subscribed
    /// ([`Transport::ready`]).
    pub async fn connect(
        server: &str,
        ns: &str,
        app: &str,
        retention: &crate::broker::retention::Retention,
    ) -> Result<Nats, BrokerError> {
        let (options, server) = auth::connect_options(server);
        let client = options
            .name(format!("troupe {app}"))
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|e| async move {
                match e {
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS disconnected; reconnecting")
                    }
                    other => tracing::debug!("NATS: {other}"),
                }
            })
            .connect(server.as_str())
            .await
            .map_err(|e| BrokerError::Nats(format!("cannot connect to {server}: {e}")))?;
        let max_payload = client.server_info().max_payload;
        let js = jetstream::new(client.clone());
        let names = Names::new(ns, app);
        let events = open_stream(
            &js,
            stream::Config {
                name: names.events_stream(),
                subjects: vec![format!("{ns}.ev.>"), format!("{ns}.to.>")],
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| nats(format!("stream {}: {e}", names.events_stream())))?;
        let dlq = open_stream(
            &js,
            stream::Config {
                name: names.dlq_stream(),
                subjects: vec![format!("{ns}.dlq.>")],
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| nats(format!("stream {}: {e}", names.dlq_stream())))?;
        let bucket = names.state_bucket();
        let state_stream = open_stream(&js, kv_stream(&bucket))
            .await
            .map_err(|e| nats(format!("bucket {bucket}: {e}")))?;
        let state = js
            .get_key_value(&bucket)
            .await
            .map_err(|e| nats(format!("bucket {bucket}: {e}")))?;
        let seal = seal::Seal::of_app(&state).await?;
        let kv = state::Kv::open(client, js.clone(), &names, max_payload).await?;
        let (commits, rx) = mpsc::unbounded_channel();
        let broker = Nats {
            inner: Arc::new(Inner {
                publisher: Publisher {
                    names: names.clone(),
                    js: js.clone(),
                    seal: seal.clone(),
                },
                seal,
                names,
                js,
                events,
                dlq,
                state,
                state_stream,
                retention: retention.clone(),
                pruning: Default::default(),
                pruned: Default::default(),
                groups: RwLock::new(HashMap::new()),
                closed: watch::channel(false).0,
                max_payload,
                epoch_marked: Default::default(),
                commits,
                kv,
                writes: Default::default(),
                runs: Default::default(),
            }),
        };
        tokio::spawn(broker.inner.publisher.clone().commits(rx));
        tokio::spawn(publish::probe(
            broker.inner.writes.clone(),
            broker.inner.state.clone(),
            broker.inner.closed.subscribe(),
        ));
        Ok(broker)
    }
}

impl Inner {
    /// The run index, loaded (`runs.rs`).
    async fn run_index(&self) -> Result<&runs::Follower, BrokerError> {
        self.runs
            .ready(|| runs::Source {
                stream: self.state_stream.clone(),
                prefix: format!("$KV.{}.", self.names.state_bucket()),
                state: self.state.clone(),
                closed: self.closed.subscribe(),
            })
            .await?;
        Ok(&self.runs)
    }

    async fn publish(&self, events: &[Event]) -> Result<(), BrokerError> {
        let r = async { stored(self.publisher.send(events, &[]).await?).await }.await;
        publish::note(&self.writes, &r, None);
        r
    }
}

impl AppEvents for Nats {}

#[async_trait]
impl Publish for Nats {
    async fn publish(&self, events: Vec<Event>) -> Result<(), BrokerError> {
        for e in &events {
            self.check_size(e)?;
        }
        // Before the events: a first host must start reading at or before
        // them (`start.rs`).
        self.inner.mark_epoch().await?;
        self.inner.publish(&events).await
    }

    fn check_size(&self, e: &Event) -> Result<(), BrokerError> {
        let max = self.inner.max_payload;
        if !codec::may_exceed(e, max) {
            return Ok(());
        }
        let len = codec::wire_len(e, &e.identity());
        if len > max {
            return Err(BrokerError::TooLarge(format!(
                "a {} event of {len} bytes (data and attributes) does not fit in a NATS \
                 message: the server takes at most {max} bytes (max_payload)",
                crate::text::clean(&e.kind, 200)
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Transport for Nats {
    async fn subscribe(
        &self,
        group: &str,
        kinds: &[String],
        retry: RetryPolicy,
    ) -> Result<Arc<dyn Consumer>, BrokerError> {
        let i = &self.inner;
        let name: Arc<str> = group.into();
        if i.groups.read().expect("groups lock").contains_key(&name) {
            return Err(BrokerError::Misuse(format!(
                "group {group:?} is already subscribed"
            )));
        }
        // Commands and replays for the group, then each type it consumes
        // (from where `start.rs` says, when the consumer is new).
        let mut subjects = vec![(i.names.group_subject(group), DeliverPolicy::All)];
        if !kinds.is_empty() {
            let from = i.type_start().await?;
            for k in kinds {
                subjects.push((i.names.event_subject(k)?, from));
            }
        }
        let (tx, rx) = async_channel::bounded(PULL_BATCH);
        let paused = watch::Sender::new(false);
        let mut pulls = Vec::new();
        for (subject, deliver_policy) in subjects {
            pulls.push(
                i.start_pull(&name, subject, deliver_policy, &tx, paused.subscribe())
                    .await?,
            );
        }
        let g = Arc::new(Group {
            retry,
            pulls: std::sync::Mutex::new(pulls),
            tx,
            rx,
            paused,
            runtime: tokio::runtime::Handle::current(),
        });
        i.groups
            .write()
            .expect("groups lock")
            .insert(name, g.clone());
        Ok(g)
    }

    async fn route(&self, group: &str, kinds: &[String]) -> Result<(), BrokerError> {
        let i = &self.inner;
        let Some(g) = i.groups.read().expect("groups lock").get(group).cloned() else {
            return Ok(());
        };
        let name: Arc<str> = group.into();
        let commands = i.names.group_subject(group);
        let mut wanted = Vec::new();
        for k in kinds {
            wanted.push(i.names.event_subject(k)?);
        }
        let have: Vec<String> = g
            .pulls
            .lock()
            .expect("pulls lock")
            .iter()
            .map(|p| p.subject.clone())
            .collect();
        // New types from now on (the app has started: `type_start` says
        // so), the way a step added to a running app starts.
        for subject in wanted.iter().filter(|s| !have.contains(s)) {
            let from = i.type_start().await?;
            let p = i
                .start_pull(&name, subject.clone(), from, &g.tx, g.paused.subscribe())
                .await?;
            g.pulls.lock().expect("pulls lock").push(p);
        }
        // Types no longer consumed: stop pulling, and delete the durable
        // consumer, which would otherwise hold retention back forever.
        let dropped: Vec<Pull> = {
            let mut pulls = g.pulls.lock().expect("pulls lock");
            let (keep, drop): (Vec<Pull>, Vec<Pull>) = std::mem::take(&mut *pulls)
                .into_iter()
                .partition(|p| p.subject == commands || wanted.contains(&p.subject));
            *pulls = keep;
            drop
        };
        for p in dropped {
            let _ = p.stop.send(true);
            if let Err(e) = i.events.delete_consumer(&p.durable).await {
                tracing::warn!(group, consumer = %p.durable, "cannot delete a consumer no longer used: {e}");
            }
        }
        Ok(())
    }

    fn unsubscribe(&self, group: &str) {
        // Its pull tasks end once the group's receiver is dropped: what
        // they fetched then is redelivered to the other hosts.
        self.inner
            .groups
            .write()
            .expect("groups lock")
            .remove(group);
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        self.inner.mark_started().await?;
        self.inner.start_pruning().await
    }

    fn commit_then(&self, c: Commit, then: super::Then) {
        let (writes, d) = (self.inner.writes.clone(), c.ack.clone());
        let then: super::Then = Box::new(move |r| {
            publish::note(&writes, &r, d);
            then(r)
        });
        // With step state: through the applier (`state/`), not in order
        // with other commits (a step's commits need none).
        if c.kv.as_ref().is_some_and(|kv| !kv.writes.is_empty()) {
            let (kv, publisher) = (self.inner.kv.clone(), self.inner.publisher.clone());
            let runtime = kv.runtime.clone();
            runtime.spawn(async move { then(kv.commit(c, publisher).await) });
            return;
        }
        if let Err(mpsc::error::SendError((_, then))) = self.inner.commits.send((c, then)) {
            then(Err(BrokerError::Closed));
        }
    }

    async fn fail(
        &self,
        d: &Delivery,
        class: FailureClass,
        message: &str,
    ) -> Result<Disposition, BrokerError> {
        let policy = self
            .inner
            .groups
            .read()
            .expect("groups lock")
            .get(&d.group)
            .map(|g| g.retry.clone());
        let Some(delay) = super::next_try(policy, d)? else {
            return self
                .inner
                .dead_letter(d, class, message)
                .await
                .map(Disposition::DeadLettered);
        };
        acker(d)?
            .acker
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(nats)?;
        Ok(Disposition::Retry(delay))
    }

    async fn dead_letter(
        &self,
        d: &Delivery,
        class: FailureClass,
        message: &str,
    ) -> Result<String, BrokerError> {
        self.inner.dead_letter(d, class, message).await
    }

    async fn backlog(&self) -> Result<u64, BrokerError> {
        let i = &self.inner;
        let names: Vec<String> = i
            .groups
            .read()
            .expect("groups lock")
            .values()
            .flat_map(|g| {
                g.pulls
                    .lock()
                    .expect("pulls lock")
                    .iter()
                    .map(|p| p.durable.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut n = 0;
        for c in names {
            let info = i.events.consumer_info(&c).await.map_err(nats)?;
            n += info.num_pending + info.num_ack_pending as u64;
        }
        Ok(n)
    }

    fn health(&self) -> super::Health {
        use async_nats::connection::State;
        let disconnected = match self.inner.js.client().connection_state() {
            State::Connected => None,
            State::Pending => Some("connecting to the server".to_string()),
            State::Disconnected => Some("the connection to the server is down".to_string()),
        };
        let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        super::Health {
            disconnected,
            failing: self.inner.writes.failing(),
            failed_commits: self.inner.writes.failed_commits(),
            pruned_events: n(&self.inner.pruned.events),
            pruned_dead_letters: n(&self.inner.pruned.dead_letters),
            pruned_records: n(&self.inner.pruned.records),
            store_bytes: Some(n(&self.inner.pruned.store_bytes)).filter(|&b| b > 0),
            state_applier: Some(self.inner.kv.leading()),
            state_partitions: Some(self.inner.kv.partitions_led()),
            ..super::Health::default()
        }
    }

    async fn close(&self) {
        let _ = self.inner.closed.send(true);
        self.inner.kv.stop_applier().await;
        for g in self.inner.groups.read().expect("groups lock").values() {
            g.rx.close();
        }
    }
}

#[async_trait]
impl Traces for Nats {
    async fn trace(&self, correlation_id: &str) -> Result<Vec<Event>, BrokerError> {
        let i = &self.inner;
        let filter = format!("{}.>", i.names.ns);
        Ok(scan(&i.events, &filter)
            .await?
            .iter()
            .filter_map(|m| {
                let stored = m
                    .info()
                    .map_or(std::time::SystemTime::UNIX_EPOCH, |i| i.published.into());
                let mut e = codec::decode(m.headers.as_ref(), &m.payload, stored).ok()?;
                let given = m.headers.as_ref().and_then(|h| h.get(seal::HEADER));
                i.seal
                    .unless_sealed(&mut e, given.map(|v| v.as_str()), &m.subject);
                Some(e)
            })
            .filter(|e| e.correlation_id() == correlation_id)
            .collect())
    }

    async fn horizon(&self) -> Result<super::Horizon, BrokerError> {
        self.inner.horizon().await
    }
}

/// Get or create a stream. A server error (a `500`: the server could not
/// create the stream's store) is tried again a few times, after a short
/// wait: nats-server 2.9 can fail to create the first stream of an account
/// while the last one is being deleted (its store directory goes with it),
/// and succeeds a moment later.
async fn open_stream(
    js: &Context,
    config: stream::Config,
) -> Result<Stream, jetstream::context::CreateStreamError> {
    let mut wait = Duration::from_millis(100);
    for _ in 0..5 {
        match js.get_or_create_stream(config.clone()).await {
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::CreateStreamErrorKind::JetStream(j) if j.code() >= 500
                ) =>
            {
                tracing::warn!(stream = %config.name, "NATS could not create the stream (tried again shortly): {e}");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            r => return r,
        }
    }
    js.get_or_create_stream(config).await
}
