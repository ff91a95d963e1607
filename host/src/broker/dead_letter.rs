//! A dead letter: an event a step could not handle, with why, as every
//! backend keeps it and the CLI and the HTTP API show it.

use crate::event::Event;
use crate::protocol::FailureClass;

/// A dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: String,
    /// The step (consumer group) that could not handle it.
    pub step: String,
    pub class: FailureClass,
    pub message: String,
    /// Deliveries made before it was dead-lettered.
    pub attempts: u32,
    /// When it was dead-lettered, RFC 3339.
    pub time: String,
    pub event: Event,
    /// The deployment, and the digest of the component, of the step
    /// version that could not handle it (none when no version ran it).
    pub deployment: Option<u64>,
    pub component: Option<String>,
}

impl DeadLetter {
    /// The JSON form the CLI and the HTTP API show.
    pub fn to_json(&self, with_event: bool) -> serde_json::Value {
        let mut v = serde_json::json!({
            "id": self.id,
            "step": self.step,
            "class": self.class,
            "message": self.message,
            "attempts": self.attempts,
            "time": self.time,
            "event_id": self.event.id,
            "event_type": self.event.kind,
        });
        if let Some(n) = self.deployment {
            v["deployment"] = serde_json::json!(n);
        }
        if let Some(c) = &self.component {
            v["component"] = serde_json::json!(c);
        }
        if with_event {
            v["event"] = self.event.to_json();
        }
        v
    }

    /// Read back what [`DeadLetter::to_json`] wrote (with the event).
    pub fn from_json(v: &serde_json::Value) -> Result<DeadLetter, String> {
        let s = |k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .ok_or(format!("`{k}` is missing"))
        };
        let class = s("class")?;
        Ok(DeadLetter {
            id: s("id")?,
            step: s("step")?,
            class: FailureClass::parse(&class).ok_or(format!("unknown class {class:?}"))?,
            message: s("message")?,
            attempts: v["attempts"].as_u64().unwrap_or(0) as u32,
            time: s("time")?,
            event: Event::from_json(v["event"].clone(), "troupe://dlq")
                .map_err(|e| format!("`event`: {e}"))?,
            deployment: v["deployment"].as_u64(),
            component: v["component"].as_str().map(str::to_string),
        })
    }
}

/// Which dead letters a bulk operation (or a list) takes: each field, when
/// set, must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DlqFilter {
    /// The step (consumer group) that could not handle them.
    pub step: Option<String>,
    pub class: Option<FailureClass>,
    /// The event type.
    pub kind: Option<String>,
    /// Dead-lettered at or after (epoch ms).
    pub since_ms: Option<u64>,
    /// Dead-lettered before (epoch ms).
    pub until_ms: Option<u64>,
}

impl DlqFilter {
    /// Whether no field is set (every dead letter matches).
    pub fn is_empty(&self) -> bool {
        *self == DlqFilter::default()
    }

    pub fn matches(&self, d: &DeadLetter) -> bool {
        let at = crate::clock::epoch_ms(&d.time);
        self.step.as_ref().is_none_or(|s| *s == d.step)
            && self.class.is_none_or(|c| c == d.class)
            && self.kind.as_ref().is_none_or(|k| *k == d.event.kind)
            && self.since_ms.is_none_or(|t| at.is_some_and(|a| a >= t))
            && self.until_ms.is_none_or(|t| at.is_some_and(|a| a < t))
    }
}
