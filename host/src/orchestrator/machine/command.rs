//! What the machine sends: the command (or hybrid event) of a step's
//! attempt, with its id and trace derived from (run, flow step, attempt).

use uuid::Uuid;

use super::Machine;
use crate::event::{CORRELATION_ID, Event, JSON, TARGET, TRACEPARENT, derived_id};
use crate::flow::{Action, INPUT};
use crate::orchestrator::rfc3339;
use crate::orchestrator::run::RunRecord;
use crate::protocol::{self, ATTEMPT, DEPLOYMENT, FLOW_STEP, RUN, RUN_FOR, START_BY};

impl Machine {
    /// The command (or hybrid event) of attempt `attempt` of `sid`.
    pub(super) fn command(&self, run_id: &str, sid: &str, attempt: u32, now: u64) -> Option<Event> {
        let run = self.runs.get(run_id)?;
        let flow = self.flows.flow(run.deployment, &run.flow)?;
        let id = command_id(run, sid, attempt);
        if super::child::is_child(flow, protocol::base_step(sid)) {
            return self.child_command(run, flow, sid, attempt, id, now);
        }
        let (data, kind, target) = match protocol::undoes(sid) {
            Some(orig) => {
                let c = flow.step(protocol::base_step(orig))?.compensate.clone()?;
                // The compensated step's own output: of an element, the
                // element's.
                let from = if c.input == protocol::base_step(orig) {
                    orig
                } else {
                    c.input.as_str()
                };
                let kind = if from == INPUT {
                    flow.input.clone()
                } else {
                    run.steps.get(from)?.output_type.clone()?
                };
                (self.output_of(run_id, from)?, kind, Some(c.step))
            }
            None => {
                let s = flow.step(protocol::base_step(sid))?;
                let target = match &s.action {
                    // A for-each step sends its elements, not itself.
                    Action::Command { .. } if s.fan.is_some() && sid == s.id => return None,
                    Action::Command { step } => Some(step.clone()),
                    Action::Hybrid { .. } => None,
                    // (A child step's start is `child_command`'s.)
                    Action::Signal { .. } | Action::Sleep(_) | Action::Child { .. } => {
                        return None;
                    }
                };
                let data = match (protocol::element_of(sid), &s.fan) {
                    (Some((parent, i)), Some(fan)) => {
                        let items = self.elements_of(run_id, parent, fan)?;
                        items.get(i as usize)?.get().as_bytes().to_vec()
                    }
                    _ => self.output_of(run_id, &s.input)?,
                };
                (data, s.input_kind.clone(), target)
            }
        };
        let mut extensions = std::collections::BTreeMap::new();
        extensions.insert(
            TRACEPARENT.to_string(),
            traceparent(run_id, run.trace.as_deref(), &id),
        );
        extensions.insert(CORRELATION_ID.to_string(), run_id.to_string());
        extensions.insert(RUN.to_string(), run_id.to_string());
        extensions.insert(FLOW_STEP.to_string(), sid.to_string());
        extensions.insert(ATTEMPT.to_string(), attempt.to_string());
        if let Some(d) = run.deployment {
            // Pinned: the worker hands it to the run's deployment's step.
            extensions.insert(DEPLOYMENT.to_string(), d.to_string());
        }
        if let Some(t) = target {
            extensions.insert(TARGET.to_string(), t);
            // Start-to-close: the worker starts it by then, or not at all,
            // and cuts it after `run` ms.
            let (queue, run) = super::bounds_of(Some(flow), sid);
            extensions.insert(START_BY.to_string(), (now + queue).to_string());
            extensions.insert(RUN_FOR.to_string(), run.to_string());
        }
        Some(Event {
            id,
            source: self.source.clone(),
            kind,
            subject: Some(run_id.to_string()),
            time: rfc3339(now),
            content_type: JSON.to_string(),
            schema: None,
            data,
            extensions,
            typed: Default::default(),
        })
    }
}

impl Machine {
    /// The JSON text of what `from` holds: the run's input, or a flow
    /// step's output (`null` if it output nothing).
    pub(super) fn output_of(&self, run_id: &str, from: &str) -> Option<Vec<u8>> {
        let run = self.runs.get(run_id)?;
        if from == INPUT {
            return Some(serde_json::to_vec(&run.input).expect("JSON"));
        }
        Some(match &run.steps.get(from)?.output {
            Some(raw) => raw.get().as_bytes().to_vec(),
            None => b"null".to_vec(),
        })
    }
}

