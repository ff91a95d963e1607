//! The CloudEvents JSON format (structured mode): writing an event as a
//! document, reading one back with every attribute a producer sets checked.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{CORRELATION_ID, Event, TRACEPARENT, is_json_type};

/// The CloudEvents JSON form, written straight from the event: JSON data
/// is copied as it is (no `Value` is built), anything else goes in
/// `data_base64`. [`Event::to_json`] is the same as a `Value`.
impl serde::Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("specversion", "1.0")?;
        m.serialize_entry("id", &self.id)?;
        m.serialize_entry("source", &self.source)?;
        m.serialize_entry("type", &self.kind)?;
        if let Some(v) = &self.subject {
            m.serialize_entry("subject", v)?;
        }
        m.serialize_entry("time", &self.time)?;
        m.serialize_entry("datacontenttype", &self.content_type)?;
        if let Some(v) = &self.schema {
            m.serialize_entry("dataschema", v)?;
        }
        for (k, v) in &self.extensions {
            match typed_value(&self.typed, k, v) {
                Some(t) => m.serialize_entry(k, &t)?,
                None => m.serialize_entry(k, v)?,
            }
        }
        // JSON data as it is; other data as the text it is, when it is
        // text; anything else (and JSON-labelled data that is not JSON)
        // as base64. Reading any of these back gives the same bytes.
        let json = self.is_json();
        match serde_json::from_slice::<&serde_json::value::RawValue>(&self.data) {
            Ok(raw) if json => m.serialize_entry("data", raw)?,
            _ => match std::str::from_utf8(&self.data) {
                Ok(text) if !json => m.serialize_entry("data", text)?,
                _ => {
                    use base64::Engine as _;
                    let b = base64::engine::general_purpose::STANDARD.encode(&self.data);
                    m.serialize_entry("data_base64", &b)?;
                }
            },
        }
        m.end()
    }
}

/// The JSON integer or boolean extension `k` holds, if it was given as one.
fn typed_value(typed: &BTreeSet<String>, k: &str, v: &str) -> Option<Value> {
    if !typed.contains(k) {
        return None;
    }
    serde_json::from_str::<Value>(v)
        .ok()
        .filter(|t| t.is_boolean() || t.is_i64())
}

/// An extension value as the JSON format types it: its text, and whether it
/// is an integer or boolean (not a string); an error for any other JSON.
fn extension_value(k: &str, v: Value) -> Result<(String, bool), EnvelopeError> {
    match v {
        Value::String(s) if crate::text::has_control(&s) => Err(EnvelopeError::Control(k.into())),
        Value::String(s) => Ok((s, false)),
        Value::Bool(b) => Ok((b.to_string(), true)),
        // An integer, written any way JSON allows (`5`, `5.0`, `5e0`).
        Value::Number(n)
            if n.as_f64().is_some_and(|f| {
                f.fract() == 0.0 && f >= i32::MIN as f64 && f <= i32::MAX as f64
            }) =>
        {
            Ok(((n.as_f64().expect("checked") as i32).to_string(), true))
        }
        _ => Err(EnvelopeError::ExtensionType(k.into())),
    }
}

/// The extensions of `e` as a JSON object (as stored), integers and
/// booleans typed.
pub fn extensions_to_json(e: &Event) -> String {
    if e.typed.is_empty() {
        // All strings (the common case): as they are, no copy.
        return serde_json::to_string(&e.extensions).expect("strings serialise");
    }
    let m: serde_json::Map<String, Value> = e
        .extensions
        .iter()
        .map(|(k, v)| {
            let t = typed_value(&e.typed, k, v).unwrap_or_else(|| Value::String(v.clone()));
            (k.clone(), t)
        })
        .collect();
    Value::Object(m).to_string()
}

/// Read back what [`extensions_to_json`] wrote.
pub fn extensions_from_json(
    s: &str,
) -> Result<(BTreeMap<String, String>, BTreeSet<String>), serde_json::Error> {
    let m: BTreeMap<String, Value> = serde_json::from_str(s)?;
    let mut typed = BTreeSet::new();
    let extensions = m
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => (k, s),
            other => {
                typed.insert(k.clone());
                (k, other.to_string())
            }
        })
        .collect();
    Ok((extensions, typed))
}

/// Why a CloudEvents JSON document could not be read as an event.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("an event must be a JSON object")]
    NotAnObject,
    #[error("attribute `{0}` is required")]
    Missing(&'static str),
    #[error("attribute `{0}` must be a string")]
    NotAString(String),
    #[error("specversion {0:?} is not supported (only \"1.0\")")]
    SpecVersion(String),
    #[error("`data_base64` is not valid base64")]
    Base64,
    #[error("an event has `data` or `data_base64`, not both")]
    BothData,
    #[error("extension attribute names are lower-case letters and digits, at most 20: {0:?}")]
    ExtensionName(String),
    #[error("attribute `{0}` holds control characters, which CloudEvents attributes may not")]
    Control(String),
    #[error(
        "extension `{0}` must be a string, an integer (32-bit, CloudEvents' Integer) or a boolean"
    )]
    ExtensionType(String),
    #[error("attribute `datacontenttype` must be a media type (type/subtype), not {0:?}")]
    MediaType(String),
    #[error("attribute `{0}` may have at most {1} characters")]
    TooLong(&'static str, usize),
    #[error("attribute `{0}` must not be empty")]
    Empty(&'static str),
    #[error("attribute `{0}` must be a URI reference (RFC 3986), not {1:?}")]
    NotUri(&'static str, String),
    #[error("attribute `time` must be an RFC 3339 timestamp, not {0:?}")]
    Time(String),
    #[error(
        "the data of a {0:?} event must be a string (its text) or `data_base64`, not JSON: its \
         content type is not JSON"
    )]
    DataNotText(String),
}

