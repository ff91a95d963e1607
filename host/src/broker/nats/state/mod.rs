//! Step state on NATS: buckets kept in a key-value stream, written only
//! by the leaders of its partitions, which take commits from a log in
//! order.
//!
//! NATS cannot store several messages atomically, so a commit with state
//! is made in steps, each safe to cut short (see ARCHITECTURE.md, "step
//! state on NATS"):
//!
//! 1. The invoking host publishes one **log entry** on `NS.kvlog.APP`
//!    (stream `NS_KVLOG_APP`): the invocation's key `K` (its group and its
//!    event's identity), the versions it read, its writes and its outputs.
//!    One message, so it is stored whole or not at all.
//! 2. The entry's keys fall in one or more of the app's 16 **partitions**
//!    (`part.rs`); each partition has one **leader** at a time, a host of
//!    the app holding its lease (`lease.rs`), and hosts share the
//!    partitions. A leader reads the log in order and takes what is
//!    waiting in batches (`lead.rs`, `apply.rs`); it decides each entry of
//!    its partitions against the state the entries before it left: if `K`
//!    already has a committed verdict, the entry is a duplicate (a
//!    redelivered event run again) and nothing is applied; otherwise the
//!    versions read must be current and the quotas hold. It writes the
//!    batch's **verdicts** `_tx.K` first, then the entries (each stamped
//!    with its log entry's sequence as its version) and the partitions'
//!    totals, and tells the invoking hosts; its partitions' **applied
//!    indexes** `_ap.N` follow. An entry whose keys are in partitions of
//!    several leaders is a barrier: each stops at it, and the leader of
//!    its lowest partition decides it (`lead.rs`).
//! 3. The invoking host publishes the outputs of the committed entry (its
//!    own, or the duplicate's original, read back from the log) and acks
//!    its delivery.
//!
//! A crash after 1 leaves the entry in the log for its leader (and the
//! event redelivered to a step, whose new entry is then a duplicate); a
//! crash inside 2 leaves verdicts whose writes the next leader finishes
//! when it reads their entries again from the applied index (an entry
//! whose version is at least the log entry's is already written), and
//! entries not decided, which it decides the same way; a crash inside 3
//! redelivers the event, whose entry is a duplicate, and the original
//! outputs are published again (the server drops copies within its
//! duplicate window). So each event's writes are applied once, and its
//! outputs published at least once. Every write is a compare-and-set on
//! the subject's last sequence, so a leader that lost its lease cannot
//! overwrite what the next one applied.
//!
//! Here: the types, the streams, and reads and compare-and-set writes of
//! subjects; `commit.rs` is the invoking host's side (steps 1 and 3),
//! `part.rs`, `lease.rs`, `lead.rs` and `apply.rs` the leaders (step 2),
//! `retain.rs` the pruning of what the log leaves behind.
//!
//! Subjects of the key-value stream `KV_NS_APP_kv`: `$KV.B.BUCKET.KEY64`
//! (an entry; the key in unpadded URL-safe base64), `$KV.B._b.BUCKET` and
//! `$KV.B._b.BUCKET.N` (the totals of a bucket's keys in partition 0 and
//! N), `$KV.B._tx.K` (a verdict), `$KV.B._ap.N` (partition N's applied
//! index), `$KV.B._lease.N` (its leader's lease), `$KV.B._host.ID` (a host
//! that leads partitions), where `B` is `NS_APP_kv`. A deleted entry is a
//! `KV-Operation: DEL` marker.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{
    Context,
    context::PublishErrorKind,
    message::PublishMessage,
    stream::{self, DirectGetErrorKind, Stream},
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as KEY64;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

mod apply;
mod commit;
mod lead;
mod lease;
mod part;
mod retain;

use super::{Names, nats, pulling::scan};
use crate::broker::BrokerError;
use crate::kv::{ReadError, Refused, Version};

/// The header that carries an entry's version (its log entry's sequence).
const VERSION: &str = "Troupe-Version";
/// How often a host waiting for a verdict looks for it itself, in case
/// the applier's word was lost.
const VERDICT_POLL: Duration = Duration::from_secs(1);
/// How long a host waits for a verdict before it leaves the delivery to
/// be delivered again (no applier is running, or the server is away).
const VERDICT_GIVE_UP: Duration = Duration::from_secs(20);
/// How many of this host's commits may wait in the log at once: a longer
/// queue would only make each commit wait past [`VERDICT_GIVE_UP`] when
/// the applier is slow (the server busy), and its delivery be run again
/// for nothing. Commits beyond it wait their turn on this host.
const MAX_DECIDING: usize = 256;
/// Room kept in a log entry for its headers.
const LOG_HEADROOM: usize = 1024;

