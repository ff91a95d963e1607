//! What a worker writes beside a step's outputs: the records of its
//! outbound calls (`troupe.http.call`) and of the keys it wrote
//! (`troupe.kv.write`), and the stamp on everything a step version emits
//! (its deployment and component).

use super::*;

impl Wiring {
    /// The `troupe.http.call` events recording `calls`, made while handling
    /// `event` (delivery `attempt`); their ids are the same if the outcome
    /// is committed twice.
    pub(super) fn call_events(
        &self,
        v: &Version,
        event: &Event,
        attempt: u32,
        calls: Vec<CallRecord>,
    ) -> Vec<Event> {
        if calls.is_empty() {
            return Vec::new();
        }
        let key = format!("{}/http/{attempt}", self.name);
        calls
            .into_iter()
            .map(|c| {
                let out = Emitted {
                    kind: CALL_EVENT.into(),
                    subject: Some(self.name.to_string()),
                    content_type: Some(JSON.into()),
                    data: serde_json::to_vec(&serde_json::json!({
                        "step": &*self.name,
                        "attempt": attempt,
                        "call": c,
                    }))
                    .expect("a call record serialises"),
                    schema: None,
                };
                stamped(
                    v,
                    event.caused(&key, &self.source, c.position as usize, out),
                )
            })
            .collect()
    }

    /// The `troupe.kv.write` record of what handling `event` wrote (keys,
    /// not values), committed with the writes.
    pub(super) fn write_record(
        &self,
        v: &Version,
        event: &Event,
        attempt: u32,
        kv: &Writes,
    ) -> Event {
        let (written, more) = kv.written();
        let out = Emitted {
            kind: WRITE_EVENT.into(),
            subject: Some(self.name.to_string()),
            content_type: Some(JSON.into()),
            data: serde_json::to_vec(&serde_json::json!({
                "step": &*self.name,
                "attempt": attempt,
                "written": written,
                "more": more,
            }))
            .expect("a write record serialises"),
            schema: None,
        };
        let key = format!("{}/kv/{attempt}", self.name);
        stamped(v, event.caused(&key, &self.source, 0, out))
    }
}

/// `e`, stamped with the deployment and component of the version `v` that
/// emitted it.
pub(super) fn stamped(v: &Version, mut e: Event) -> Event {
    e.extensions
        .insert(protocol::DEPLOYMENT.into(), v.deployment.to_string());
    e.extensions
        .insert(protocol::COMPONENT.into(), v.step.digest.clone());
    e
}

/// The stamp of what the host emits for `cause` when no version handled
/// it (a failure before or instead of the guest's run): the version that
/// would, if this host holds one.
pub(super) fn stamped_for(versions: &Versions, cause: &Event, e: Event) -> Event {
    match versions.pick(cause) {
        Pick::Version(v) => stamped(&v, e),
        _ => e,
    }
}