impl Event {
    /// Read the CloudEvents JSON form. Attributes the producer leaves out
    /// (`id`, `time`, `source`, the correlation) are filled in as for
    /// [`Event::new`]; those it sets are checked (non-empty `id` and
    /// `source`, URI references for `source` and `dataschema`, RFC 3339
    /// `time`, no control characters). The data is kept exactly: JSON as
    /// JSON, other content types as the string's text or the bytes of
    /// `data_base64`.
    pub fn from_json(value: Value, default_source: &str) -> Result<Event, EnvelopeError> {
        let Value::Object(mut m) = value else {
            return Err(EnvelopeError::NotAnObject);
        };
        let mut take = |name: &'static str| -> Result<Option<String>, EnvelopeError> {
            match m.remove(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if crate::text::has_control(&s) => {
                    Err(EnvelopeError::Control(name.to_string()))
                }
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(EnvelopeError::NotAString(name.to_string())),
            }
        };
        if let Some(v) = take("specversion")?
            && v != "1.0"
        {
            return Err(EnvelopeError::SpecVersion(v));
        }
        let kind = take("type")?.ok_or(EnvelopeError::Missing("type"))?;
        let id = take("id")?;
        let source = take("source")?;
        let subject = take("subject")?;
        let time = take("time")?;
        let content_type = take("datacontenttype")?;
        let schema = take("dataschema")?;
        let b64 = take("data_base64")?;
        if let Some(ct) = content_type
            .as_ref()
            .filter(|c| super::media_type(c).is_none())
        {
            return Err(EnvelopeError::MediaType(ct.clone()));
        }
        for (name, v, max) in [
            ("subject", &subject, super::MAX_SUBJECT),
            ("datacontenttype", &content_type, super::MAX_CONTENT_TYPE),
        ] {
            if v.as_ref().is_some_and(|v| v.chars().count() > max) {
                return Err(EnvelopeError::TooLong(name, max));
            }
        }
        check_attributes(
            id.as_deref(),
            source.as_deref(),
            time.as_deref(),
            schema.as_deref(),
        )?;
        let json = content_type.as_deref().is_none_or(is_json_type);
        // The JSON format reads a null attribute as unset, `data` too.
        let given = m.remove("data").filter(|v| !v.is_null());
        if given.is_some() && b64.is_some() {
            return Err(EnvelopeError::BothData);
        }
        let data = match (given, b64) {
            (Some(v), _) if json => serde_json::to_vec(&v).expect("a JSON value serialises"),
            (Some(Value::String(text)), _) => text.into_bytes(),
            (Some(_), _) => {
                return Err(EnvelopeError::DataNotText(content_type.unwrap_or_default()));
            }
            (None, Some(b)) => {
                use base64::Engine as _;
                // Padded, as RFC 4648 says; bits past the last byte are
                // ignored rather than refused.
                const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
                    &base64::alphabet::STANDARD,
                    base64::engine::GeneralPurposeConfig::new()
                        .with_decode_allow_trailing_bits(true),
                );
                LENIENT.decode(b).map_err(|_| EnvelopeError::Base64)?
            }
            (None, None) if json => b"null".to_vec(),
            (None, None) => Vec::new(),
        };
        let mut event = Event::new(&kind, source.as_deref().unwrap_or(default_source), data);
        // The trace is the producer's, if it set one; else whoever takes the
        // event in places it (`Event::ensure_trace`, or the API in the
        // request's trace).
        event.extensions.remove(TRACEPARENT);
        if let Some(id) = id {
            event.extensions.insert(CORRELATION_ID.into(), id.clone());
            event.id = id;
        }
        event.subject = subject;
        if let Some(t) = time {
            event.time = t;
        }
        if let Some(ct) = content_type {
            event.content_type = ct;
        }
        event.schema = schema;
        for (k, v) in m {
            if k.is_empty()
                || k.len() > 20
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                return Err(EnvelopeError::ExtensionName(k));
            }
            // The JSON format: a null attribute is one that is not set.
            if v.is_null() {
                continue;
            }
            let (text, typed) = extension_value(&k, v)?;
            if typed {
                event.typed.insert(k.clone());
            }
            event.extensions.insert(k, text);
        }
        Ok(event)
    }
}

/// The attributes a producer set, checked as CloudEvents 1.0 says.
pub(super) fn check_attributes(
    id: Option<&str>,
    source: Option<&str>,
    time: Option<&str>,
    schema: Option<&str>,
) -> Result<(), EnvelopeError> {
    if id.is_some_and(str::is_empty) {
        return Err(EnvelopeError::Empty("id"));
    }
    if source.is_some_and(str::is_empty) {
        return Err(EnvelopeError::Empty("source"));
    }
    for (name, v) in [("source", source), ("dataschema", schema)] {
        if let Some(v) = v
            && fluent_uri::UriRef::parse(v).is_err()
        {
            return Err(EnvelopeError::NotUri(name, v.to_string()));
        }
    }
    if let Some(t) = time {
        let rfc3339 = &time::format_description::well_known::Rfc3339;
        time::OffsetDateTime::parse(t, rfc3339).map_err(|_| EnvelopeError::Time(t.to_string()))?;
    }
    Ok(())
}
