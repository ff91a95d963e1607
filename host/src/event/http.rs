//! The CloudEvents HTTP protocol binding, as a receiver (`POST /v1/events`):
//! the three content modes, told apart by the request's `Content-Type`.
//!
//! - **structured**: `application/cloudevents+json`, or a JSON body with no
//!   `ce-specversion` header (`application/json` or no type): one event as a
//!   CloudEvents JSON document;
//! - **batch**: `application/cloudevents-batch+json`: a JSON array of such
//!   documents (accepted or refused whole);
//! - **binary**: anything else with a `ce-specversion` header: the
//!   attributes are the `ce-*` headers (percent-decoded), `Content-Type` is
//!   `datacontenttype`, and the body is the data, byte for byte.

use serde_json::{Map, Value};

use super::{EnvelopeError, Event, is_json_type, media_type};

/// Why a request could not be read as events.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Event(#[from] EnvelopeError),
    #[error("event {0} of the batch (counting from 0): {1}")]
    InBatch(usize, EnvelopeError),
    #[error("the body is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("a batch (application/cloudevents-batch+json) must be a JSON array of events")]
    NotABatch,
    #[error("header `{0}` is not UTF-8 text once percent-decoded")]
    Header(String),
    #[error(
        "a {0} body needs the event's attributes as ce-* headers (binary mode), or send \
         application/cloudevents+json"
    )]
    NoAttributes(String),
    /// A CloudEvents event format other than JSON: HTTP 415.
    #[error("only the JSON event format is supported, not {0}")]
    Format(String),
}

/// The events of one request: its `Content-Type`, its headers (name,
/// value), and its body. `default_source` is the `source` of events that
/// set none.
pub fn from_http<'h>(
    content_type: Option<&str>,
    headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
    body: &[u8],
    default_source: &str,
) -> Result<Vec<Event>, HttpError> {
    let essence = content_type.and_then(media_type).map(|(e, _)| e);
    let mut ce = Map::new();
    for (name, value) in headers {
        let Some(attr) = name
            .to_ascii_lowercase()
            .strip_prefix("ce-")
            .map(str::to_string)
        else {
            continue;
        };
        let text = percent_encoding::percent_decode(value)
            .decode_utf8()
            .map_err(|_| HttpError::Header(name.to_string()))?;
        ce.insert(attr, Value::String(text.into_owned()));
    }
    match essence.as_deref() {
        Some("application/cloudevents-batch+json") => {
            let Value::Array(docs) = json(body)? else {
                return Err(HttpError::NotABatch);
            };
            docs.into_iter()
                .enumerate()
                .map(|(i, d)| {
                    Event::from_json(d, default_source).map_err(|e| HttpError::InBatch(i, e))
                })
                .collect()
        }
        Some("application/cloudevents+json") => {
            Ok(vec![Event::from_json(json(body)?, default_source)?])
        }
        Some(e) if e.starts_with("application/cloudevents") => Err(HttpError::Format(e.into())),
        _ if ce.contains_key("specversion") => {
            Ok(vec![binary(ce, content_type, body, default_source)?])
        }
        None => Ok(vec![Event::from_json(json(body)?, default_source)?]),
        Some(e) if is_json_type(e) => Ok(vec![Event::from_json(json(body)?, default_source)?]),
        Some(e) => Err(HttpError::NoAttributes(e.into())),
    }
}

fn json(body: &[u8]) -> Result<Value, HttpError> {
    serde_json::from_slice(body).map_err(HttpError::NotJson)
}

/// Binary mode: the `ce-*` attributes, the content type, the body as data.
fn binary(
    mut attrs: Map<String, Value>,
    content_type: Option<&str>,
    body: &[u8],
    default_source: &str,
) -> Result<Event, HttpError> {
    for reserved in ["data", "data_base64", "datacontenttype"] {
        if attrs.contains_key(reserved) {
            return Err(EnvelopeError::ExtensionName(reserved.into()).into());
        }
    }
    if let Some(ct) = content_type {
        attrs.insert("datacontenttype".into(), Value::String(ct.into()));
    }
    if content_type.is_none_or(is_json_type) {
        if !body.is_empty() {
            attrs.insert("data".into(), json(body)?);
        }
    } else {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(body);
        attrs.insert("data_base64".into(), Value::String(b64));
    }
    Ok(Event::from_json(Value::Object(attrs), default_source)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        pairs.iter().map(|(k, v)| (*k, v.as_bytes()))
    }

    #[test]
    fn binary_mode_reads_headers_and_keeps_the_body() {
        let headers = [
            ("ce-specversion", "1.0"),
            ("Ce-Id", "b-1"),
            ("ce-source", "urn:x"),
            ("ce-type", "text.said"),
            ("ce-subject", "caf%C3%A9%20au%20lait"),
            ("ce-priority", "5"),
        ];
        let e = from_http(
            Some("text/plain; charset=utf-8"),
            h(&headers),
            b"hi \"there\"",
            "d",
        )
        .unwrap();
        assert_eq!(e.len(), 1);
        let e = &e[0];
        assert_eq!((e.id.as_str(), e.kind.as_str()), ("b-1", "text.said"));
        assert_eq!(e.subject.as_deref(), Some("café au lait"));
        assert_eq!(e.content_type, "text/plain; charset=utf-8");
        assert_eq!(e.data, b"hi \"there\"");
        assert_eq!(e.extensions["priority"], "5");
        let json = from_http(Some("application/json"), h(&headers), br#"{"a": 1}"#, "d").unwrap();
        assert_eq!(json[0].data, br#"{"a":1}"#);
    }

    #[test]
    fn modes_are_told_apart_by_content_type() {
        let doc = br#"{"specversion":"1.0","id":"s","source":"urn:x","type":"a.b","data":{}}"#;
        for ct in [
            None,
            Some("application/json"),
            Some("application/cloudevents+json; charset=utf-8"),
        ] {
            let e = from_http(ct, h(&[]), doc, "d").unwrap();
            assert_eq!(e[0].id, "s", "{ct:?}");
        }
        let batch = format!("[{},{}]", String::from_utf8_lossy(doc), r#"{"type":"c.d"}"#);
        let e = from_http(
            Some("application/cloudevents-batch+json"),
            h(&[]),
            batch.as_bytes(),
            "d",
        )
        .unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].source, "d");
        let bad = from_http(
            Some("application/cloudevents-batch+json"),
            h(&[]),
            b"[{\"id\":\"x\"}]",
            "d",
        );
        assert!(
            matches!(
                bad,
                Err(HttpError::InBatch(0, EnvelopeError::Missing("type")))
            ),
            "{bad:?}"
        );
        assert!(matches!(
            from_http(Some("application/cloudevents-batch+json"), h(&[]), doc, "d"),
            Err(HttpError::NotABatch)
        ));
        assert!(matches!(
            from_http(Some("text/plain"), h(&[]), b"hi", "d"),
            Err(HttpError::NoAttributes(_))
        ));
        assert!(matches!(
            from_http(Some("application/cloudevents+avro"), h(&[]), b"hi", "d"),
            Err(HttpError::Format(_))
        ));
    }
}
