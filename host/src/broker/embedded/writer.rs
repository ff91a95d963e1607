//! The embedded broker's single writer: group commit, pipelined.
//!
//! Every change to the broker's tables is an [`Op`] sent to one thread. The
//! thread takes whatever ops are waiting (up to [`MAX_BATCH`]), applies them
//! in one transaction and commits it to the WAL, then hands the group's
//! effects to a second thread, the *syncer*, and goes on with the next
//! group. The syncer flushes the WAL to disk (one fsync for every group
//! committed since the last) and only then makes the groups' effects
//! visible, in commit order: new deliveries go to the consumer groups'
//! queues, retries are scheduled, and each op's caller is answered. So the
//! cost of an fsync is shared by everything that arrived meanwhile, and
//! the writer applies the next group while the last one is being synced.
//!
//! **Nothing is delivered, and no caller is answered, before it is
//! durable**, and a delivery's ack and the events its handling emitted
//! commit in the same transaction. The one exception is asked for by
//! name: an `early` commit's deliveries go out once it is in the WAL,
//! before the sync, for events that can be derived again from what is
//! durable (the orchestrator's commands sent on a reply; see
//! [`crate::broker::Commit::early`]). What their handlers commit is still
//! released only after them, since groups are synced in order.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rusqlite::{Connection, Transaction};

use super::apply::{apply, now_ms, refuse, take_inbox};
use super::health::Health;
use super::{Group, Routes};
use super::{prune, store};
use crate::broker::retention::Retention;
use crate::broker::{BrokerError, Delivery, KvCommit};
use crate::event::Event;
use crate::protocol::FailureClass;

/// The most ops committed in one transaction.
const MAX_BATCH: usize = 4096;
/// How often the writer looks for work queued by other processes.
const INBOX_POLL: Duration = Duration::from_millis(20);

/// Called with an op's outcome once its transaction's fate is known, on the
/// writer thread: it must not block.
pub(super) type Reply<T> = Box<dyn FnOnce(Result<T, BrokerError>) + Send>;

/// What a commit says of runs.
#[derive(Default)]
pub(super) struct RunWrites {
    /// State rows that record something ended
    /// ([`crate::broker::Commit::ended`]).
    pub ended: Vec<String>,
    /// Ended records that go on again ([`crate::broker::Commit::reopened`]).
    pub reopened: Vec<String>,
    /// Run index entries ([`crate::broker::Commit::runs`]).
    pub entries: Vec<crate::broker::runs::RunEntry>,
}

impl RunWrites {
    /// Those of `c`, if it has any.
    pub(super) fn of(c: &mut crate::broker::Commit) -> Option<Box<RunWrites>> {
        if c.ended.is_empty() && c.reopened.is_empty() && c.runs.is_empty() {
            return None;
        }
        Some(Box::new(RunWrites {
            ended: std::mem::take(&mut c.ended),
            reopened: std::mem::take(&mut c.reopened),
            entries: std::mem::take(&mut c.runs),
        }))
    }
}

/// A change to the broker's state.
pub(super) enum Op {
    /// Settle a delivery (if any), publish events and write state rows,
    /// in one transaction.
    Commit {
        ack: Option<(Arc<str>, i64)>,
        events: Vec<Event>,
        state: Vec<(String, Option<Vec<u8>>)>,
        /// A step's bucket writes: applied first, or nothing is.
        kv: Option<Box<KvCommit>>,
        /// Deliver the events once written, before they are durable
        /// ([`crate::broker::Commit::early`]).
        early: bool,
        /// What the commit says of runs, when it says anything (most
        /// commits, a step's, do not).
        runs: Option<Box<RunWrites>>,
        reply: Reply<()>,
    },
    Retry {
        delivery: Delivery,
        seq: i64,
        delay: Duration,
        reply: Reply<()>,
    },
    DeadLetter {
        group: Arc<str>,
        seq: i64,
        attempts: u32,
        class: FailureClass,
        message: String,
        version: Option<(u64, Arc<str>)>,
        reply: Reply<String>,
    },
    Replay {
        id: String,
        reply: Reply<()>,
    },
    /// Remove a dead letter without delivering it.
    Purge {
        id: String,
        reply: Reply<()>,
    },
    /// Load a group's unsettled deliveries from disk into its queue.
    Load {
        group: Arc<Group>,
        reply: Reply<()>,
    },
    /// Start taking the inbox.
    Ready {
        reply: Reply<()>,
    },
    /// Prune one batch of what retention lets go, in a transaction of its
    /// own after the group it came with ([`super::prune`]).
    Prune {
        reply: Reply<prune::Pruned>,
    },
}

