//! The event envelope: CloudEvents 1.0 plus Troupe's extensions.
//!
//! This is the host's own representation, used by the broker and the
//! router. It converts to and from the guest's `event` record (see
//! [`crate::world`]) and to and from the CloudEvents JSON format, which is
//! what the CLI and the HTTP API speak.
//!
//! Ids: events entering from outside get a UUIDv7 (time-ordered) unless the
//! producer set one. An event is identified by its source and id together
//! (CloudEvents 1.0): two producers may both send an event `42`. Events a
//! step emits get an id derived from the source and id of the event that
//! caused them, the step and the position in the step's output
//! ([`derived_id`]), so a redelivered input yields the same output ids and
//! a consumer can recognise the duplicate.

pub mod http;
mod json;

#[cfg(test)]
use json::check_attributes;
pub use json::{EnvelopeError, extensions_from_json, extensions_to_json};

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use serde_json::Value;
use uuid::Uuid;

/// Extension attribute: the cascade or run an event belongs to.
pub const CORRELATION_ID: &str = "correlationid";
/// Extension attribute: the id of the event that caused this one.
pub const CAUSATION_ID: &str = "causationid";
/// Extension attribute: W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// Extension attribute: deliver to this consumer group only, not by type
/// (orchestration commands and their replies).
pub const TARGET: &str = "troupeto";
/// The longest `subject`, in characters (from producers and steps alike).
pub const MAX_SUBJECT: usize = 1024;
/// The longest `datacontenttype`, in characters.
pub const MAX_CONTENT_TYPE: usize = 256;
/// The default content type of event data.
pub const JSON: &str = "application/json";

/// The UUIDv5 namespace of [`Event::identity`].
const IDENTITY_NAMESPACE: Uuid = Uuid::from_u128(0x3c0e_51d2_8f7a_4b6e_a1d4_7e9b_2f50_1d3a);
/// Namespace of the UUIDv5 ids given to emitted events.
const EMIT_NAMESPACE: Uuid = Uuid::from_u128(0x6a1e_4a36_3b1f_4e39_9d7c_5e1f_0a7b_c0de);

/// One event, as stored and routed by the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub source: String,
    pub kind: String,
    pub subject: Option<String>,
    pub time: String,
    pub content_type: String,
    pub schema: Option<String>,
    pub data: Vec<u8>,
    /// Extension attributes, including `correlationid`, `causationid` and
    /// `traceparent`, as text (the form guests and NATS headers carry).
    pub extensions: BTreeMap<String, String>,
    /// The extensions a producer gave as a JSON integer or boolean (their
    /// text is in `extensions`): the JSON format writes them back as such.
    pub typed: BTreeSet<String>,
}

impl Event {
    /// A new event entering the system from a producer: fresh id, time and
    /// trace; its own id is its correlation id.
    pub fn new(kind: &str, source: &str, data: Vec<u8>) -> Event {
        let id = Uuid::now_v7().to_string();
        let mut extensions = BTreeMap::new();
        extensions.insert(CORRELATION_ID.to_string(), id.clone());
        extensions.insert(TRACEPARENT.to_string(), new_traceparent(None));
        Event {
            id,
            source: source.to_string(),
            kind: kind.to_string(),
            subject: None,
            time: now_rfc3339(),
            content_type: JSON.to_string(),
            schema: None,
            data,
            extensions,
            typed: BTreeSet::new(),
        }
    }

    /// Give the event a `traceparent` (a new trace) unless it carries one.
    pub fn ensure_trace(&mut self) {
        if !self.extensions.contains_key(TRACEPARENT) {
            self.extensions
                .insert(TRACEPARENT.to_string(), new_traceparent(None));
        }
    }

    /// The first attribute whose value holds a control character (which
    /// CloudEvents attributes may not), if any.
    pub fn control_attribute(&self) -> Option<&str> {
        use crate::text::has_control;
        let fixed = [
            ("id", Some(&self.id)),
            ("source", Some(&self.source)),
            ("type", Some(&self.kind)),
            ("subject", self.subject.as_ref()),
            ("time", Some(&self.time)),
            ("datacontenttype", Some(&self.content_type)),
            ("dataschema", self.schema.as_ref()),
        ];
        fixed
            .into_iter()
            .find(|(_, v)| v.is_some_and(|v| has_control(v)))
            .map(|(k, _)| k)
            .or_else(|| {
                self.extensions
                    .iter()
                    .find(|(_, v)| has_control(v))
                    .map(|(k, _)| k.as_str())
            })
    }

    /// What identifies the event among all others (its source and id, as
    /// CloudEvents says), as one fixed-length string: a UUIDv5 of both.
    /// Brokers deduplicate on it.
    pub fn identity(&self) -> String {
        let key = format!("{}\n{}", self.source, self.id);
        Uuid::new_v5(&IDENTITY_NAMESPACE, key.as_bytes()).to_string()
    }

    /// The correlation id (the cascade or run), falling back to the id.
    pub fn correlation_id(&self) -> &str {
        self.extensions
            .get(CORRELATION_ID)
            .map_or(&self.id, |s| s.as_str())
    }

    /// The W3C trace this event belongs to (the trace id of its
    /// `traceparent`), if it carries one.
    pub fn trace_id(&self) -> Option<&str> {
        self.extensions
            .get(TRACEPARENT)
            .and_then(|t| t.split('-').nth(1))
    }

    /// The id of the event that caused this one, if any.
    pub fn causation_id(&self) -> Option<&str> {
        self.extensions.get(CAUSATION_ID).map(|s| s.as_str())
    }

    /// True when `data` is JSON and so is checked against schemas.
    pub fn is_json(&self) -> bool {
        is_json_type(&self.content_type)
    }

