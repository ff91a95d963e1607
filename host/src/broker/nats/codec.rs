//! How Troupe's names and events map onto NATS: subjects, stream and
//! consumer names, and CloudEvents attributes as message headers (the
//! CloudEvents NATS protocol binding, binary mode).
//!
//! For namespace `NS` and app `APP`:
//!
//! | what | subject |
//! |---|---|
//! | an event of type `order.placed` | `NS.ev.order.placed` |
//! | a command, reply or replay for group `G` of `APP` | `NS.to.APP.G` |
//! | dead letter `ID` of `APP` | `NS.dlq.APP.ID` |
//! | its event's data, when too large for the record | `NS.dlq.APP.ID.data` |
//!
//! An event type maps to subject tokens as it is: its dots separate
//! tokens. A type with an empty token (`a..b`, `.a`), whitespace, or a
//! wildcard token (`*`, `>`) cannot be routed and is refused at publish.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::SystemTime;

use async_nats::HeaderMap;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use crate::broker::BrokerError;
use crate::event::Event;

/// Header values are printable ASCII: space, `"`, `%` and everything
/// outside printable ASCII are percent-encoded (the CloudEvents NATS and
/// HTTP bindings, 3.1.3.2).
const HEADER_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// The prefix of CloudEvents attribute headers.
const CE: &str = "ce-";

/// Names on the server for one namespace and app.
#[derive(Debug, Clone)]
pub struct Names {
    pub ns: String,
    pub app: String,
}

impl Names {
    pub fn new(ns: &str, app: &str) -> Names {
        Names {
            ns: ns.to_string(),
            app: token(app),
        }
    }

    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.ns.to_uppercase())
    }

    pub fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.ns.to_uppercase())
    }

    /// The key-value bucket of the app's state rows (run records).
    pub fn state_bucket(&self) -> String {
        format!("{}_{}_state", self.ns, self.app)
    }

    /// The key-value bucket of the app's step state.
    pub fn kv_bucket(&self) -> String {
        format!("{}_{}_kv", self.ns, self.app)
    }

    /// The stream of the app's step state commits, in the order applied.
    pub fn kvlog_stream(&self) -> String {
        format!("{}_KVLOG_{}", self.ns.to_uppercase(), self.app)
    }

    pub fn kvlog_subject(&self) -> String {
        format!("{}.kvlog.{}", self.ns, self.app)
    }

    /// The subject an event of `kind` is published on.
    pub fn event_subject(&self, kind: &str) -> Result<String, BrokerError> {
        let ok = !kind.is_empty()
            && kind
                .split('.')
                .all(|t| !t.is_empty() && t != "*" && t != ">")
            && !kind.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err(BrokerError::BadInput(format!(
                "event type {kind:?} cannot be a NATS subject: types are dot-separated \
                 non-empty tokens without whitespace or wildcards"
            )));
        }
        Ok(format!("{}.ev.{kind}", self.ns))
    }

    /// The subject of messages addressed to group `group` of this app.
    pub fn group_subject(&self, group: &str) -> String {
        format!("{}.to.{}.{}", self.ns, self.app, token(group))
    }

    pub fn dlq_subject(&self, id: &str) -> String {
        format!("{}.dlq.{}.{}", self.ns, self.app, token(id))
    }

    /// Every dead letter of this app, and their data kept apart.
    pub fn dlq_filter(&self) -> String {
        format!("{}.dlq.{}.>", self.ns, self.app)
    }

    /// Every dead letter of this app, the records only.
    pub fn dlq_records(&self) -> String {
        format!("{}.dlq.{}.*", self.ns, self.app)
    }

    /// The durable consumer of `group` for messages on `subject`. Hosts of
    /// the same app share it, so each message goes to one of them.
    pub fn consumer(&self, group: &str, subject: &str) -> String {
        use sha2::Digest;
        let h = hex::encode(&sha2::Sha256::digest(subject.as_bytes())[..4]);
        format!("{}_{}_{h}", self.app, token(group))
    }
}

