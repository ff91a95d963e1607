//! `wasi:keyvalue` for steps: their buckets, over [`crate::kv`].
//!
//! Each call a guest makes goes to the invocation's [`Txn`]: reads it
//! already knows (its own writes, keys read before) are answered there,
//! others read the committed entry through the broker's [`Reader`] and are
//! remembered with their version; writes stay in the `Txn` until the host
//! takes them ([`StepState::finish`]) for the commit that settles the
//! delivery. So **nothing a guest writes reaches the store unless its
//! invocation's outcome commits**.
//!
//! Errors the guest can act on (a bucket not granted, a key or value over
//! its limit, a store that could not be read) come back as the
//! interface's `error` with a message that says which; outside `handle`
//! (in `describe`) every call fails the same way.

use std::sync::Arc;

use wasmtime::component::Resource;

use super::sandbox::StepCtx;
use crate::kv::{KvError, KvLimits, ReadError, Reader, Txn, View, Writes};
use crate::world::KvBucket;
use crate::world::keyvalue::wasi::keyvalue::{atomics, batch, store};

/// Keys one `list-keys` call returns; a `cursor` pages on.
const PAGE: usize = 1000;

/// The step state part of a store's data.
pub(crate) struct StepState {
    step: Arc<str>,
    /// Buckets granted besides the step's own (`grants.kv`).
    granted: Arc<[String]>,
    limits: KvLimits,
    /// The committed state; `None` where there is no broker (`troupe
    /// test`, the conformance kit): every call fails.
    reader: Option<Arc<dyn Reader>>,
    /// The current invocation's transaction, while it handles an event.
    txn: Option<Txn>,
}

/// Why a bucket call failed.
#[derive(Debug, thiserror::Error)]
enum StateError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("step state is available only while handling an event")]
    NotHandling,
    #[error("step state is not available here (no broker that keeps it: see docs/state.md)")]
    NoStore,
}

impl StepState {
    pub(crate) fn new(
        step: &Arc<str>,
        granted: &Arc<[String]>,
        limits: &KvLimits,
        reader: Option<Arc<dyn Reader>>,
    ) -> StepState {
        StepState {
            step: step.clone(),
            granted: granted.clone(),
            limits: limits.clone(),
            reader,
            txn: None,
        }
    }

    /// A new invocation begins (`None`: `describe`, with no state).
    pub(crate) fn begin(&mut self, handling: bool) {
        self.txn = handling.then(|| Txn::new(&self.step, &self.granted, self.limits.clone()));
    }

    /// The invocation ended: what its commit must check and apply.
    pub(crate) fn finish(&mut self) -> Writes {
        self.txn.take().map(Txn::into_writes).unwrap_or_default()
    }

    fn txn(&mut self) -> Result<&mut Txn, StateError> {
        self.txn.as_mut().ok_or(StateError::NotHandling)
    }

    async fn get(&mut self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let txn = self.txn.as_mut().ok_or(StateError::NotHandling)?;
        if let View::Known(v) = txn.view(bucket, key)? {
            return Ok(v.map(<[u8]>::to_vec));
        }
        let reader = self.reader.as_ref().ok_or(StateError::NoStore)?;
        let (value, version) = match reader.kv_get(bucket, key).await? {
            Some((v, version)) => (Some(v), version),
            None => (None, 0),
        };
        txn.saw(bucket, key, value.clone(), version)?;
        Ok(value)
    }

    async fn keys(&mut self, bucket: &str) -> Result<Vec<String>, StateError> {
        let txn = self.txn.as_mut().ok_or(StateError::NotHandling)?;
        if !txn.has_listed(bucket) {
            let reader = self.reader.as_ref().ok_or(StateError::NoStore)?;
            let (keys, version) = reader.kv_list(bucket).await?;
            txn.listed(bucket, keys, version)?;
        }
        Ok(txn.keys(bucket).expect("listed above"))
    }

    async fn increment(&mut self, bucket: &str, key: &str, delta: u64) -> Result<u64, StateError> {
        // The counter's committed value is read first (and its version
        // kept for the commit's check).
        self.get(bucket, key).await?;
        Ok(self.txn()?.increment(bucket, key, delta)?)
    }
}

/// The guest's view of a failure: an `other` error that says what.
fn to_guest<T>(r: Result<T, StateError>) -> Result<T, store::Error> {
    r.map_err(|e| store::Error::Other(e.to_string()))
}

