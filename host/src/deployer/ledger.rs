//! The app's deployments in the broker: read (one row per number, in
//! order), recorded (only if the number is free), and a host started on
//! an earlier deployment's files taking up the current one.

use super::{DeployError, Deployer, Held, Outcome};
use crate::broker::{Broker, BrokerError};
use crate::deploy::{Deployment, Ledger};

impl Deployer {
    /// Start on the app's current deployment `cur` although this host's
    /// files are the earlier `mine`: load `cur` (from the store, or files
    /// that are the same); if that cannot be done, hold `mine` wired but
    /// take no work, and say why in `/readyz`, until `cur` can be loaded
    /// (`watch.rs` tries again).
    pub(super) async fn adopt(
        &self,
        cur: Deployment,
        mine: Deployment,
        held: Held,
    ) -> Result<Outcome, DeployError> {
        tracing::warn!(
            "this host's files are deployment {}, and the app's current deployment is {}: \
             this host serves {} (update its files before its next deploy)",
            mine.number,
            cur.number,
            cur.number
        );
        match self.blocking_load(cur.clone()).await {
            Ok(h) => self.switch(&cur, h).await?,
            Err(e) => {
                self.switch(&mine, held).await?;
                {
                    let mut st = self.state.lock().expect("deployer lock");
                    st.unready = Some(e.to_string());
                    // New runs still start on the app's current deployment.
                    st.flows.current = cur.number;
                }
                self.open(false);
                tracing::error!(
                    "this host takes no work until it can load the app's current deployment: {e}"
                );
            }
        }
        Ok(Outcome {
            deployment: cur,
            recorded: false,
            dry_run: false,
            changes: Vec::new(),
        })
    }

    /// Write `d`'s record: whether it was written (`false`: another host
    /// recorded that number first).
    pub(super) async fn record(&self, d: &Deployment) -> Result<bool, DeployError> {
        let bytes = serde_json::to_vec(d).expect("a deployment serialises");
        if let Some(max) = self.broker.max_state_bytes()
            && bytes.len() > max
        {
            return Err(DeployError::Invalid(format!(
                "the deployment's record is {} bytes (its contracts and flows), more than this \
                 broker holds in one state row ({max} bytes)",
                bytes.len()
            )));
        }
        Ok(self
            .broker
            .state_create(&crate::deploy::row(d.number), bytes)
            .await?)
    }
}

/// The deployments recorded in `broker` past those `known` holds (the
/// records are numbered 1, 2, ... with no gap: each is written only if its
/// number is free, the next after the newest). One read per record, so the
/// runs' rows beside them are never scanned.
pub(crate) async fn read_ledger_from(
    broker: &dyn Broker,
    known: &Ledger,
) -> Result<Ledger, BrokerError> {
    let mut l = known.clone();
    let mut n = l.current().map_or(1, |d| d.number + 1);
    while let Some(v) = broker.state_get(&crate::deploy::row(n)).await? {
        match serde_json::from_slice::<Deployment>(&v) {
            Ok(d) if d.number == n => l.recorded(d),
            _ => {
                return Err(BrokerError::Store(format!(
                    "the record of deployment {n} cannot be read"
                )));
            }
        }
        n += 1;
    }
    Ok(l)
}

/// Every deployment recorded in `broker`.
pub(crate) async fn read_ledger(broker: &dyn Broker) -> Result<Ledger, BrokerError> {
    read_ledger_from(broker, &Ledger::default()).await
}
