//! One invocation's view of its buckets: committed entries as first read,
//! overlaid with its own writes.
//!
//! The sandbox asks [`Txn::view`] first; on [`View::Unread`] it reads the
//! committed entry from the broker and hands it to [`Txn::saw`], which
//! keeps the first version read of each key: the version the invocation's
//! result depends on, checked at its commit.

use std::collections::{BTreeMap, BTreeSet};

use super::{KvError, KvLimits, Version, Writes, counter};

type Key = (String, String);

/// What a read of one key finds without the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View<'a> {
    /// The invocation wrote it, or read it before: this (`None`: absent).
    Known(Option<&'a [u8]>),
    /// Read the committed entry and hand it to [`Txn::saw`].
    Unread,
}

/// One invocation's reads and writes (see the [module](super) docs).
#[derive(Debug)]
pub struct Txn {
    step: String,
    granted: BTreeSet<String>,
    limits: KvLimits,
    /// Committed entries read: value, version.
    seen: BTreeMap<Key, (Option<Vec<u8>>, Version)>,
    /// Buckets listed: their committed keys and version then.
    listed: BTreeMap<String, (BTreeSet<String>, Version)>,
    writes: BTreeMap<Key, Option<Vec<u8>>>,
    /// Bytes of the keys and values in `seen` and `listed`.
    read_bytes: usize,
}

impl Txn {
    /// A step's transaction: its own bucket (named after it) and `granted`.
    pub fn new(step: &str, granted: &[String], limits: KvLimits) -> Txn {
        let mut g: BTreeSet<String> = granted.iter().cloned().collect();
        g.insert(step.to_string());
        Txn {
            step: step.to_string(),
            granted: g,
            limits,
            seen: BTreeMap::new(),
            listed: BTreeMap::new(),
            writes: BTreeMap::new(),
            read_bytes: 0,
        }
    }

    /// The bucket `identifier` names, if the step may open it (`""` is
    /// the step's own).
    pub fn open(&self, identifier: &str) -> Result<String, KvError> {
        let name = if identifier.is_empty() {
            &self.step
        } else {
            identifier
        };
        if self.granted.contains(name) {
            Ok(name.to_string())
        } else {
            Err(KvError::NotGranted {
                step: self.step.clone(),
                bucket: crate::text::clean(identifier, 80),
            })
        }
    }

    fn key_ok(&self, key: &str) -> Result<(), KvError> {
        if key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        if key.len() > self.limits.max_key_bytes {
            return Err(KvError::KeyTooLong {
                len: key.len(),
                max: self.limits.max_key_bytes,
            });
        }
        Ok(())
    }

