//! When handling a delivery fails: a retry or a dead letter (for a
//! command, a failed reply: the orchestrator owns its retries), a contract
//! violation with its alert, or a contract check that ran out of its
//! budget (the step's `limit`).

use super::*;

impl Wiring {
    /// Handling failed: retry or dead-letter (for a command, tell the
    /// orchestrator, which owns its retries).
    pub(super) fn failed(&self, d: Delivery, f: Failure, calls: Vec<Event>) {
        // The host is stopping: leave the delivery unsettled, to be
        // delivered again (after a restart, or to another host).
        let Failure::Failed(failure) = &f else {
            return;
        };
        if protocol::is_command(&d.event) {
            let reply = protocol::failed_reply(&d.event, &self.source, failure);
            let mut events = vec![stamped_for(&self.versions, &d.event, reply)];
            events.extend(calls);
            return self.commit_ack(
                d,
                events,
                "cannot reply to the orchestrator (the command will be redelivered)",
                None,
            );
        }
        let class = failure.class;
        if !class.retryable() {
            return self.dead_letter(d, class, failure.message.clone(), calls);
        }
        let message = f.to_string();
        let (b, stats, step_name) = (self.broker.clone(), self.stats.clone(), self.name.clone());
        self.settle(async move {
            match b.fail(&d, class, &message).await? {
                Disposition::Retry(after) => {
                    StepStats::add(&stats.retried, 1);
                    tracing::warn!(
                        step = %step_name,
                        event = %d.event.id,
                        attempt = d.attempt,
                        "{message}; retrying in {after:.0?}"
                    );
                }
                Disposition::DeadLettered(id) => {
                    StepStats::add(&stats.dead_lettered, 1);
                    tracing::error!(
                        step = %step_name,
                        event = %d.event.id,
                        attempt = d.attempt,
                        dlq = %id,
                        "{message}; retry budget spent, dead-lettered as {class}"
                    );
                }
            }
            publish_records(&*b, &step_name, calls).await;
            Ok(())
        });
    }

    /// Ack `d` and publish `events` as one commit, without waiting for it;
    /// a failure is logged with `failed` (the delivery stays unsettled).
    /// The delivery's spans end when the commit does.
    pub(super) fn commit_ack(
        &self,
        d: Delivery,
        events: Vec<Event>,
        failed: &'static str,
        mut traced: Option<Traced>,
    ) {
        let permit = self.permit();
        let step = self.name.clone();
        let commit = Commit {
            ack: Some(d),
            events,
            ..Commit::default()
        };
        self.broker.commit_then(
            commit,
            Box::new(move |r| {
                if let Err(e) = r {
                    tracing::error!(step = %step, "{failed}: {e}");
                    if let Some(t) = &mut traced {
                        t.failed("unavailable", &e.to_string());
                    }
                }
                drop(traced);
                drop(permit);
            }),
        );
    }

    pub(super) fn dead_letter(
        &self,
        d: Delivery,
        class: FailureClass,
        message: String,
        calls: Vec<Event>,
    ) {
        let (b, stats, step) = (self.broker.clone(), self.stats.clone(), self.name.clone());
        self.settle(async move {
            let id = b.dead_letter(&d, class, &message).await?;
            StepStats::add(&stats.dead_lettered, 1);
            tracing::warn!(step = %step, event = %d.event.id, dlq = %id, "dead-lettered as {class}: {message}");
            publish_records(&*b, &step, calls).await;
            Ok(())
        });
    }

    /// A contract violation: DLQ at once, and an alert.
    pub(super) fn violation(
        &self,
        d: Delivery,
        v: Violation,
        rejected: Option<String>,
        calls: Vec<Event>,
    ) {
        if v.out_of_budget() {
            // Not a broken message: a contract too costly to check it, the
            // step's own `limit`.
            return self.failed(d, Failure::new(FailureClass::Limit, v.to_string()), calls);
        }
        StepStats::add(&self.stats.contract_violations, 1);
        let (b, stats, step, host_source, versions) = (
            self.broker.clone(),
            self.stats.clone(),
            self.name.clone(),
            self.host_source.clone(),
            self.versions.clone(),
        );
        self.settle(async move {
            let message = match &rejected {
                Some(out) => format!("{v}; the rejected output: {out}"),
                None => v.to_string(),
            };
            let id = b.dead_letter(&d, FailureClass::Contract, &message).await?;
            StepStats::add(&stats.dead_lettered, 1);
            tracing::error!(
                step = %step,
                event = %d.event.id,
                dlq = %id,
                alert = CONTRACT_ALERT,
                "contract violation, dead-lettered without retry: {message}"
            );
            let alert = serde_json::json!({
                "step": &*step,
                "event_id": d.event.id,
                "event_type": d.event.kind,
                "direction": v.direction(),
                "reason": message,
                "dlq_id": id,
            });
            let mut events = Vec::new();
            if protocol::is_command(&d.event) {
                let failure = protocol::Failure::new(FailureClass::Contract, message.clone());
                let reply = protocol::failed_reply(&d.event, &host_source, &failure);
                events.push(stamped_for(&versions, &d.event, reply));
            }
            let mut e = Event::new(CONTRACT_ALERT, &host_source, alert.to_string().into_bytes());
            e.subject = Some(step.to_string());
            e.extensions.insert(
                crate::event::CORRELATION_ID.into(),
                d.event.correlation_id().to_string(),
            );
            e.extensions
                .insert(crate::event::CAUSATION_ID.into(), d.event.id.clone());
            events.push(e);
            events.extend(calls);
            b.publish(events).await
        });
    }
}