/// A caller's answer: `None` once its group is durable, or why it is not.
type Answer = Box<dyn FnOnce(Option<&BrokerError>) + Send>;

/// What becomes visible once a transaction is durable.
#[derive(Default)]
pub(super) struct Effects {
    pub deliver: Vec<(Arc<Group>, Delivery)>,
    /// Deliveries made as soon as the group is written to the WAL, before
    /// it is durable (`Commit::early`).
    pub early: Vec<(Arc<Group>, Delivery)>,
    pub retry: Vec<(Arc<Group>, Delivery, Duration)>,
    pub settled: Vec<Arc<Group>>,
    /// Groups given a delivery that waits out a backoff (loaded from
    /// disk): pending from now on, though not yet in their queue.
    pub added: Vec<Arc<Group>>,
    /// Called with `None` once the group is durable, or with why it is not.
    replies: Vec<Answer>,
}

pub(super) struct Writer {
    pub conn: Connection,
    pub ops: Receiver<Op>,
    pub routes: Arc<RwLock<Routes>>,
    pub groups: Arc<RwLock<HashMap<Arc<str>, Arc<Group>>>>,
    /// The groups committed to the WAL, for the syncer: their effects, and
    /// whether the commit succeeded.
    pub committed: Sender<(Effects, Result<(), BrokerError>)>,
    pub health: Arc<Health>,
    pub retention: Retention,
    pub cursor: prune::Cursor,
}

/// The syncer: makes committed groups durable, then their effects visible.
pub(super) struct Syncer {
    pub committed: Receiver<(Effects, Result<(), BrokerError>)>,
    pub health: Arc<Health>,
    /// The WAL file (see [`store::sync_wal`]).
    pub wal: PathBuf,
    pub runtime: tokio::runtime::Handle,
}

impl Syncer {
    /// The syncer thread's body; returns when the writer is gone.
    ///
    /// A failed flush leaves the disk's state unknown (Linux may have
    /// dropped the unwritten pages), so from then on nothing is released:
    /// every caller gets an error, and a restart recovers what is on disk
    /// (delivering again what was not acknowledged).
    pub fn run(self) {
        let mut file = None;
        let mut broken = false;
        while let Ok(first) = self.committed.recv() {
            let mut groups = vec![first];
            while let Ok(more) = self.committed.try_recv() {
                groups.push(more);
            }
            if !broken
                && groups.iter().any(|(_, r)| r.is_ok())
                && let Err(e) = store::sync_wal(&mut file, &self.wal)
            {
                tracing::error!(
                    "cannot flush the broker's log to disk ({}): {e}; the broker stops \
                     accepting work: restart the host",
                    self.wal.display()
                );
                self.health.failed(
                    &BrokerError::Damaged(format!(
                        "its log could not be flushed to disk ({e}): what is on disk is \
                         recovered when the host is restarted"
                    )),
                    0,
                );
                broken = true;
            }
            for (fx, r) in groups {
                let r = match r {
                    Ok(()) if broken => Err(BrokerError::Store(
                        "the log could not be flushed to disk: restart the host".into(),
                    )),
                    r => r,
                };
                fx.release(r, &self.runtime);
            }
        }
    }
}

impl Effects {
    /// Make the effects visible if the group is durable, and answer the
    /// callers either way.
    fn release(self, outcome: Result<(), BrokerError>, runtime: &tokio::runtime::Handle) {
        if outcome.is_ok() {
            for g in self.added {
                g.add_pending();
            }
            for g in self.settled {
                g.settle();
            }
            for (g, d) in self.deliver {
                g.add_pending();
                g.push(d);
            }
            for (g, d, delay) in self.retry {
                runtime.spawn(async move {
                    tokio::time::sleep(delay).await;
                    g.push(d);
                });
            }
        }
        for reply in self.replies {
            reply(outcome.as_ref().err());
        }
    }
}