/// `s` as one subject token or consumer-name part: letters, digits, `-`
/// and `_` kept, anything else `_`.
pub fn token(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Is `ns` a usable namespace (it names streams and subjects)?
pub fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn put(h: &mut HeaderMap, name: &str, value: &str) {
    // Borrowed unless something needed encoding (the usual case).
    let v: Cow<str> = utf8_percent_encode(value, HEADER_VALUE).into();
    h.insert(name, v.as_ref());
}

/// A header value as text, percent-decoded.
fn text(v: &str) -> String {
    percent_decode_str(v).decode_utf8_lossy().into_owned()
}

/// The headers of `e` (binary mode: `data` is the payload).
pub fn headers(e: &Event) -> HeaderMap {
    let mut h = HeaderMap::new();
    put(&mut h, "ce-specversion", "1.0");
    put(&mut h, "ce-id", &e.id);
    put(&mut h, "ce-source", &e.source);
    put(&mut h, "ce-type", &e.kind);
    put(&mut h, "ce-time", &e.time);
    put(&mut h, "content-type", &e.content_type);
    if let Some(s) = &e.subject {
        put(&mut h, "ce-subject", s);
    }
    if let Some(s) = &e.schema {
        put(&mut h, "ce-dataschema", s);
    }
    for (k, v) in &e.extensions {
        put(&mut h, &format!("{CE}{k}"), v);
    }
    if !e.typed.is_empty() {
        let names: Vec<&str> = e.typed.iter().map(String::as_str).collect();
        put(&mut h, TYPED, &names.join(","));
    }
    h
}

/// Not a CloudEvents header: the extensions given as JSON integers or
/// booleans (binary mode carries every value as text).
const TYPED: &str = "troupe-typed";

/// The message that carries `e`, deduplicated by the server on `msg_id`
/// ([`Event::identity`], or a replay's own id).
/// with the app's seal if it carries a host-owned extension
/// ([`super::seal`]).
pub fn message(
    e: &Event,
    msg_id: &str,
    seal: &super::seal::Seal,
) -> async_nats::jetstream::message::PublishMessage {
    let mut h = headers(e);
    if let Some(s) = seal.seal(e) {
        put(&mut h, super::seal::HEADER, &s);
    }
    async_nats::jetstream::message::PublishMessage::build()
        .payload(e.data.clone().into())
        .headers(h)
        .message_id(msg_id)
}

/// The bytes the server counts against its `max_payload` for the message
/// that carries `e` with id `msg_id`: the header block (as the client
/// writes it) and the payload.
pub fn wire_len(e: &Event, msg_id: &str) -> usize {
    let mut len = b"NATS/1.0\r\n\r\n".len() + "Nats-Msg-Id: \r\n".len() + msg_id.len();
    if crate::protocol::host_owned_extension(e).is_some() {
        // The seal: its header, 64 hex digits.
        len += super::seal::HEADER.len() + b": \r\n".len() + 64;
    }
    for (k, vs) in headers(e).iter() {
        for v in vs {
            len += AsRef::<str>::as_ref(k).len() + b": \r\n".len() + v.as_str().len();
        }
    }
    len + e.data.len()
}

/// Whether the message for `e` may exceed `max` bytes: a bound that is
/// cheap to compute (every attribute percent-encoded in full), so that
/// [`wire_len`] is only needed for large events.
pub fn may_exceed(e: &Event, max: usize) -> bool {
    let attrs: usize = [&e.id, &e.source, &e.kind, &e.time, &e.content_type]
        .iter()
        .map(|s| s.len())
        .sum::<usize>()
        + e.subject.as_ref().map_or(0, String::len)
        + e.schema.as_ref().map_or(0, String::len)
        + e.extensions
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    // (+ 80: the seal of an event with host-owned extensions.)
    let headers = 30 * (8 + e.extensions.len()) + 3 * attrs + 2 * e.id.len() + 64 + 80;
    e.data.len() + headers > max
}

/// Read an event back from a message: binary mode (attributes in `ce-`
/// headers, whose names are matched case-insensitively), or else
/// structured mode (a CloudEvents JSON payload). An event without a
/// `time` gets the time the server stored it (`stored`), so every read
/// gives the same one.
pub fn decode(
    headers: Option<&HeaderMap>,
    payload: &[u8],
    stored: SystemTime,
) -> Result<Event, String> {
    let stored = || humantime::format_rfc3339_micros(stored).to_string();
    let mut attrs: BTreeMap<String, String> = BTreeMap::new();
    for (name, values) in headers.into_iter().flat_map(|h| h.iter()) {
        let name = AsRef::<str>::as_ref(name).to_ascii_lowercase();
        if let (Some(v), false) = (values.first(), attrs.contains_key(&name)) {
            attrs.insert(name, text(v.as_str()));
        }
    }
    let Some(id) = attrs.remove("ce-id") else {
        let v: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| format!("no CloudEvents headers, and the payload is not JSON: {e}"))?;
        let had_time = v.get("time").is_some_and(|t| !t.is_null());
        let mut e =
            Event::from_json(v, "nats://unknown").map_err(|e| format!("not a CloudEvent: {e}"))?;
        if !had_time {
            e.time = stored();
        }
        return Ok(e);
    };
    let mut need = |name: &'static str| {
        attrs
            .remove(name)
            .ok_or(format!("header {name} is missing"))
    };
    let (source, kind) = (need("ce-source")?, need("ce-type")?);
    let content_type = attrs
        .remove("content-type")
        .or_else(|| attrs.remove("ce-datacontenttype"));
    let typed_names = attrs.remove(TYPED).unwrap_or_default();
    let mut e = Event {
        id,
        source,
        kind,
        subject: attrs.remove("ce-subject"),
        time: attrs.remove("ce-time").unwrap_or_else(stored),
        content_type: content_type.unwrap_or_else(|| crate::event::JSON.to_string()),
        schema: attrs.remove("ce-dataschema"),
        data: payload.to_vec(),
        extensions: attrs
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(CE)?.to_string(), v)))
            .filter(|(k, _)| !matches!(k.as_str(), "specversion" | "datacontenttype"))
            .collect(),
        typed: Default::default(),
    };
    e.typed = typed_names
        .split(',')
        .filter(|k| {
            e.extensions
                .get(*k)
                .is_some_and(|v| v == "true" || v == "false" || v.parse::<i32>().is_ok())
        })
        .map(str::to_string)
        .collect();
    match e.control_attribute() {
        Some(a) => Err(format!("attribute `{a}` holds control characters")),
        None => Ok(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_the_header_round_trip() {
        let mut e = Event::new("order.placed", "troupe://x", br#"{"a":1}"#.to_vec());
        e.subject = Some("o-1 ünïcode %20 \"x\"".into());
        e.extensions
            .insert("troupeto".into(), "troupe:orchestrator".into());
        let back = decode(Some(&headers(&e)), &e.data, SystemTime::now()).unwrap();
        assert_eq!(back, e);
        let h = headers(&e);
        let subject = h.get("ce-subject").unwrap().as_str();
        assert!(
            !subject.contains(' ') && !subject.contains('"'),
            "{subject}"
        );
    }

    #[test]
    fn header_names_are_matched_whatever_their_case() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("Ce-Id", "e-1"),
            ("CE-SOURCE", "urn:x"),
            ("Ce-Type", "text.said"),
            ("Ce-Specversion", "1.0"),
            ("ce-datacontenttype", "text/plain"),
            ("Ce-Tenant", "acme%20inc"),
        ] {
            h.insert(k, v);
        }
        let stored = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let e = decode(Some(&h), b"hello", stored).unwrap();
        assert_eq!((e.id.as_str(), e.kind.as_str()), ("e-1", "text.said"));
        assert_eq!(e.content_type, "text/plain");
        assert_eq!(
            e.extensions.get("tenant").map(String::as_str),
            Some("acme inc")
        );
        assert!(!e.extensions.contains_key("specversion"));
        assert!(!e.extensions.contains_key("datacontenttype"));
        // No `ce-time`: the time the server stored it, the same every read.
        assert_eq!(e.time, "2027-01-15T08:00:00.000000Z");
        assert_eq!(decode(Some(&h), b"hello", stored).unwrap().time, e.time);
    }

    #[test]
    fn structured_mode_is_read_when_there_are_no_headers() {
        let e = Event::new("a.b", "troupe://x", b"{}".to_vec());
        let body = serde_json::to_vec(&e.to_json()).unwrap();
        let now = SystemTime::now();
        assert_eq!(decode(None, &body, now).unwrap().id, e.id);
        assert!(decode(None, b"not json", now).is_err());
    }

    #[test]
    fn types_that_are_not_subjects_are_refused() {
        let n = Names::new("troupe", "orders");
        assert_eq!(
            n.event_subject("order.placed").unwrap(),
            "troupe.ev.order.placed"
        );
        for bad in ["", "a..b", ".a", "a.*", "a.>", "a b"] {
            assert!(n.event_subject(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            n.group_subject("troupe:orchestrator"),
            "troupe.to.orders.troupe_orchestrator"
        );
    }
}
