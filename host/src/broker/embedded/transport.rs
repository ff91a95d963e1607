//! The embedded broker's [`Transport`]: subscribing groups (and reading
//! their unsettled deliveries back from disk), commits handed to the
//! writer, retries and dead letters, the backlog and health. Kept apart
//! from `mod.rs`, which opens the broker and owns its threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::writer::Op;
use super::{Embedded, Group, foreign, seq, store};
use crate::broker::{
    BrokerError, Commit, Consumer, Delivery, Disposition, FailureClass, Then, Transport,
};
use crate::retry::RetryPolicy;

#[async_trait]
impl Transport for Embedded {
    async fn subscribe(
        &self,
        group: &str,
        kinds: &[String],
        retry: RetryPolicy,
    ) -> Result<Arc<dyn Consumer>, BrokerError> {
        let name: Arc<str> = group.into();
        if self.groups.read().expect("groups lock").contains_key(&name) {
            return Err(BrokerError::Misuse(format!(
                "group {group:?} is already subscribed"
            )));
        }
        let (tx, rx) = async_channel::unbounded();
        let g = Arc::new(Group {
            name: name.clone(),
            retry,
            tx,
            rx,
            pending: AtomicU64::new(0),
        });
        self.groups
            .write()
            .expect("groups lock")
            .insert(name, g.clone());
        {
            let mut routes = self.routes.write().expect("routes lock");
            for k in kinds {
                routes.entry(k.clone()).or_default().push(g.clone());
            }
        }
        let loaded = g.clone();
        self.call(|reply| Op::Load {
            group: loaded,
            reply,
        })
        .await
        .map_err(|e| store::damaged_at(&self.state_dir, e))?;
        Ok(g)
    }

    async fn route(&self, group: &str, kinds: &[String]) -> Result<(), BrokerError> {
        let Some(g) = self.groups.read().expect("groups lock").get(group).cloned() else {
            return Ok(());
        };
        let mut routes = self.routes.write().expect("routes lock");
        for gs in routes.values_mut() {
            gs.retain(|x| !Arc::ptr_eq(x, &g));
        }
        routes.retain(|_, gs| !gs.is_empty());
        for k in kinds {
            routes.entry(k.clone()).or_default().push(g.clone());
        }
        Ok(())
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        self.call(|reply| Op::Ready { reply }).await
    }

    fn commit_then(&self, mut c: Commit, then: Then) {
        let runs = super::writer::RunWrites::of(&mut c);
        let ack = match &c.ack {
            None => None,
            Some(d) => match seq(d) {
                Some(seq) => Some((d.group.clone(), seq)),
                None => return then(Err(foreign())),
            },
        };
        // A settlement the store could not keep is handed back, to be
        // handled again once it can.
        let then: Then = match c.ack {
            None => then,
            Some(d) => {
                let redeliver = self.redeliver.clone();
                Box::new(move |r| {
                    if let Err(e) = &r {
                        redeliver.after(d, e);
                    }
                    then(r)
                })
            }
        };
        let op = Op::Commit {
            ack,
            events: c.events,
            state: c.state,
            kv: c.kv.map(Box::new),
            early: c.early,
            runs,
            reply: then,
        };
        // If the writer is gone, the delivery stays unsettled on disk and is
        // delivered again by the next host.
        if let Err(Op::Commit { reply, .. }) = self.send(op) {
            reply(Err(BrokerError::Closed));
        }
    }

    async fn fail(
        &self,
        d: &Delivery,
        class: FailureClass,
        message: &str,
    ) -> Result<Disposition, BrokerError> {
        let policy = self
            .groups
            .read()
            .expect("groups lock")
            .get(&d.group)
            .map(|g| g.retry.clone());
        let Some(delay) = crate::broker::next_try(policy, d)? else {
            return self
                .dead_letter(d, class, message)
                .await
                .map(Disposition::DeadLettered);
        };
        let (delivery, seq) = (d.clone(), seq(d).ok_or_else(foreign)?);
        self.call(|reply| Op::Retry {
            delivery,
            seq,
            delay,
            reply,
        })
        .await
        .inspect_err(|e| self.redeliver.after(d.clone(), e))?;
        Ok(Disposition::Retry(delay))
    }

    async fn dead_letter(
        &self,
        d: &Delivery,
        class: FailureClass,
        message: &str,
    ) -> Result<String, BrokerError> {
        let (group, seq, attempts, message) = (
            d.group.clone(),
            seq(d).ok_or_else(foreign)?,
            d.attempt,
            crate::text::clean(message, crate::text::MAX_REASON),
        );
        let version = d.version.clone();
        self.call(|reply| Op::DeadLetter {
            group,
            seq,
            attempts,
            class,
            message,
            version,
            reply,
        })
        .await
        .inspect_err(|e| self.redeliver.after(d.clone(), e))
    }

    async fn backlog(&self) -> Result<u64, BrokerError> {
        let queued: u64 = self
            .groups
            .read()
            .expect("groups lock")
            .values()
            .map(|g| g.pending.load(Ordering::Relaxed))
            .sum();
        let inbox = self.read(store::inbox_len).await?;
        Ok(queued + inbox)
    }

    fn health(&self) -> crate::broker::Health {
        self.health.snapshot()
    }

    async fn close(&self) {
        for g in self.groups.read().expect("groups lock").values() {
            g.tx.close();
        }
    }
}
