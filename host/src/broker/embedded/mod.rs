//! The embedded broker: the default backend, in the app's `.troupe/` folder.
//!
//! Durable state lives in SQLite ([`store`]; steps' buckets in [`kv`]),
//! changed only by one writer thread that commits in groups ([`writer`]).
//! Dispatch is in memory: each
//! consumer group has a queue that the writer fills after each commit, and
//! that the group's workers drain. On start, a group's unsettled deliveries
//! are read back from disk, so whatever was in flight when a process died
//! is delivered again.
//!
//! Other processes on the same machine (`troupe publish APP_DIR`, `troupe
//! dlq replay`) don't touch the queues: they append to the `inbox` table,
//! which the writer polls while a host runs, and which a host takes on start.
//!
//! Layout: this file opens the broker and owns its threads (writer,
//! syncer, checkpoints, pruning); `writer.rs` the writer and the syncer,
//! `apply.rs` what each op does in the writer's transaction;
//! `transport.rs` is its
//! [`Transport`](crate::broker::Transport) (subscriptions, commits,
//! retries, dead letters); `offline.rs` the store as the CLI reaches it.

mod apply;
pub mod backup;
mod health;
pub mod kv;
mod offline;
mod prune;
mod runs;
mod store;
mod transport;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::{
    BrokerError, Buckets, Consumer, DeadLetter, DeadLetters, Delivery, Publish, RunState, Traces,
    check_entry_name,
};
use crate::broker::retention::Retention;
use crate::event::Event;
use crate::kv::Version;
use crate::retry::RetryPolicy;
use writer::{Op, Syncer, Writer};

pub use offline::Offline;
pub use store::DB_FILE;

/// The writer's queue, while it takes ops.
type Ops = Arc<RwLock<Option<mpsc::Sender<Op>>>>;

/// Event type -> the groups subscribed to it.
type Routes = HashMap<String, Vec<Arc<Group>>>;

/// A consumer group's queue and counters.
pub(crate) struct Group {
    name: Arc<str>,
    retry: RetryPolicy,
    tx: async_channel::Sender<Delivery>,
    rx: async_channel::Receiver<Delivery>,
    /// Deliveries stored and not yet settled.
    pending: AtomicU64,
}

impl Group {
    fn push(&self, d: Delivery) {
        // The channel is unbounded and only closes on shutdown, when a lost
        // push is fine: the delivery is still on disk.
        let _ = self.tx.try_send(d);
    }

