//! An operator's control of a run (cancel, redrive, a signal), as an event
//! addressed to the orchestrator's consumer group, in the run's
//! correlation.
//!
//! **Control goes through the broker, not to the driver's memory.** Any
//! host of the app takes it (the one driving the flows consumes it), a
//! host killed after the API answered has it still, and the transition it
//! causes is one commit with its ack, like a reply's. Its id is recorded
//! on the run with what it did, so a copy delivered again does nothing.
//! Producers cannot send one: the orchestrator's group is addressed by a
//! host-owned extension (`troupeto`), which the door refuses.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{CORRELATION_ID, Event, TARGET};
use crate::protocol::{GROUP, RUN};

/// Type: cancel the run.
pub const CANCEL: &str = "troupe.run.cancel";
/// Type: run a failed or timed-out run again from the steps that failed.
pub const REDRIVE: &str = "troupe.run.redrive";
/// Type: a signal to the run, for the step that awaits it.
pub const SIGNAL: &str = "troupe.run.signal";
/// Type: start a child run (sent by its parent's flow step, not by an
/// operator; the event's id is the child run's id).
pub const CHILD: &str = "troupe.run.child";
/// Type: undo a child run that completed (its parent is compensated).
pub const COMPENSATE: &str = "troupe.run.compensate";

/// What an operator asks of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ask {
    /// Who asks (free text: a user, a tool).
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The most bytes of `by` and of `reason` kept.
pub const MAX_TEXT: usize = 1_000;

impl Ask {
    /// From an API body: `by` and `reason`, each optional, text, cut to
    /// [`MAX_TEXT`]; `default_by` when `by` is not given.
    pub fn from_body(body: &Value, default_by: &str) -> Result<Ask, String> {
        if !(body.is_object() || body.is_null()) {
            return Err("the body must be a JSON object (or empty)".into());
        }
        let text = |k: &str| match &body[k] {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(crate::text::clean(s, MAX_TEXT))),
            _ => Err(format!("`{k}` must be a string")),
        };
        if let Some(o) = body.as_object()
            && let Some(k) = o.keys().find(|k| !["by", "reason"].contains(&k.as_str()))
        {
            return Err(format!(
                "unknown field {:?} (the body may have `by` and `reason`)",
                crate::text::clean(k, 80)
            ));
        }
        Ok(Ask {
            by: text("by")?.unwrap_or_else(|| default_by.to_string()),
            reason: text("reason")?,
        })
    }
}

/// A signal to a run: its name, its data (checked against the schema the
/// flow declares for it before it is sent), and who sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    pub name: String,
    pub by: String,
    pub data: Value,
}

/// A child run to start: its flow (on its parent's deployment), its
/// input, and the parent it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Child {
    pub flow: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<u64>,
    pub input: Value,
    pub parent: crate::orchestrator::run::Parent,
}

/// A control of a run, as the machine reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    Cancel(Ask),
    Redrive(Ask),
    Signal(Signal),
    /// Start this child run.
    Child(Box<Child>),
    /// Undo this completed child run, and answer this parent.
    Compensate(crate::orchestrator::run::Parent),
}

/// The event that asks for `control` of run `run`, from `source`.
pub fn event(run: &str, source: &str, control: &Control) -> Event {
    let (kind, data) = match control {
        Control::Cancel(a) => (CANCEL, serde_json::to_vec(a)),
        Control::Redrive(a) => (REDRIVE, serde_json::to_vec(a)),
        Control::Signal(s) => (SIGNAL, serde_json::to_vec(s)),
        Control::Child(c) => (CHILD, serde_json::to_vec(c)),
        Control::Compensate(p) => (COMPENSATE, serde_json::to_vec(p)),
    };
    let data = data.expect("a control serialises");
    let mut e = Event::new(kind, source, data);
    e.subject = Some(run.to_string());
    for (k, v) in [(TARGET, GROUP), (RUN, run), (CORRELATION_ID, run)] {
        e.extensions.insert(k.to_string(), v.to_string());
    }
    e
}

/// The control `e` asks for, if it is one (addressed to the orchestrator,
/// of a known type, readable).
pub fn read(e: &Event) -> Option<Control> {
    if e.extensions.get(TARGET).map(String::as_str) != Some(GROUP) {
        return None;
    }
    let ask = || serde_json::from_slice::<Ask>(&e.data).ok();
    match e.kind.as_str() {
        CANCEL => Some(Control::Cancel(ask()?)),
        REDRIVE => Some(Control::Redrive(ask()?)),
        SIGNAL => serde_json::from_slice(&e.data).ok().map(Control::Signal),
        CHILD => serde_json::from_slice(&e.data).ok().map(Control::Child),
        COMPENSATE => serde_json::from_slice(&e.data)
            .ok()
            .map(Control::Compensate),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_reads_back_as_sent_and_nothing_else_reads_as_one() {
        let ask = Ask {
            by: "ops".into(),
            reason: Some("stuck".into()),
        };
        let signal = Signal {
            name: "approve".into(),
            by: "ops".into(),
            data: serde_json::json!({"approved": true}),
        };
        let parent = crate::orchestrator::run::Parent {
            run: "r0".into(),
            step: "pack".into(),
            attempt: 1,
            command: "c1".into(),
        };
        for c in [
            Control::Cancel(ask.clone()),
            Control::Redrive(ask.clone()),
            Control::Signal(signal),
            Control::Child(Box::new(Child {
                flow: "pack".into(),
                deployment: Some(2),
                input: serde_json::json!({"order_id": "o1"}),
                parent: parent.clone(),
            })),
            Control::Compensate(parent),
        ] {
            let e = event("r1", "troupe://app/api", &c);
            assert_eq!(read(&e), Some(c));
            assert_eq!(crate::protocol::run_of(&e), "r1");
            let mut stray = e.clone();
            stray.extensions.remove(TARGET);
            assert_eq!(read(&stray), None);
        }
    }

    #[test]
    fn a_body_is_by_and_reason_or_a_clear_refusal() {
        let a = Ask::from_body(&serde_json::json!({"reason": "why"}), "api").unwrap();
        assert_eq!((a.by.as_str(), a.reason.as_deref()), ("api", Some("why")));
        assert_eq!(Ask::from_body(&Value::Null, "api").unwrap().by, "api");
        assert!(
            Ask::from_body(&serde_json::json!({"x": 1}), "api")
                .unwrap_err()
                .contains("\"x\"")
        );
        assert!(
            Ask::from_body(&serde_json::json!({"by": 1}), "api")
                .unwrap_err()
                .contains("`by`")
        );
        assert!(Ask::from_body(&serde_json::json!([1]), "api").is_err());
    }
}