impl StepCtx {
    fn bucket(&self, b: &Resource<KvBucket>) -> wasmtime::Result<String> {
        Ok(self.table.get(b)?.0.clone())
    }
}

type Answer<T> = wasmtime::Result<Result<T, store::Error>>;

impl store::Host for StepCtx {
    async fn open(&mut self, identifier: String) -> Answer<Resource<KvBucket>> {
        let opened = match self.kv.reader {
            None => Err(StateError::NoStore),
            Some(_) => self.kv.txn().and_then(|t| Ok(t.open(&identifier)?)),
        };
        let name = match opened {
            Ok(name) => name,
            Err(e) => {
                if matches!(e, StateError::Kv(KvError::NotGranted { .. })) {
                    tracing::warn!(step = %self.kv.step, event = %self.event_id, "{e}");
                }
                return Ok(to_guest(Err(e)));
            }
        };
        Ok(Ok(self.table.push(KvBucket(name))?))
    }
}

impl store::HostBucket for StepCtx {
    async fn get(&mut self, b: Resource<KvBucket>, key: String) -> Answer<Option<Vec<u8>>> {
        let bucket = self.bucket(&b)?;
        Ok(to_guest(self.kv.get(&bucket, &key).await))
    }

    async fn set(&mut self, b: Resource<KvBucket>, key: String, value: Vec<u8>) -> Answer<()> {
        let bucket = self.bucket(&b)?;
        Ok(to_guest(
            self.kv.txn().and_then(|t| Ok(t.set(&bucket, &key, value)?)),
        ))
    }

    async fn delete(&mut self, b: Resource<KvBucket>, key: String) -> Answer<()> {
        let bucket = self.bucket(&b)?;
        Ok(to_guest(
            self.kv.txn().and_then(|t| Ok(t.delete(&bucket, &key)?)),
        ))
    }

    async fn exists(&mut self, b: Resource<KvBucket>, key: String) -> Answer<bool> {
        let bucket = self.bucket(&b)?;
        Ok(to_guest(
            self.kv.get(&bucket, &key).await.map(|v| v.is_some()),
        ))
    }

    async fn list_keys(
        &mut self,
        b: Resource<KvBucket>,
        cursor: Option<u64>,
    ) -> Answer<store::KeyResponse> {
        let bucket = self.bucket(&b)?;
        Ok(to_guest(self.kv.keys(&bucket).await.map(|keys| {
            let from = usize::try_from(cursor.unwrap_or(0))
                .unwrap_or(usize::MAX)
                .min(keys.len());
            let to = from.saturating_add(PAGE).min(keys.len());
            store::KeyResponse {
                cursor: (to < keys.len()).then_some(to as u64),
                keys: keys[from..to].to_vec(),
            }
        })))
    }

    async fn drop(&mut self, b: Resource<KvBucket>) -> wasmtime::Result<()> {
        self.table.delete(b)?;
        Ok(())
    }
}

impl atomics::Host for StepCtx {
    async fn increment(&mut self, b: Resource<KvBucket>, key: String, delta: u64) -> Answer<u64> {
        let bucket = self.bucket(&b)?;
        Ok(to_guest(self.kv.increment(&bucket, &key, delta).await))
    }
}

impl batch::Host for StepCtx {
    async fn get_many(
        &mut self,
        b: Resource<KvBucket>,
        keys: Vec<String>,
    ) -> Answer<Vec<Option<(String, Vec<u8>)>>> {
        let bucket = self.bucket(&b)?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            match self.kv.get(&bucket, &key).await {
                Ok(v) => out.push(v.map(|v| (key, v))),
                Err(e) => return Ok(to_guest(Err(e))),
            }
        }
        Ok(Ok(out))
    }

    async fn set_many(
        &mut self,
        b: Resource<KvBucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Answer<()> {
        let bucket = self.bucket(&b)?;
        Ok(to_guest(self.kv.txn().and_then(|t| {
            for (key, value) in key_values {
                t.set(&bucket, &key, value)?;
            }
            Ok(())
        })))
    }

    async fn delete_many(&mut self, b: Resource<KvBucket>, keys: Vec<String>) -> Answer<()> {
        let bucket = self.bucket(&b)?;
        Ok(to_guest(self.kv.txn().and_then(|t| {
            for key in &keys {
                t.delete(&bucket, key)?;
            }
            Ok(())
        })))
    }
}