/// The id of attempt `attempt` of flow step `sid` of `run`. A redriven
/// run's attempts start again from 1: its redrive count keeps their ids
/// apart from the first ones'.
fn command_id(run: &RunRecord, sid: &str, attempt: u32) -> String {
    match run.redrives.len() {
        0 => derived_id(&run.id, &format!("{sid}/{attempt}")),
        n => derived_id(&run.id, &format!("{sid}/r{n}/{attempt}")),
    }
}

/// The W3C `traceparent` of a command: the run's trace (that of the
/// request that started it, `parent`, else the run's UUID's 32 hex
/// digits), the command a span (the hash half of its id). Derived, not
/// drawn, so a command sent again after a crash carries the same one.
pub(super) fn traceparent(run_id: &str, parent: Option<&str>, command_id: &str) -> String {
    let trace = crate::telemetry::context::run_trace(run_id, parent);
    let span = match Uuid::try_parse(command_id) {
        Ok(command) => command.as_u64_pair().1.max(1),
        Err(_) => crate::telemetry::context::derived_span(&[command_id]),
    };
    format!("00-{trace:032x}-{span:016x}-01")
}

#[cfg(test)]
mod tests {
    use crate::event::{Emitted, Event, TRACEPARENT};

    #[test]
    fn a_reply_carries_the_outputs_type_schema_and_data_in_the_runs_trace() {
        let run = "01937d6c-8f2a-7b3c-9d4e-5f6a7b8c9d0e";
        let mut command = Event::new("order.placed", "troupe://shop/orchestrator", b"{}".to_vec());
        command.extensions.insert(
            TRACEPARENT.into(),
            super::traceparent(run, None, &command.id),
        );
        command
            .extensions
            .insert(crate::protocol::RUN.into(), run.into());
        let emitted = |kind: &str, ct: &str, data: &[u8]| Emitted {
            kind: kind.into(),
            subject: None,
            content_type: Some(ct.into()),
            data: data.to_vec(),
            schema: Some(format!("urn:troupe:schema:{kind}:1.0.0")),
        };
        let outputs = [
            emitted("order.validated", "application/json", br#"{"total": 6}"#),
            emitted("order.note", "text/plain", b"hi"),
        ];
        let reply = crate::protocol::completed_reply(&command, "troupe://shop/step/v", &outputs);
        let Some(crate::protocol::Reply::Completed(Some((kind, data)))) =
            crate::protocol::read_reply(&reply)
        else {
            panic!("an output")
        };
        assert_eq!(
            (kind.as_str(), data.get()),
            ("order.validated", r#"{"total": 6}"#)
        );
        let body: serde_json::Value = serde_json::from_slice(&reply.data).unwrap();
        assert_eq!(
            body["outputs"][0]["dataschema"],
            "urn:troupe:schema:order.validated:1.0.0"
        );
        assert_eq!(body["outputs"][1]["datacontenttype"], "text/plain");
        assert_eq!(body["outputs"][1]["data_base64"], "aGk=");
        // Same id for the same command (a redelivery's reply is a duplicate),
        // and a span of the run's trace.
        let again = crate::protocol::completed_reply(&command, "troupe://shop/step/v", &outputs);
        assert_eq!(reply.id, again.id);
        assert_eq!(reply.trace_id(), command.trace_id());
        assert_eq!(reply.trace_id(), Some("01937d6c8f2a7b3c9d4e5f6a7b8c9d0e"));
        assert_eq!(reply.causation_id(), Some(command.id.as_str()));
        assert_eq!(reply.correlation_id(), command.correlation_id());
    }

    #[test]
    fn a_command_is_a_span_of_its_runs_trace() {
        let run = "01937d6c-8f2a-7b3c-9d4e-5f6a7b8c9d0e";
        let command = "a1b2c3d4-e5f6-5789-8abc-def012345678";
        assert_eq!(
            super::traceparent(run, None, command),
            "00-01937d6c8f2a7b3c9d4e5f6a7b8c9d0e-8abcdef012345678-01"
        );
        // Started within a trace: the command is a span of that trace.
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            super::traceparent(run, Some(parent), command),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-8abcdef012345678-01"
        );
        // A malformed parent is no parent.
        assert_eq!(
            super::traceparent(run, Some("00-zz-00f067aa0ba902b7-01"), command),
            super::traceparent(run, None, command)
        );
        // Not UUIDs (never the case for the driver's ids): still well formed.
        let t = super::traceparent("run", None, "command");
        assert_eq!(t.len(), 55, "{t}");
        assert!(t.starts_with("00-") && t.ends_with("-01"), "{t}");
    }
}