/// What an invocation asks the applier to commit.
#[derive(Debug, Serialize, Deserialize)]
struct LogEntry {
    /// The invocation's key: its group and event (or an operator's write).
    k: String,
    /// Where the applier says what became of it.
    reply: String,
    reads: Vec<(String, String, Version)>,
    lists: Vec<(String, Version)>,
    /// Values in base64 (`None` deletes).
    writes: Vec<(String, String, Option<String>)>,
    max_keys: u64,
    max_bucket_bytes: u64,
    /// The outputs, as CloudEvents JSON, published once it is committed.
    events: Vec<serde_json::Value>,
}

/// A bucket's totals, kept beside its entries.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Totals {
    keys: i64,
    bytes: i64,
}

/// What became of a log entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Verdict {
    k: String,
    /// The log entry this verdict is about.
    seq: u64,
    /// Committed: the buckets' totals after it (written with its entries).
    #[serde(default)]
    totals: BTreeMap<String, Totals>,
    /// Refused, and why.
    #[serde(default)]
    refused: Option<Refused>,
}

impl Verdict {
    /// Entry `seq` (`e`) refused.
    fn refused(e: &LogEntry, seq: u64, why: Refused) -> Verdict {
        Verdict {
            k: e.k.clone(),
            seq,
            totals: BTreeMap::new(),
            refused: Some(why),
        }
    }
}

/// A subject's last message: its value (`None`: absent or deleted), its
/// version as a read sees it (`0` when absent or deleted), the version it
/// carries (deletion markers too) and its sequence (for a
/// compare-and-set; `0` when the subject has none).
struct Current {
    value: Option<Bytes>,
    version: Version,
    stamp: Version,
    seq: u64,
}

/// Step state on one app's NATS server.
pub(super) struct Kv {
    js: Context,
    client: async_nats::Client,
    data: Stream,
    log: Stream,
    /// `$KV.NS_APP_kv`
    prefix: String,
    log_subject: String,
    /// This host's subject for verdicts.
    inbox: String,
    /// This host, as the holder of partitions' leases.
    id: String,
    /// The partitions this host applies now (`part.rs`'s mask).
    leading: std::sync::atomic::AtomicU32,
    max_payload: usize,
    waiting: Mutex<HashMap<String, oneshot::Sender<Verdict>>>,
    /// One permit per commit in the log and not yet decided.
    deciding: tokio::sync::Semaphore,
    applier: OnceLock<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
    /// Each partition's applied index as last heard (written by any host,
    /// or read): what a leader stopped at a barrier waits on (`lead.rs`).
    progress: watch::Sender<Vec<u64>>,
    /// Where the next pass over deleted entries' markers starts (`retain.rs`).
    markers_from: std::sync::atomic::AtomicU64,
    /// The runtime the broker was opened on: commits come from step
    /// workers' threads, outside it.
    pub(super) runtime: tokio::runtime::Handle,
}