    fn add_pending(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    fn settle(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Consumer for Group {
    async fn next(&self) -> Option<Delivery> {
        self.rx.recv().await.ok()
    }

    fn hand_back(&self, d: Delivery) {
        self.push(d);
    }
}

/// The embedded broker.
pub struct Embedded {
    /// The writer's queue; taken at close (the prune thread sends through
    /// it too, so taking it ends both).
    ops: Ops,
    routes: Arc<RwLock<Routes>>,
    groups: Arc<RwLock<HashMap<Arc<str>, Arc<Group>>>>,
    reader: Arc<Mutex<Connection>>,
    /// Steps' reads of their buckets.
    kv_readers: Arc<kv::Readers>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    state_dir: PathBuf,
    /// Dropped with the broker: ends the checkpoint and prune threads.
    _stop_checkpoints: mpsc::Sender<()>,
    _stop_pruning: mpsc::Sender<()>,
    /// Whether the store takes writes, what was pruned: `/readyz`.
    health: Arc<health::Health>,
    redeliver: health::Redeliver,
}

/// How often committed WAL pages are copied into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl Embedded {
    /// Open the broker in `state_dir` (created if needed). Must be called
    /// within a tokio runtime (retries are timed on it).
    pub fn open(state_dir: &Path, retention: &Retention) -> Result<Embedded, BrokerError> {
        let conn = store::open_writer(state_dir)?;
        let health = Arc::new(health::Health::default());
        let reader = store::open(state_dir)?;
        let checkpointer = store::open(state_dir)?;
        let (tx, rx) = mpsc::channel();
        let (committed, to_sync) = mpsc::channel();
        let routes = Arc::new(RwLock::new(Routes::new()));
        let groups = Arc::new(RwLock::new(HashMap::new()));
        let w = Writer {
            conn,
            ops: rx,
            routes: routes.clone(),
            groups: groups.clone(),
            committed,
            health: health.clone(),
            retention: retention.clone(),
            cursor: prune::Cursor::default(),
        };
        let syncer = Syncer {
            committed: to_sync,
            health: health.clone(),
            wal: store::wal_path(state_dir),
            runtime: tokio::runtime::Handle::current(),
        };
        let thread_error =
            |e| BrokerError::Store(format!("cannot start the broker's threads: {e}"));
        let synced = std::thread::Builder::new()
            .name("troupe-sync".into())
            .spawn(move || syncer.run())
            .map_err(thread_error)?;
        let handle = std::thread::Builder::new()
            .name("troupe-broker".into())
            .spawn(move || {
                w.run();
                // Everything committed is synced and answered before the
                // writer counts as stopped.
                let _ = synced.join();
            })
            .map_err(thread_error)?;
        let (stop_checkpoints, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("troupe-checkpoint".into())
            .spawn(move || {
                // Until the broker is dropped (the sender with it).
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    if let Err(e) = store::checkpoint(&checkpointer) {
                        tracing::debug!("WAL checkpoint: {e}");
                    }
                }
            })
            .map_err(|e| BrokerError::Store(format!("cannot start the checkpoint thread: {e}")))?;
        let (stop_pruning, pruner_stopped) = mpsc::channel::<()>();
        let ops: Ops = Arc::new(RwLock::new(Some(tx)));
        let (to_writer, stats, dir) = (ops.clone(), health.clone(), state_dir.to_path_buf());
        std::thread::Builder::new()
            .name("troupe-prune".into())
            .spawn(move || prune_loop(&to_writer, &pruner_stopped, &stats, &dir))
            .map_err(|e| BrokerError::Store(format!("cannot start the prune thread: {e}")))?;
        Ok(Embedded {
            ops,
            routes,
            groups: groups.clone(),
            reader: Arc::new(Mutex::new(reader)),
            kv_readers: Arc::new(kv::Readers::new(state_dir)),
            writer: Mutex::new(Some(handle)),
            state_dir: state_dir.to_path_buf(),
            _stop_checkpoints: stop_checkpoints,
            _stop_pruning: stop_pruning,
            redeliver: health::Redeliver {
                groups: groups.clone(),
                runtime: tokio::runtime::Handle::current(),
                health: health.clone(),
            },
            health,
        })
    }

    /// The folder the broker keeps its data in.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    async fn call<T: Send + 'static>(
        &self,
        op: impl FnOnce(writer::Reply<T>) -> Op,
    ) -> Result<T, BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.send(op(Box::new(move |r| {
            let _ = tx.send(r);
        })))
        .map_err(|_| BrokerError::Closed)?;
        rx.await.map_err(|_| BrokerError::Closed)?
    }

    /// Hand `op` to the writer; gives it back if the writer is gone.
    fn send(&self, op: Op) -> Result<(), Op> {
        match self.ops.read().expect("ops lock").as_ref() {
            Some(tx) => tx.send(op).map_err(|e| e.0),
            None => Err(op),
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, BrokerError> {
        // SQLite calls block: run them off the async threads.
        let conn = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&conn.lock().expect("reader lock")))
            .await
            .map_err(|e| BrokerError::Store(e.to_string()))?
    }
}

#[async_trait]
impl Buckets for Embedded {
    async fn bucket_keys(&self, bucket: &str) -> Result<Vec<String>, BrokerError> {
        check_entry_name(bucket, None)?;
        let b = bucket.to_string();
        self.kv_readers.read(move |c| Ok(kv::list(c, &b)?.0)).await
    }

    async fn bucket_entry(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, Version)>, BrokerError> {
        check_entry_name(bucket, Some(key))?;
        let (b, k) = (bucket.to_string(), key.to_string());
        self.kv_readers.read(move |c| kv::get(c, &b, &k)).await
    }

    async fn bucket_write(
        &self,
        bucket: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), BrokerError> {
        Offline::new(&self.state_dir)
            .bucket_write(bucket, key, value)
            .await
    }
}

/// The prune thread's body: a batch every [`prune::TICK`], and at once
/// again while there is more, until the broker is dropped (`stop`'s sender
/// with it) or the writer is gone.
fn prune_loop(ops: &Ops, stop: &mpsc::Receiver<()>, health: &health::Health, dir: &Path) {
    let mut wait = prune::TICK;
    let mut warned = false;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(wait) {
        if let Some(free) = health::free_bytes(dir) {
            health.free_disk_bytes.store(free, Ordering::Relaxed);
        }
        let (tx, rx) = mpsc::channel();
        let op = Op::Prune {
            reply: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        };
        let sent = match ops.read().expect("ops lock").as_ref() {
            Some(tx) => tx.send(op).is_ok(),
            None => false,
        };
        if !sent {
            return;
        }
        wait = prune::TICK;
        match rx.recv() {
            Err(_) => return,
            Ok(Ok(p)) => {
                let add = |a: &AtomicU64, n| a.fetch_add(n, Ordering::Relaxed);
                add(&health.pruned_events, p.events);
                add(&health.pruned_dead_letters, p.dead_letters);
                add(&health.pruned_records, p.records);
                health.store_bytes.store(p.store_bytes, Ordering::Relaxed);
                if p.capped && !warned {
                    tracing::warn!(
                        "the broker's store reached [retention] max_store: settled events and \
                         ended runs are pruned before their age"
                    );
                }
                warned = p.capped;
                if p.more {
                    wait = std::time::Duration::ZERO;
                }
            }
            // A store that cannot write is said once, by its health.
            Ok(Err(e)) if health.is_failing() => {
                tracing::debug!("pruning the broker's store failed: {e}")
            }
            Ok(Err(e)) => {
                tracing::warn!("pruning the broker's store failed (tried again in a second): {e}")
            }
        }
    }
}

