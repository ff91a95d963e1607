//! Host-owned extensions are believed only from a host of the app.
//!
//! On NATS anyone who may publish to the namespace's subjects can put a
//! message on them, with any headers: a producer's event on `NS.ev.TYPE`
//! carrying `trouperun` and `troupestep` made its calls with another run's
//! idempotency keys, and `troupeattempt: 7` was shown to the guest as
//! attempt 7. So every message a host publishes with a host-owned
//! extension ([`HOST_OWNED`]) carries a seal, the header [`HEADER`]: an
//! HMAC-SHA256, under a key only the app's hosts read, of the event's id,
//! source and type and of each host-owned extension it carries. A message
//! read without a valid seal has its host-owned extensions taken away
//! before anything sees it (a warning says so): it is a producer's event,
//! and the host derives nothing from what it claims.
//!
//! The key is drawn once per app and kept in the app's state bucket
//! (`NS_APP_state`, key [`KEY`]), created with compare-and-set so that
//! hosts starting together agree on it. docs/brokers.md gives the NATS
//! permissions under which producers can neither read it nor publish
//! commands and replies (`NS.to.>`).
//!
//! Another app on the same namespace has a key of its own: a hybrid
//! hand-off it consumes loses its `trouperun`/`troupestep` there, and its
//! steps key their calls by the event's id, as for any event.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::kv;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::nats;
use crate::broker::BrokerError;
use crate::event::Event;
use crate::protocol::HOST_OWNED;

/// The header that carries the seal.
pub const HEADER: &str = "troupe-seal";
/// The state bucket's key that holds the app's sealing key.
pub const KEY: &str = "seal/key";

/// The app's sealing key.
#[derive(Clone)]
pub struct Seal(Arc<[u8; 32]>);

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seal(..)")
    }
}

impl Seal {
    /// The app's key from its state bucket, drawn and stored if it has
    /// none yet (the first host to store it wins; the others read it).
    pub async fn of_app(state: &kv::Store) -> Result<Seal, BrokerError> {
        if let Some(k) = state.get(KEY).await.map_err(nats)?
            && let Ok(key) = <[u8; 32]>::try_from(&k[..])
        {
            return Ok(Seal(Arc::new(key)));
        }
        let mut drawn = [0u8; 32];
        drawn[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        drawn[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        if state
            .create(KEY, Bytes::copy_from_slice(&drawn))
            .await
            .is_ok()
        {
            return Ok(Seal(Arc::new(drawn)));
        }
        // Another host stored one first.
        let k = state
            .get(KEY)
            .await
            .map_err(nats)?
            .ok_or_else(|| BrokerError::Nats(format!("the app's {KEY} vanished")))?;
        let key = <[u8; 32]>::try_from(&k[..])
            .map_err(|_| BrokerError::Nats(format!("the app's {KEY} is not 32 bytes")))?;
        Ok(Seal(Arc::new(key)))
    }

    #[cfg(test)]
    pub fn from_key(key: [u8; 32]) -> Seal {
        Seal(Arc::new(key))
    }

    fn mac(&self, e: &Event) -> Hmac<Sha256> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0[..]).expect("any key length");
        let mut part = |s: &str| {
            m.update(&(s.len() as u64).to_be_bytes());
            m.update(s.as_bytes());
        };
        part(&e.id);
        part(&e.source);
        part(&e.kind);
        for name in HOST_OWNED {
            match e.extensions.get(name) {
                Some(v) => {
                    part(name);
                    part(v);
                }
                None => part(""),
            }
        }
        m
    }

    /// The seal `e` is published with, if it carries a host-owned
    /// extension.
    pub fn seal(&self, e: &Event) -> Option<String> {
        HOST_OWNED
            .iter()
            .any(|k| e.extensions.contains_key(*k))
            .then(|| hex::encode(self.mac(e).finalize().into_bytes()))
    }

    /// Take away the host-owned extensions of `e`, read from a message on
    /// `subject` with the seal `given`, unless a host of the app sealed
    /// them. Whether it took any.
    pub fn unless_sealed(&self, e: &mut Event, given: Option<&str>, subject: &str) -> bool {
        if !HOST_OWNED.iter().any(|k| e.extensions.contains_key(*k)) {
            return false;
        }
        let sealed = given
            .and_then(|g| hex::decode(g).ok())
            .is_some_and(|g| self.mac(e).verify_slice(&g).is_ok());
        if sealed {
            return false;
        }
        let taken: Vec<&str> = HOST_OWNED
            .into_iter()
            .filter(|k| e.extensions.remove(*k).is_some())
            .collect();
        e.typed.retain(|k| !taken.contains(&k.as_str()));
        static SEEN: AtomicU64 = AtomicU64::new(0);
        let n = SEEN.fetch_add(1, Ordering::Relaxed);
        // The first, then one in a thousand: a producer who sends many
        // cannot flood the log.
        if n.is_multiple_of(1000) {
            tracing::warn!(
                event = %crate::text::clean(&e.id, 200),
                %subject,
                "an event carries extensions only a host of this app sets ({}), without the \
                 app's seal: they are ignored ({} such events so far)",
                taken.join(", "),
                n + 1
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> Event {
        let mut e = Event::new("order.placed", "troupe://shop/orchestrator", b"{}".to_vec());
        for (k, v) in [
            (crate::protocol::RUN, "r1"),
            (crate::protocol::FLOW_STEP, "charge"),
            (crate::protocol::ATTEMPT, "2"),
            (crate::event::TARGET, "payment-charge"),
        ] {
            e.extensions.insert(k.into(), v.into());
        }
        e
    }

    #[test]
    fn a_hosts_seal_is_believed_and_a_forgery_is_not() {
        let seal = Seal::from_key([7; 32]);
        let e = command();
        let s = seal.seal(&e).expect("sealed");
        let mut read = e.clone();
        assert!(!seal.unless_sealed(&mut read, Some(&s), "x"));
        assert_eq!(read, e);
        // No seal, another app's seal, or one for other values: taken away.
        let other = Seal::from_key([8; 32]).seal(&e);
        let mut changed = e.clone();
        changed
            .extensions
            .insert(crate::protocol::ATTEMPT.into(), "7".into());
        for (mut forged, given) in [
            (e.clone(), None),
            (e.clone(), other.as_deref()),
            (changed, Some(s.as_str())),
            (e.clone(), Some("zz")),
        ] {
            assert!(seal.unless_sealed(&mut forged, given, "x"));
            assert!(
                HOST_OWNED
                    .iter()
                    .all(|k| !forged.extensions.contains_key(*k)),
                "{forged:?}"
            );
            assert_eq!(forged.id, e.id);
        }
        // An event without host-owned extensions needs no seal.
        let mut plain = Event::new("a.b", "urn:x", b"{}".to_vec());
        assert!(seal.seal(&plain).is_none());
        assert!(!seal.unless_sealed(&mut plain, None, "x"));
    }
}