    /// The event a step emitted in answer to `self`: ids, source, time,
    /// correlation, causation and trace are set by the host here, never by
    /// the guest. `index` is the position in the step's output.
    pub fn caused(&self, step: &str, source: &str, index: usize, out: Emitted) -> Event {
        let index = index.to_string();
        let id = derived_id_of(&self.id, &[&self.source, step, &index]);
        let mut extensions = BTreeMap::new();
        extensions.insert(
            CORRELATION_ID.to_string(),
            self.correlation_id().to_string(),
        );
        extensions.insert(CAUSATION_ID.to_string(), self.id.clone());
        extensions.insert(
            TRACEPARENT.to_string(),
            new_traceparent(self.extensions.get(TRACEPARENT).map(|s| s.as_str())),
        );
        Event {
            id,
            source: source.to_string(),
            kind: out.kind,
            subject: out.subject.or_else(|| self.subject.clone()),
            time: now_rfc3339(),
            content_type: out.content_type.unwrap_or_else(|| JSON.to_string()),
            schema: out.schema,
            data: out.data,
            extensions,
            typed: BTreeSet::new(),
        }
    }

    /// The CloudEvents JSON form (structured mode) as a `Value`; the
    /// `Serialize` impl writes the same document without building one.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("an event serialises")
    }
}

/// The `source` of what the host of app `app` produces at `path`
/// (`troupe://APP/PATH`), with the app's name percent-encoded so that any
/// name makes a URI reference.
pub fn source(app: &str, path: &str) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    const KEEP: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    format!("troupe://{}/{path}", utf8_percent_encode(app, KEEP))
}

/// What a step emitted, after the host checked it, before it became an
/// [`Event`].
#[derive(Debug, Clone)]
pub struct Emitted {
    pub kind: String,
    pub subject: Option<String>,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
    /// `dataschema`, from the producer's contract.
    pub schema: Option<String>,
}

/// A deterministic id for something derived from `parent` (an event or a
/// run) and `name`: a UUIDv8 whose first 48 bits are the parent's (its
/// creation time, for UUIDv7 and for ids made here) and whose rest is a
/// hash of both. The same inputs always give the same id (so redelivery is
/// recognisable and republishing is deduplicated), and the ids of one
/// cascade sort together, which keeps the store's id index local instead
/// of touching a random page per event.
pub fn derived_id(parent: &str, name: &str) -> String {
    id_from(parent, format!("{parent}/{name}").as_bytes())
}

/// The same, from `parent` and `parts` that anyone may spell (an event's
/// id and source may hold `/`): each is written with its length first, so
/// no two different lists hash the same text. (Joined with `/`, the id
/// `"v-1/https:"` from source `"/shop.example/orders"` made the text of id
/// `"v-1"` from `"https://shop.example/orders"`, and one event's output
/// took the id of another's.)
pub fn derived_id_of(parent: &str, parts: &[&str]) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    for p in std::iter::once(parent).chain(parts.iter().copied()) {
        let _ = write!(text, "{}:{p}", p.len());
    }
    id_from(parent, text.as_bytes())
}

fn id_from(parent: &str, text: &[u8]) -> String {
    let hash = *Uuid::new_v5(&EMIT_NAMESPACE, text).as_bytes();
    let mut bytes = hash;
    if let Ok(p) = Uuid::parse_str(parent)
        && matches!(p.get_version_num(), 7 | 8)
    {
        bytes[..6].copy_from_slice(&p.as_bytes()[..6]);
    }
    Uuid::new_v8(bytes).to_string()
}

/// `application/json` and the `+json` types, matched as media types are
/// (case-insensitively, parameters aside).
pub fn is_json_type(content_type: &str) -> bool {
    media_type(content_type).is_some_and(|(_, json)| json)
}

/// A media type's essence (`type/subtype`, lower-case, parameters left
/// out) and whether it is JSON (`application/json` or a `+json` suffix);
/// `None` when `s` is not a media type.
pub fn media_type(s: &str) -> Option<(String, bool)> {
    let essence = s.split(';').next().unwrap_or("").trim_matches(' ');
    let (ty, sub) = essence.split_once('/')?;
    let token = |t: &str| {
        !t.is_empty()
            && t.len() <= 127
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    if !token(ty) || !token(sub) {
        return None;
    }
    let essence = essence.to_ascii_lowercase();
    let json = essence == JSON || essence.ends_with("+json");
    Some((essence, json))
}

/// Whether `content_type` is a CloudEvents envelope type
/// (`application/cloudevents+json`, `application/cloudevents-batch+json`,
/// ...): never a data's content type, since a CloudEvents reader of a
/// message in binary mode would take the data for a whole event
/// (structured mode), with attributes its sender chose.
pub fn is_envelope_type(content_type: &str) -> bool {
    media_type(content_type).is_some_and(|(essence, _)| is_envelope_essence(&essence))
}

/// The same, of a media type's essence as [`media_type`] gives it.
pub fn is_envelope_essence(essence: &str) -> bool {
    essence.starts_with("application/cloudevents")
}

/// The `dataschema` URN of an event type at a version.
pub fn schema_urn(kind: &str, version: &str) -> String {
    format!("urn:troupe:schema:{kind}:{version}")
}

/// Now, RFC 3339 in UTC with microseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// A W3C `traceparent`: the parent's trace id (or a new one) and a new span.
pub(crate) fn new_traceparent(parent: Option<&str>) -> String {
    let trace = parent
        .and_then(|p| p.split('-').nth(1))
        .filter(|t| t.len() == 32)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:032x}", Uuid::new_v4().as_u128()));
    let span = Uuid::new_v4().as_u64_pair().0;
    format!("00-{trace}-{span:016x}-01")
}

#[cfg(test)]
mod tests;
