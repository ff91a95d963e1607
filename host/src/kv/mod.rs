//! Step state: key-value buckets whose writes commit with the message.
//!
//! A step keeps state in buckets through `wasi:keyvalue` (store, atomics,
//! batch). What one invocation does to them is a [`Txn`]: its reads see
//! the committed state plus its own writes; its writes, with the versions
//! its reads saw, go into the commit that settles the delivery and
//! publishes the outputs, and the broker applies them only if every version
//! read is still the committed one ([`check`]). Otherwise the commit is
//! refused as a [`Conflict`], nothing of it is applied, and the host runs
//! the invocation again. A `retry`, a trap, a limit or a crash commits
//! nothing, so its writes are gone with it.
//!
//! This module holds the decisions only (what a read sees, what a write
//! may be, what a commit must find still true); the sandbox carries them
//! out against the broker, and each broker applies [`Writes`] in its
//! commit.
//!
//! - **A step opens no bucket it was not granted**: its own (named after
//!   the step, opened as `""` or by that name) and those `grants.kv` names.
//! - **A version is never given twice**: the store gives every write a
//!   version greater than any before it in the app, and a bucket the
//!   greatest version written to it, deletions included; `0` is "absent".
//!   So an entry deleted and written again does not look unchanged.
//! - **An invocation's writes are applied all or none, and only if what it
//!   read is still what is committed** (serializable: as if it ran at the
//!   moment of its commit).

mod inflight;
mod txn;

pub use inflight::{Claimed, InFlight};
pub use txn::{Txn, View};

use std::collections::BTreeMap;

/// The type of the record of an invocation's writes (the keys it wrote,
/// by bucket, names only), committed with them under the event handled,
/// so `troupe trace` shows them.
pub const WRITE_EVENT: &str = "troupe.kv.write";

/// Keys a write record names, all buckets together; it counts the rest.
pub const MAX_RECORDED_KEYS: usize = 100;

/// The longest key any step may be allowed (`limits.kv.max_key_bytes`).
pub const MAX_KEY_BYTES: usize = 4096;

/// A key's (or a bucket's) version: `0` when absent.
pub type Version = u64;

/// What a step may keep (`limits.kv` in `troupe.toml`): sizes checked on
/// every write (an error inside the guest), quotas checked at the commit
/// (`limit`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvLimits {
    /// Bytes of one key (UTF-8).
    pub max_key_bytes: usize,
    /// Bytes of one value.
    pub max_value_bytes: usize,
    /// Keys written or deleted by one invocation.
    pub max_writes: usize,
    /// Keys one invocation reads from its buckets (each distinct key once;
    /// what it wrote itself is not read). The same on both brokers.
    pub max_reads: usize,
    /// Bytes of the keys and values one invocation has read, which the
    /// host holds for it until its commit.
    pub max_read_bytes: usize,
    /// Keys one bucket may hold.
    pub max_keys: u64,
    /// Bytes (keys and values) one bucket may hold.
    pub max_bucket_bytes: u64,
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits {
            max_key_bytes: 512,
            max_value_bytes: 64 * 1024,
            max_writes: 1000,
            max_reads: 1000,
            max_read_bytes: 8 << 20,
            max_keys: 100_000,
            max_bucket_bytes: 64 << 20,
        }
    }
}

impl KvLimits {
    /// What is wrong with these limits, if anything.
    pub fn check(&self) -> Result<(), String> {
        let within = |name: &str, v: u64, max: u64| {
            if v == 0 || v > max {
                Err(format!("limits.kv.{name} must be between 1 and {max}"))
            } else {
                Ok(())
            }
        };
        within(
            "max_key_bytes",
            self.max_key_bytes as u64,
            MAX_KEY_BYTES as u64,
        )?;
        within("max_value_bytes", self.max_value_bytes as u64, 1 << 20)?;
        within("max_writes", self.max_writes as u64, 100_000)?;
        within("max_reads", self.max_reads as u64, 10_000)?;
        within("max_read_bytes", self.max_read_bytes as u64, 256 << 20)?;
        within("max_keys", self.max_keys, 100_000_000)?;
        within("max_bucket_bytes", self.max_bucket_bytes, 64 << 30)
    }
}

/// The committed state, as an invocation reads it: the broker's side of
/// step state. Called from host functions while the guest waits, so a
/// call must be a future the sandbox's guard can cut, or a local read
/// that is bounded and never waits on a writer (the embedded broker's:
/// a point read of SQLite's log, made on the guest's thread).
#[async_trait::async_trait]
pub trait Reader: Send + Sync {
    /// The committed entry of `bucket`/`key`: value and version.
    async fn kv_get(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, Version)>, ReadError>;

    /// `bucket`'s committed keys, sorted, with the bucket's version then.
    async fn kv_list(&self, bucket: &str) -> Result<(Vec<String>, Version), ReadError>;
}

