//! The app's state on NATS as the broker's facets: the orchestrator's
//! ([`RunState`]: rows, i.e. run records and idempotency keys, as entries
//! of the app's state bucket, and the orchestrator lease, taken and
//! renewed by compare-and-set on its entry's revision), and steps' buckets
//! as operators reach them ([`Buckets`]; the commit log behind them is
//! `state/`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use super::dlq::DLQ_HEADROOM;
use super::{Nats, nats};
use crate::broker::{BrokerError, Buckets, RunState};

#[async_trait]
impl RunState for Nats {
    fn max_state_bytes(&self) -> Option<usize> {
        // A key-value entry is one message on `$KV.BUCKET.KEY`.
        Some(self.inner.max_payload.saturating_sub(DLQ_HEADROOM))
    }

    async fn state_get(&self, key: &str) -> Result<Option<Vec<u8>>, BrokerError> {
        Ok(self
            .inner
            .state
            .get(key)
            .await
            .map_err(nats)?
            .map(|b| b.to_vec()))
    }

    async fn state_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, BrokerError> {
        let mut keys: Vec<String> = Vec::new();
        let mut all = self.inner.state.keys().await.map_err(nats)?;
        while let Some(k) = all.next().await {
            let k = k.map_err(nats)?;
            if k.starts_with(prefix) {
                keys.push(k);
            }
        }
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(v) = self.inner.state.get(&k).await.map_err(nats)? {
                out.push((k, v.to_vec()));
            }
        }
        Ok(out)
    }

    async fn runs_list(
        &self,
        query: &crate::broker::runs::RunQuery,
    ) -> Result<crate::broker::runs::RunPage, BrokerError> {
        Ok(self.inner.run_index().await?.query(query))
    }

    async fn runs_counts(&self) -> Result<Vec<crate::broker::runs::RunCount>, BrokerError> {
        Ok(self.inner.run_index().await?.counts())
    }

    async fn state_create(&self, key: &str, value: Vec<u8>) -> Result<bool, BrokerError> {
        use kv::CreateErrorKind;
        match self.inner.state.create(key, value.into()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(nats(e)),
        }
    }

    fn kv_reader(&self) -> Option<Arc<dyn crate::kv::Reader>> {
        // A host whose steps may keep state applies commits too.
        self.inner.kv.clone().run_applier();
        Some(self.inner.kv.clone())
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, BrokerError> {
        use kv::{CreateErrorKind, UpdateErrorKind};
        let kv = &self.inner.state;
        let key = format!("lease/{name}");
        let now = crate::clock::now_ms();
        let value: Bytes = serde_json::to_vec(&serde_json::json!({
            "holder": holder,
            "until_ms": now + ttl.as_millis() as u64,
        }))
        .expect("JSON")
        .into();
        // Compare-and-set on the entry's revision: of two hosts that find
        // the lease free at once, one wins.
        let r = match kv.entry(&key).await.map_err(nats)? {
            None => {
                return match kv.create(&key, value).await {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(nats(e)),
                };
            }
            Some(e) => {
                let current: serde_json::Value =
                    serde_json::from_slice(&e.value).unwrap_or_default();
                let free = e.operation != kv::Operation::Put
                    || current["holder"] == holder
                    || current["until_ms"].as_u64().unwrap_or(0) < now;
                if !free {
                    return Ok(false);
                }
                kv.update(&key, value, e.revision).await
            }
        };
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(nats(e)),
        }
    }
}

#[async_trait]
impl Buckets for Nats {
    async fn bucket_keys(&self, bucket: &str) -> Result<Vec<String>, BrokerError> {
        crate::broker::check_entry_name(bucket, None)?;
        Ok(self.inner.kv.list(bucket).await?.0)
    }

    async fn bucket_entry(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, crate::kv::Version)>, BrokerError> {
        crate::broker::check_entry_name(bucket, Some(key))?;
        self.inner.kv.get(bucket, key).await
    }

    async fn bucket_write(
        &self,
        bucket: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), BrokerError> {
        crate::broker::check_entry_name(bucket, Some(key))?;
        self.inner.kv.write(bucket, key, value).await
    }
}