/// The event sequence number a delivery settles; `None` for a delivery
/// of another backend.
fn seq(d: &Delivery) -> Option<i64> {
    d.ack.get::<Seq>().map(|s| s.0)
}

/// The embedded broker's acknowledgement token: the delivered event's
/// sequence number.
pub(crate) struct Seq(pub(crate) i64);

fn foreign() -> BrokerError {
    BrokerError::Misuse("a delivery of another broker cannot be settled here".into())
}

#[async_trait]
impl Publish for Embedded {
    async fn publish(&self, events: Vec<Event>) -> Result<(), BrokerError> {
        self.health.refuse_new()?;
        self.call(|reply| Op::Commit {
            ack: None,
            events,
            state: Vec::new(),
            kv: None,
            early: false,
            runs: None,
            reply,
        })
        .await
    }
}

#[async_trait]
impl RunState for Embedded {
    async fn state_get(&self, key: &str) -> Result<Option<Vec<u8>>, BrokerError> {
        let key = key.to_string();
        self.read(move |c| store::get_state(c, &key)).await
    }

    async fn state_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, BrokerError> {
        let prefix = prefix.to_string();
        self.read(move |c| store::scan_state(c, &prefix)).await
    }

    async fn runs_list(
        &self,
        query: &crate::broker::runs::RunQuery,
    ) -> Result<crate::broker::runs::RunPage, BrokerError> {
        let query = query.clone();
        self.read(move |c| runs::query(c, &query)).await
    }

    async fn runs_counts(&self) -> Result<Vec<crate::broker::runs::RunCount>, BrokerError> {
        self.read(runs::counts).await
    }

    async fn state_create(&self, key: &str, value: Vec<u8>) -> Result<bool, BrokerError> {
        // One host writes an embedded store, and its deploys take turns
        // (`Deployer::deploy`): a read, then the write, is a create.
        if self.state_get(key).await?.is_some() {
            return Ok(false);
        }
        let (tx, rx) = oneshot::channel();
        let commit = super::Commit {
            state: vec![(key.to_string(), Some(value))],
            ..super::Commit::default()
        };
        super::Transport::commit_then(
            self,
            commit,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.map_err(|_| BrokerError::Closed)??;
        Ok(true)
    }

    fn kv_reader(&self) -> Option<Arc<dyn crate::kv::Reader>> {
        Some(self.kv_readers.clone())
    }
}

#[async_trait]
impl DeadLetters for Embedded {
    async fn dlq_list(&self) -> Result<Vec<DeadLetter>, BrokerError> {
        self.read(|c| store::dead_letters(c, None)).await
    }

    async fn dlq_get(&self, id: &str) -> Result<DeadLetter, BrokerError> {
        let id = id.to_string();
        self.read(move |c| {
            store::dead_letters(c, Some(&id))?
                .pop()
                .ok_or(BrokerError::NoSuchDeadLetter(id))
        })
        .await
    }

    async fn dlq_replay(&self, id: &str) -> Result<(), BrokerError> {
        let id = id.to_string();
        self.call(|reply| Op::Replay { id, reply }).await
    }

    async fn dlq_purge(&self, id: &str) -> Result<(), BrokerError> {
        let id = id.to_string();
        self.call(|reply| Op::Purge { id, reply }).await
    }
}

#[async_trait]
impl Traces for Embedded {
    async fn trace(&self, correlation_id: &str) -> Result<Vec<Event>, BrokerError> {
        let id = correlation_id.to_string();
        self.read(move |c| store::trace(c, &id)).await
    }

    /// `events` is indexed by correlation id.
    fn indexed_trace(&self) -> bool {
        true
    }

    async fn horizon(&self) -> Result<super::Horizon, BrokerError> {
        self.read(prune::horizon).await
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        // Dropping the sender ends the writer once it has committed what
        // was already asked of it.
        self.ops.write().expect("ops lock").take();
        if let Some(h) = self.writer.lock().expect("writer lock").take() {
            let _ = h.join();
        }
    }
}
