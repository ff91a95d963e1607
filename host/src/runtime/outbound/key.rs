//! The idempotency key of a call, and the span id of its trace.
//!
//! **A redelivered event makes its calls with the same keys**: the key is
//! derived from what stays the same across deliveries (the event's source
//! and id; for an orchestration command, its run and flow step, which stay
//! the same across the command's attempts), the step, and the call's
//! position within the invocation (0 for its first call, and so on). A
//! retry, a trap or a host killed mid-call all deliver the event again,
//! and a guest that makes the same calls in the same order sends the same
//! keys. The key is a UUID (version 8) made of a SHA-256 of those parts.

use sha2::{Digest, Sha256};

use crate::event::Event;
use crate::protocol::{FLOW_STEP, RUN};

/// The header the key travels in.
pub const HEADER: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// What the keys of an event's calls are derived from.
pub fn basis(event: &Event) -> String {
    match (event.extensions.get(RUN), event.extensions.get(FLOW_STEP)) {
        (Some(run), Some(step)) => format!("run\n{run}\n{step}"),
        _ => format!("event\n{}\n{}", event.source, event.id),
    }
}

fn digest(basis: &str, step: &str, position: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(basis.as_bytes());
    h.update(b"\n");
    h.update(step.as_bytes());
    h.update(b"\n");
    h.update(position.to_be_bytes());
    h.finalize().into()
}

/// The key of call number `position` (from 0) that `step` makes while
/// handling the event of `basis`.
pub fn idempotency_key(basis: &str, step: &str, position: u32) -> String {
    let d = digest(basis, step, position);
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Uuid::new_v8(b).to_string()
}

/// The span id of that call in the event's trace (16 hex digits, never all
/// zero).
pub fn span_id(basis: &str, step: &str, position: u32) -> String {
    let d = digest(basis, step, position);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[16..24]);
    let v = u64::from_be_bytes(b).max(1);
    format!("{v:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_depends_on_the_event_the_step_and_the_position_only() {
        let mut e = Event::new("order.placed", "troupe://shop/publish", b"{}".to_vec());
        let b = basis(&e);
        let k = idempotency_key(&b, "charge", 0);
        assert_eq!(k, idempotency_key(&basis(&e.clone()), "charge", 0));
        assert_ne!(k, idempotency_key(&b, "charge", 1));
        assert_ne!(k, idempotency_key(&b, "refund", 0));
        e.id = "another".into();
        assert_ne!(k, idempotency_key(&basis(&e), "charge", 0));
        assert_eq!(uuid::Uuid::parse_str(&k).unwrap().get_version_num(), 8);
    }

    #[test]
    fn a_commands_attempts_share_their_keys() {
        let mut a = Event::new("order.placed", "troupe://shop/orchestrator", b"{}".to_vec());
        a.extensions.insert(RUN.into(), "r1".into());
        a.extensions.insert(FLOW_STEP.into(), "charge".into());
        let mut b = a.clone();
        b.id = "the-second-attempt".into();
        assert_eq!(basis(&a), basis(&b));
        b.extensions.insert(FLOW_STEP.into(), "undo/charge".into());
        assert_ne!(basis(&a), basis(&b));
    }
}