impl Writer {
    /// The writer thread's body; returns when every sender is gone.
    pub fn run(mut self) {
        let mut taking_inbox = false;
        let mut seen_version = -1;
        loop {
            let first = match self.ops.recv_timeout(INBOX_POLL) {
                Ok(op) => Some(op),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch: Vec<Op> = first.into_iter().collect();
            while batch.len() < MAX_BATCH {
                match self.ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            if batch.iter().any(|op| matches!(op, Op::Ready { .. })) {
                taking_inbox = true;
            }
            let mut inbox = Vec::new();
            if taking_inbox {
                match store::data_version(&self.conn) {
                    Ok(v) if v != seen_version => {
                        seen_version = v;
                        match store::inbox(&self.conn) {
                            Ok(items) => {
                                // More may remain past the page: look again.
                                if items.len() == 1000 {
                                    seen_version = -1;
                                }
                                inbox = items;
                            }
                            Err(e) => tracing::error!("cannot read the broker inbox: {e}"),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!("cannot poll the broker inbox: {e}"),
                }
            }
            let (prunes, batch): (Vec<Op>, Vec<Op>) = batch
                .into_iter()
                .partition(|op| matches!(op, Op::Prune { .. }));
            if !batch.is_empty() || !inbox.is_empty() {
                self.commit(batch, inbox);
            }
            for op in prunes {
                if let Op::Prune { reply } = op {
                    reply(self.prune());
                }
            }
        }
    }

    /// One batch of pruning, in its own transaction. While commits fail,
    /// it is also the write that finds out when they can succeed again.
    fn prune(&mut self) -> Result<prune::Pruned, BrokerError> {
        if let Some(d) = self.health.damage() {
            return Err(BrokerError::Damaged(d));
        }
        let failing = self.health.is_failing();
        let r = (|| {
            let tx = begin(&mut self.conn)?;
            let pruned = prune::batch(&tx, &self.retention, now_ms(), &mut self.cursor)?;
            if failing {
                prune::probe(&tx, now_ms())?;
            }
            tx.commit()?;
            Ok(pruned)
        })();
        match &r {
            Ok(_) if failing => self.health.wrote(),
            Ok(_) => {}
            // While probing, or damage: the store's state. Otherwise a
            // batch that fails is pruning's own trouble, and must not
            // turn the host's work away (commits say if the store fails).
            Err(e) if failing || matches!(e, BrokerError::Damaged(_)) => self.health.failed(e, 0),
            Err(_) => {}
        }
        r
    }

    fn commit(&mut self, batch: Vec<Op>, inbox: Vec<(i64, String, String)>) {
        if let Some(d) = self.health.damage() {
            // Nothing more is done with a damaged store: no loop of errors.
            for op in batch {
                refuse(op, &d);
            }
            return;
        }
        let ops = (batch.len() + inbox.len()) as u64;
        let mut fx = Effects::default();
        let outcome = (|| -> Result<(), BrokerError> {
            let tx = begin(&mut self.conn)?;
            for op in batch {
                apply(&tx, op, &self.routes, &self.groups, &mut fx);
            }
            for (n, op, body) in inbox {
                take_inbox(&tx, n, &op, &body, &self.routes, &self.groups, &mut fx);
            }
            tx.commit()?;
            Ok(())
        })();
        let outcome = match outcome {
            Ok(()) => {
                self.health.wrote();
                for (g, d) in fx.early.drain(..) {
                    g.add_pending();
                    g.push(d);
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!("broker commit failed, nothing in this group was stored: {e}");
                self.health.failed(&e, ops);
                Err(e)
            }
        };
        if let Err(mpsc::SendError((fx, _))) = self.committed.send((fx, outcome)) {
            // The syncer is gone (a panic): nothing can be made durable.
            let gone = BrokerError::Store("the broker's sync thread is gone".into());
            for reply in fx.replies {
                reply(Some(&gone));
            }
        }
    }
}

/// Begin the writer's transaction, taking the write lock at once: another
/// writer on the store (an operator's `troupe kv put`, a `troupe publish`
/// queued while the host runs) is then waited for by the busy timeout,
/// where a transaction that had read first would fail at its first write
/// (SQLite does not wait when a write made a reader's snapshot stale).
fn begin(conn: &mut Connection) -> Result<Transaction<'_>, BrokerError> {
    Ok(conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?)
}

/// Answer `reply` with `result` once the transaction's fate is known.
pub(super) fn answer<T: Send + 'static>(
    fx: &mut Effects,
    reply: Reply<T>,
    result: Result<T, BrokerError>,
) {
    fx.replies.push(Box::new(move |failed| {
        let r = match failed {
            None => result,
            // The group's error, for each of its callers.
            Some(BrokerError::Damaged(d)) => Err(BrokerError::Damaged(d.clone())),
            Some(BrokerError::Store(s)) => Err(BrokerError::Store(s.clone())),
            Some(e) => Err(BrokerError::Store(e.to_string())),
        };
        reply(r);
    }));
}