impl Kv {
    /// Declare the streams (idempotent) and listen for verdicts.
    pub(super) async fn open(
        client: async_nats::Client,
        js: Context,
        names: &Names,
        max_payload: usize,
    ) -> Result<Arc<Kv>, BrokerError> {
        let bucket = names.kv_bucket();
        let data = js
            .get_or_create_stream(super::kv_stream(&bucket))
            .await
            .map_err(|e| nats(format!("bucket {bucket}: {e}")))?;
        let log = js
            .get_or_create_stream(stream::Config {
                name: names.kvlog_stream(),
                subjects: vec![names.kvlog_subject()],
                storage: stream::StorageType::File,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| nats(format!("stream {}: {e}", names.kvlog_stream())))?;
        let inbox = format!(
            "{}.kvv.{}.{}",
            names.ns,
            names.app,
            uuid::Uuid::new_v4().simple()
        );
        let mut sub = client.subscribe(inbox.clone()).await.map_err(nats)?;
        let mut indexes = client
            .subscribe(format!("$KV.{bucket}._ap.*"))
            .await
            .map_err(nats)?;
        let kv = Arc::new(Kv {
            js,
            client,
            data,
            log,
            prefix: format!("$KV.{bucket}"),
            log_subject: names.kvlog_subject(),
            inbox,
            id: uuid::Uuid::new_v4().simple().to_string(),
            leading: Default::default(),
            max_payload,
            waiting: Mutex::default(),
            deciding: tokio::sync::Semaphore::new(MAX_DECIDING),
            applier: OnceLock::new(),
            stop: watch::channel(false).0,
            progress: watch::channel(vec![0; part::PARTITIONS]).0,
            markers_from: Default::default(),
            runtime: tokio::runtime::Handle::current(),
        });
        let me = Arc::downgrade(&kv);
        tokio::spawn(async move {
            while let Some(m) = indexes.next().await {
                let Some(kv) = me.upgrade() else { return };
                let n = m.subject.rsplit('.').next().and_then(|n| n.parse().ok());
                if let (Some(n), Some(seq)) = (n, lease::applied_of(&m.payload)) {
                    kv.heard(n, seq);
                }
            }
        });
        let me = Arc::downgrade(&kv);
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let Some(kv) = me.upgrade() else { return };
                if let Ok(v) = serde_json::from_slice::<Verdict>(&m.payload) {
                    let w = kv.waiting.lock().expect("waiting lock").remove(&v.k);
                    if let Some(w) = w {
                        let _ = w.send(v);
                    }
                }
            }
        });
        Ok(kv)
    }

    /// Partition `n`'s applied index is at least `seq`.
    fn heard(&self, n: usize, seq: u64) {
        self.progress.send_if_modified(|known| {
            let moved = known.get(n).is_some_and(|&k| k < seq);
            if moved {
                known[n] = seq;
            }
            moved
        });
    }

    fn entry_subject(&self, bucket: &str, key: &str) -> String {
        format!("{}.{bucket}.{}", self.prefix, KEY64.encode(key))
    }

    fn verdict_subject(&self, k: &str) -> String {
        format!("{}._tx.{k}", self.prefix)
    }

    /// The last message on `subject`.
    async fn current(&self, subject: &str) -> Result<Current, BrokerError> {
        match self.data.direct_get_last_for_subject(subject).await {
            Ok(m) => {
                let deleted = m
                    .headers
                    .get("KV-Operation")
                    .is_some_and(|v| v.as_str() != "PUT");
                let version = m
                    .headers
                    .get(VERSION)
                    .and_then(|v| v.as_str().parse().ok())
                    .unwrap_or(0);
                Ok(Current {
                    value: (!deleted).then_some(m.payload),
                    // A deleted entry reads as absent, version 0.
                    version: if deleted { 0 } else { version },
                    stamp: version,
                    seq: m.sequence,
                })
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(Current {
                value: None,
                version: 0,
                stamp: 0,
                seq: 0,
            }),
            Err(e) => Err(nats(format!("reading {subject}: {e}"))),
        }
    }

    /// Publish `value` (`None`: a deletion marker) on `subject` if its last
    /// message is still `last`: the new message's sequence, or `None` if
    /// the subject moved on.
    async fn put_if(
        &self,
        subject: &str,
        value: Option<Bytes>,
        version: Version,
        last: u64,
    ) -> Result<Option<u64>, BrokerError> {
        let mut h = HeaderMap::new();
        h.insert(VERSION, version.to_string().as_str());
        if value.is_none() {
            h.insert("KV-Operation", "DEL");
        }
        let p = PublishMessage::build()
            .headers(h)
            .payload(value.unwrap_or_default())
            .expected_last_subject_sequence(last);
        let ack = self
            .js
            .send_publish(subject.to_string(), p)
            .await
            .map_err(nats)?;
        match ack.await {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(nats(format!("writing {subject}: {e}"))),
        }
    }

    /// `bucket`'s version: the last commit that wrote it, in any
    /// partition (versions are log sequences, one clock for all).
    async fn bucket_version(&self, bucket: &str) -> Result<Version, BrokerError> {
        let all = (0..part::PARTITIONS).map(|n| self.totals_subject(bucket, n));
        let read =
            futures_util::future::try_join_all(all.map(|s| async move { self.current(&s).await }))
                .await?;
        Ok(read.iter().map(|c| c.version).max().unwrap_or(0))
    }

    /// `bucket`'s keys (sorted) and its version, read version first: a
    /// commit between the two makes the listing's check fail, never pass.
    pub(super) async fn list(&self, bucket: &str) -> Result<(Vec<String>, Version), BrokerError> {
        let version = self.bucket_version(bucket).await?;
        let filter = format!("{}.{bucket}.*", self.prefix);
        let mut keys = Vec::new();
        for m in scan(&self.data, &filter).await? {
            let deleted = m
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|v| v.as_str() != "PUT");
            let k64 = m.subject.rsplit('.').next().unwrap_or_default();
            if let (false, Ok(k)) = (deleted, KEY64.decode(k64)) {
                keys.push(String::from_utf8_lossy(&k).into_owned());
            }
        }
        keys.sort();
        keys.dedup();
        Ok((keys, version))
    }

    pub(super) async fn get(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, Version)>, BrokerError> {
        let c = self.current(&self.entry_subject(bucket, key)).await?;
        Ok(c.value.map(|v| (v.to_vec(), c.version)))
    }

    async fn verdict(&self, k: &str) -> Result<(Option<Verdict>, u64), BrokerError> {
        let c = self.current(&self.verdict_subject(k)).await?;
        Ok((c.value.and_then(|v| serde_json::from_slice(&v).ok()), c.seq))
    }
}

/// A bucket's totals, from its totals subject's last message.
fn totals_of(c: &Current) -> Totals {
    c.value
        .as_ref()
        .and_then(|v| serde_json::from_slice(v).ok())
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl crate::kv::Reader for Kv {
    async fn kv_get(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, Version)>, ReadError> {
        self.get(bucket, key)
            .await
            .map_err(crate::broker::read_error)
    }

    async fn kv_list(&self, bucket: &str) -> Result<(Vec<String>, Version), ReadError> {
        self.list(bucket).await.map_err(crate::broker::read_error)
    }
}
