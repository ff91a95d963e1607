//! The app's embedded broker as a process other than its host reaches it
//! (the CLI): through the store's files, whether or not a host holds
//! them.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use rusqlite::Connection;

use super::{DB_FILE, kv, prune, store};
use crate::broker::{
    AppEvents, BrokerError, Buckets, DeadLetter, DeadLetters, Horizon, Publish, Traces,
    check_entry_name,
};
use crate::event::Event;
use crate::kv::Version;

/// Work for a broker from another process: the CLI's `publish` and
/// `dlq replay` against an app directory, whether or not a host runs.
/// The app's embedded broker as another process reaches it (`troupe
/// publish`, `dlq`, `trace`), whether or not a host holds it: events and
/// replays are queued in the store's inbox for the host to take (durable
/// when the call returns); dead letters and traces are read from the
/// store.
pub struct Offline {
    state_dir: PathBuf,
}

impl Offline {
    pub fn new(state_dir: &Path) -> Offline {
        Offline {
            state_dir: state_dir.to_path_buf(),
        }
    }

    /// The store, brought up to date, if a broker ever ran there.
    fn store(&self) -> Result<Option<Connection>, BrokerError> {
        if !self.state_dir.join(DB_FILE).exists() {
            return Ok(None);
        }
        store::open(&self.state_dir).map(Some)
    }

    fn dead_letters(&self, id: Option<&str>) -> Result<Vec<DeadLetter>, BrokerError> {
        // Empty when no broker ever ran there.
        match store::open_read(&self.state_dir)? {
            Some(c) => store::dead_letters(&c, id),
            None => Ok(Vec::new()),
        }
    }
}

#[async_trait]
impl Publish for Offline {
    async fn publish(&self, events: Vec<Event>) -> Result<(), BrokerError> {
        let items: Vec<(&str, String)> = events
            .iter()
            .map(|e| ("publish", e.to_json().to_string()))
            .collect();
        store::queue(&self.state_dir, &items)
    }
}

#[async_trait]
impl DeadLetters for Offline {
    async fn dlq_list(&self) -> Result<Vec<DeadLetter>, BrokerError> {
        self.dead_letters(None)
    }

    async fn dlq_get(&self, id: &str) -> Result<DeadLetter, BrokerError> {
        self.dead_letters(Some(id))?
            .pop()
            .ok_or_else(|| BrokerError::NoSuchDeadLetter(id.to_string()))
    }

    /// Queue the replay of dead letter `id` for the host.
    async fn dlq_replay(&self, id: &str) -> Result<(), BrokerError> {
        self.dlq_get(id).await?;
        store::queue(&self.state_dir, &[("replay", id.to_string())])
    }

    /// Queue the removal of dead letter `id` for the host.
    async fn dlq_purge(&self, id: &str) -> Result<(), BrokerError> {
        self.dlq_get(id).await?;
        store::queue(&self.state_dir, &[("purge", id.to_string())])
    }
}

#[async_trait]
impl Traces for Offline {
    async fn trace(&self, correlation_id: &str) -> Result<Vec<Event>, BrokerError> {
        match store::open_read(&self.state_dir)? {
            Some(c) => store::trace(&c, correlation_id),
            None => Ok(Vec::new()),
        }
    }

    async fn horizon(&self) -> Result<Horizon, BrokerError> {
        match store::open_read(&self.state_dir)? {
            Some(c) => prune::horizon(&c),
            None => Ok(Horizon::default()),
        }
    }
}

#[async_trait]
impl Buckets for Offline {
    async fn bucket_keys(&self, bucket: &str) -> Result<Vec<String>, BrokerError> {
        check_entry_name(bucket, None)?;
        match self.store()? {
            Some(c) => Ok(kv::list(&c, bucket)?.0),
            None => Ok(Vec::new()),
        }
    }

    async fn bucket_entry(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, Version)>, BrokerError> {
        check_entry_name(bucket, Some(key))?;
        match self.store()? {
            Some(c) => kv::get(&c, bucket, key),
            None => Ok(None),
        }
    }

    async fn bucket_write(
        &self,
        bucket: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), BrokerError> {
        check_entry_name(bucket, Some(key))?;
        let (dir, b, k) = (self.state_dir.clone(), bucket.to_string(), key.to_string());
        tokio::task::spawn_blocking(move || kv::write_one(&dir, &b, &k, value))
            .await
            .map_err(|e| BrokerError::Store(e.to_string()))?
    }
}

impl AppEvents for Offline {
    fn queued(&self) -> bool {
        true
    }
}