    /// What a read of `bucket`/`key` sees, if known without the broker.
    pub fn view(&self, bucket: &str, key: &str) -> Result<View<'_>, KvError> {
        self.key_ok(key)?;
        let k = (bucket.to_string(), key.to_string());
        if let Some(w) = self.writes.get(&k) {
            return Ok(View::Known(w.as_deref()));
        }
        if let Some((v, _)) = self.seen.get(&k) {
            return Ok(View::Known(v.as_deref()));
        }
        if let Some((keys, _)) = self.listed.get(bucket)
            && !keys.contains(key)
        {
            // Listed, and absent then: the listing's version covers it.
            return Ok(View::Known(None));
        }
        if self.seen.len() >= self.limits.max_reads {
            return Err(KvError::TooManyReads {
                max: self.limits.max_reads,
            });
        }
        Ok(View::Unread)
    }

    /// The committed entry of `bucket`/`key`, read from the broker at
    /// `version` (`0`: absent). The first read of a key is the one kept.
    /// Past `max_read_bytes` the value is not kept, and the read fails.
    pub fn saw(
        &mut self,
        bucket: &str,
        key: &str,
        value: Option<Vec<u8>>,
        version: Version,
    ) -> Result<(), KvError> {
        let k = (bucket.to_string(), key.to_string());
        if self.seen.contains_key(&k) {
            return Ok(());
        }
        let bytes = self.read_bytes + bucket.len() + key.len() + value.as_ref().map_or(0, Vec::len);
        if bytes > self.limits.max_read_bytes {
            return Err(KvError::ReadTooMuch {
                bytes,
                max: self.limits.max_read_bytes,
            });
        }
        self.read_bytes = bytes;
        self.seen.insert(k, (value, version));
        Ok(())
    }

    /// Write `value` to `bucket`/`key` (seen by this invocation's reads
    /// at once, by others once it commits).
    pub fn set(&mut self, bucket: &str, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        self.key_ok(key)?;
        if value.len() > self.limits.max_value_bytes {
            return Err(KvError::ValueTooLarge {
                key: crate::text::clean(key, 80),
                len: value.len(),
                max: self.limits.max_value_bytes,
            });
        }
        self.write(bucket, key, Some(value))
    }

    /// Delete `bucket`/`key` (absent or not).
    pub fn delete(&mut self, bucket: &str, key: &str) -> Result<(), KvError> {
        self.key_ok(key)?;
        self.write(bucket, key, None)
    }

    fn write(&mut self, bucket: &str, key: &str, value: Option<Vec<u8>>) -> Result<(), KvError> {
        let k = (bucket.to_string(), key.to_string());
        if !self.writes.contains_key(&k) && self.writes.len() >= self.limits.max_writes {
            return Err(KvError::TooManyWrites {
                max: self.limits.max_writes,
            });
        }
        self.writes.insert(k, value);
        Ok(())
    }

    /// Add `delta` to the counter at `bucket`/`key` (absent: 0) and
    /// return the new value. The key must be known ([`Txn::view`] not
    /// [`View::Unread`]): the sandbox reads it first.
    pub fn increment(&mut self, bucket: &str, key: &str, delta: u64) -> Result<u64, KvError> {
        let now = match self.view(bucket, key)? {
            View::Known(v) => counter(key, v)?,
            View::Unread => unreachable!("the sandbox reads a key before incrementing it"),
        };
        let new = now.checked_add(delta).ok_or_else(|| KvError::Overflow {
            key: crate::text::clean(key, 80),
        })?;
        self.set(bucket, key, new.to_string().into_bytes())?;
        Ok(new)
    }

    /// Whether `bucket`'s committed keys were listed by this invocation.
    pub fn has_listed(&self, bucket: &str) -> bool {
        self.listed.contains_key(bucket)
    }

    /// `bucket`'s committed keys, read from the broker at the bucket's
    /// `version`. The first listing is the one kept.
    /// Past `max_read_bytes` the listing is not kept, and it fails.
    pub fn listed(
        &mut self,
        bucket: &str,
        keys: Vec<String>,
        version: Version,
    ) -> Result<(), KvError> {
        if self.listed.contains_key(bucket) {
            return Ok(());
        }
        let bytes = self.read_bytes + keys.iter().map(String::len).sum::<usize>();
        if bytes > self.limits.max_read_bytes {
            return Err(KvError::ReadTooMuch {
                bytes,
                max: self.limits.max_read_bytes,
            });
        }
        self.read_bytes = bytes;
        self.listed
            .insert(bucket.to_string(), (keys.into_iter().collect(), version));
        Ok(())
    }

    /// `bucket`'s keys as this invocation sees them, sorted: the committed
    /// ones listed, with its own writes and deletions. `None` until the
    /// bucket is listed ([`Txn::listed`]).
    pub fn keys(&self, bucket: &str) -> Option<Vec<String>> {
        let (committed, _) = self.listed.get(bucket)?;
        let mut keys = committed.clone();
        for ((b, k), v) in &self.writes {
            if b == bucket {
                if v.is_some() {
                    keys.insert(k.clone());
                } else {
                    keys.remove(k);
                }
            }
        }
        Some(keys.into_iter().collect())
    }

    /// What the commit must check and apply. The reads of an invocation
    /// that wrote nothing are checked too: each key was read from the
    /// broker at its own moment, and only the check shows that they were
    /// all still current together (no output made of two states).
    pub fn into_writes(self) -> Writes {
        Writes {
            reads: self
                .seen
                .into_iter()
                .map(|((b, k), (_, v))| (b, k, v))
                .collect(),
            lists: self.listed.into_iter().map(|(b, (_, v))| (b, v)).collect(),
            writes: self
                .writes
                .into_iter()
                .map(|((b, k), v)| (b, k, v))
                .collect(),
        }
    }
}
