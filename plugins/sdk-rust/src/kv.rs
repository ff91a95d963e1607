//! Step state, over `wasi:keyvalue` (store, atomics, batch).
//!
//! A step keeps state in buckets: its own (named after the step, opened
//! with [`Bucket::own`]) and those `grants.kv` in `troupe.toml` grants it
//! ([`Bucket::open`]). Within one invocation, reads see the committed
//! state plus the invocation's own writes; the writes are applied if and
//! only if the invocation's outcome commits (its emitted events and the
//! acknowledgement of its input, in the same commit). A `retry`, a trap or
//! a limit discards them, and an invocation whose reads went stale before
//! its commit is run again by the host. See docs/state.md.
//!
//! ```ignore
//! use troupe_step::kv::Bucket;
//! let stock = Bucket::open("stock")?;
//! let left: u64 = stock.get_json("tea")?.unwrap_or(0);
//! if left < qty { return Err(StepError::Reject("out of stock".into())); }
//! stock.set_json("tea", &(left - qty))?;
//! ```
//!
//! Every failure comes back as a [`StepError`]: the store being
//! unavailable as `retry`, anything else (a bucket not granted, a key or
//! value over its limit) as `reject`, with the host's message. Use
//! [`Bucket::raw`] for the interface itself.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::StepError;

/// The generated bindings of `wasi:keyvalue@0.2.0-draft`.
pub mod bindings {
    wit_bindgen::generate!({
        world: "wasi:keyvalue/imports@0.2.0-draft",
        path: "../../wit/kv/deps/keyvalue",
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// An open bucket.
pub struct Bucket(store::Bucket);

impl From<store::Error> for StepError {
    fn from(e: store::Error) -> StepError {
        match e {
            store::Error::NoSuchStore => StepError::Reject("no such bucket".into()),
            store::Error::AccessDenied => StepError::Reject("bucket access denied".into()),
            store::Error::Other(m) if m.starts_with("the state store is unavailable") => {
                StepError::Retry(m)
            }
            store::Error::Other(m) => StepError::Reject(m),
        }
    }
}

impl Bucket {
    /// The step's own bucket.
    pub fn own() -> Result<Bucket, StepError> {
        Bucket::open("")
    }

    /// Bucket `name`: granted to the step in `grants.kv`, or its own.
    pub fn open(name: &str) -> Result<Bucket, StepError> {
        Ok(Bucket(store::open(name)?))
    }

    /// The interface's bucket, for what this wrapper does not cover.
    pub fn raw(&self) -> &store::Bucket {
        &self.0
    }

    /// The value of `key`, if it has one.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StepError> {
        Ok(self.0.get(key)?)
    }

    /// The value of `key` as JSON; a value that is not `T` is a `reject`.
    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StepError> {
        self.get(key)?
            .map(|v| {
                serde_json::from_slice(&v).map_err(|e| {
                    StepError::Reject(format!(
                        "the value of {key:?} is not JSON this step reads: {e}"
                    ))
                })
            })
            .transpose()
    }

    /// Set `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), StepError> {
        Ok(self.0.set(key, value)?)
    }

    /// Set `key` to `value` as JSON.
    pub fn set_json(&self, key: &str, value: &impl Serialize) -> Result<(), StepError> {
        let v = serde_json::to_vec(value).expect("a serde value serialises to JSON");
        self.set(key, &v)
    }

    /// Delete `key` (whether or not it has a value).
    pub fn delete(&self, key: &str) -> Result<(), StepError> {
        Ok(self.0.delete(key)?)
    }

    /// Whether `key` has a value.
    pub fn exists(&self, key: &str) -> Result<bool, StepError> {
        Ok(self.0.exists(key)?)
    }

    /// Every key of the bucket, sorted.
    pub fn keys(&self) -> Result<Vec<String>, StepError> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.0.list_keys(cursor)?;
            keys.extend(page.keys);
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(keys),
            }
        }
    }

    /// Add `delta` to the counter at `key` (absent: 0) and return its new
    /// value. A counter is kept as decimal digits.
    pub fn increment(&self, key: &str, delta: u64) -> Result<u64, StepError> {
        Ok(atomics::increment(&self.0, key, delta)?)
    }

    /// The values of `keys`, in their order.
    pub fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StepError> {
        Ok(batch::get_many(&self.0, keys)?
            .into_iter()
            .map(|kv| kv.map(|(_, v)| v))
            .collect())
    }
}