/// The committed state could not be read (the store failed); the guest
/// sees it as an error it may answer with `retry`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the state store is unavailable: {0}")]
pub struct ReadError(pub String);

/// Why a bucket operation failed inside the guest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("bucket {bucket:?} is not granted to step `{step}` (grants.kv)")]
    NotGranted { step: String, bucket: String },
    #[error("a key must not be empty")]
    EmptyKey,
    #[error("a key of {len} bytes is over the limit of {max}")]
    KeyTooLong { len: usize, max: usize },
    #[error("the value for key {key:?} is {len} bytes, over the limit of {max}")]
    ValueTooLarge { key: String, len: usize, max: usize },
    #[error("more than {max} keys written in one invocation")]
    TooManyWrites { max: usize },
    #[error("more than {max} keys read in one invocation (limits.kv.max_reads)")]
    TooManyReads { max: usize },
    #[error(
        "the keys and values read in one invocation would hold {bytes} bytes, over \
         limits.kv.max_read_bytes ({max})"
    )]
    ReadTooMuch { bytes: usize, max: usize },
    #[error("the value of {key:?} is not a counter (decimal digits, as increment writes)")]
    NotACounter { key: String },
    #[error("incrementing {key:?} overflows")]
    Overflow { key: String },
}

/// What an invocation did to its buckets, for its commit: the versions it
/// depends on and the writes to apply (`None` deletes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    /// Each entry read, with the version read (`0`: absent).
    pub reads: Vec<(String, String, Version)>,
    /// Each bucket whose keys were listed, with its version then.
    pub lists: Vec<(String, Version)>,
    /// Each key written, in order of bucket and key.
    pub writes: Vec<(String, String, Option<Vec<u8>>)>,
}

impl Writes {
    /// Nothing to check and nothing to write: a commit without state.
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.lists.is_empty() && self.writes.is_empty()
    }

    /// The keys written, by bucket (names only, for the trace): at most
    /// [`MAX_RECORDED_KEYS`], and how many more there were.
    pub fn written(&self) -> (BTreeMap<&str, Vec<&str>>, usize) {
        let mut by = BTreeMap::<&str, Vec<&str>>::new();
        for (b, k, _) in self.writes.iter().take(MAX_RECORDED_KEYS) {
            by.entry(b).or_default().push(k);
        }
        (by, self.writes.len().saturating_sub(MAX_RECORDED_KEYS))
    }
}

/// A commit refused: something it read changed since.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Conflict {
    #[error("{bucket}/{key} changed (version {read} read, {now} now)")]
    Key {
        bucket: String,
        key: String,
        read: Version,
        now: Version,
    },
    #[error("bucket {bucket} changed after its keys were listed")]
    Bucket { bucket: String },
    /// Another run of the same invocation (its event delivered again) is
    /// being decided: NATS, where two partitions' leaders could otherwise
    /// decide both.
    #[error("another run of this invocation (state commit #{seq}) is being decided")]
    Invocation { seq: Version },
}

/// Why a commit's writes were not applied (nor anything else of the
/// commit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Refused {
    /// Something the invocation read changed since: run it again.
    #[error("{0}")]
    Conflict(#[from] Conflict),
    /// The writes would take a bucket over a quota (`limit`).
    #[error("{0}")]
    Quota(String),
}

/// Whether `w` may be applied to the committed state, whose versions are
/// `key_version` and `bucket_version`: every version it read must be the
/// committed one.
pub fn check(
    w: &Writes,
    mut key_version: impl FnMut(&str, &str) -> Version,
    mut bucket_version: impl FnMut(&str) -> Version,
) -> Result<(), Conflict> {
    for (bucket, key, read) in &w.reads {
        let now = key_version(bucket, key);
        if now != *read {
            return Err(Conflict::Key {
                bucket: bucket.clone(),
                key: key.clone(),
                read: *read,
                now,
            });
        }
    }
    for (bucket, read) in &w.lists {
        if bucket_version(bucket) != *read {
            return Err(Conflict::Bucket {
                bucket: bucket.clone(),
            });
        }
    }
    Ok(())
}

/// A bucket name as `grants.kv` and `open` take it: 1 to 64 of lowercase
/// letters, digits, `-` and `_`, starting with a letter or digit.
pub fn valid_bucket(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with(['-', '_'])
}

/// A counter as `increment` keeps it: the decimal digits of a `u64` (as
/// wasmtime's own `wasi:keyvalue` does).
pub fn counter(key: &str, value: Option<&[u8]>) -> Result<u64, KvError> {
    let Some(v) = value else { return Ok(0) };
    std::str::from_utf8(v)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| KvError::NotACounter {
            key: key.to_string(),
        })
}

#[cfg(test)]
mod tests;
