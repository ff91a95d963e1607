//! `troupe docs`: an app's events as an AsyncAPI 3.0 document.
//!
//! The document is built from the contracts the steps declare (their
//! `describe`), so it cannot drift from what the host enforces:
//!
//! - one *channel* per event type; its address is the type, or on NATS the
//!   subject the type is published on;
//! - one *message* per version of a type's schema: where the producer and a
//!   consumer declare different schemas for the same version, each gets
//!   its own message, named after its step;
//! - per step, a `receive` *operation* for each type it consumes and a
//!   `send` operation for each type it produces.
//!
//! Messages travel in a CloudEvents 1.0 envelope; the attributes the host
//! sets are documented as the message headers (`ce-` headers in NATS's
//! binary mode), and the correlation id as the message's `correlationId`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::broker::BrokerUrl;
use crate::contract::EventType;
use crate::contract::StepView;
use crate::runtime::config::HttpGrantSpec;

/// Who declared a schema: (step, produces?).
type Declarer = (String, bool);
/// The distinct schemas of one (type, version), each with its declarers.
type Versions = Vec<(Arc<EventType>, Vec<Declarer>)>;

/// The AsyncAPI 3.0 document of `app`'s events.
pub fn document(app: &str, steps: &[impl StepView], broker: &BrokerUrl) -> Value {
    // (type, version) -> distinct schemas, each with the steps declaring it.
    let mut schemas: BTreeMap<(String, String), Versions> = BTreeMap::new();
    for s in steps {
        let declared = s.contract().consumes.iter().map(|t| (t, false));
        for (t, produces) in declared.chain(s.contract().produces.iter().map(|t| (t, true))) {
            let versions = schemas
                .entry((t.kind.clone(), t.version.clone()))
                .or_default();
            let who = (s.name().to_string(), produces);
            match versions
                .iter_mut()
                .find(|(known, _)| known.schema == t.schema)
            {
                Some((_, by)) => by.push(who),
                None => versions.push((t.clone(), vec![who])),
            }
        }
    }

    let mut channels = Map::new();
    let mut messages = Map::new();
    // (step, produces?, type) -> the message ids of what the step declared.
    let mut declared: BTreeMap<Declarer, Vec<(String, String)>> = BTreeMap::new();
    for ((kind, version), variants) in &schemas {
        let channel = channels.entry(kind.clone()).or_insert_with(|| {
            json!({
                "address": address(kind, app, broker),
                "title": kind,
                "messages": {},
            })
        });
        for (t, by) in variants {
            let mut id = format!("{kind}-{version}");
            if variants.len() > 1 {
                id = format!("{id}-{}", by[0].0);
            }
            channel["messages"][&id] = json!({ "$ref": format!("#/components/messages/{id}") });
            messages.insert(id.clone(), message(t, by));
            for who in by {
                declared
                    .entry(who.clone())
                    .or_default()
                    .push((kind.clone(), id.clone()));
            }
        }
    }

    let mut operations = Map::new();
    for s in steps {
        let subscribed = s.choreography();
        for produces in [false, true] {
            let key = (s.name().to_string(), produces);
            for (kind, id) in declared.get(&key).into_iter().flatten() {
                let action = if produces { "send" } else { "receive" };
                let summary = match (produces, subscribed) {
                    (true, _) => format!("{} emits {kind}", s.name()),
                    (false, true) => format!("{} consumes {kind}", s.name()),
                    (false, false) => format!(
                        "{} takes {kind} as a flow's command only (not subscribed to the choreography)",
                        s.name()
                    ),
                };
                operations.insert(
                    format!("{}.{action}.{kind}", s.name()),
                    json!({
                        "action": action,
                        "channel": { "$ref": format!("#/channels/{kind}") },
                        "summary": summary,
                        "messages": [{ "$ref": format!("#/channels/{kind}/messages/{id}") }],
                    }),
                );
            }
        }
    }

    let mut doc = json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": app,
            // The app has no version of its own: each message carries its
            // type's contract version.
            "version": "0.0.0",
            "description": format!(
                "The events of the Troupe app `{app}`, from the contracts its steps declare. \
                 Each channel is one event type; each message one version of its schema. \
                 Events travel as CloudEvents 1.0; the host sets the attributes in the headers."
            ),
        },
        "defaultContentType": crate::event::JSON,
        "channels": channels,
        "operations": operations,
        "components": { "messages": messages },
    });
    if let BrokerUrl::Nats { server, .. } = broker {
        let host = server.trim_start_matches("nats://");
        doc["servers"] = json!({
            "nats": {
                "host": host,
                "protocol": "nats",
                "description": "NATS JetStream: events are stored in the namespace's events stream",
            }
        });
    }
    doc
}

/// Where events of `kind` are published.
fn address(kind: &str, app: &str, broker: &BrokerUrl) -> String {
    match broker {
        BrokerUrl::Embedded => kind.to_string(),
        BrokerUrl::Nats { namespace, .. } => crate::broker::nats::Names::new(namespace, app)
            .event_subject(kind)
            .unwrap_or_else(|_| kind.to_string()),
    }
}

/// One version of a type's schema, as the message of `by`'s steps.
fn message(t: &EventType, by: &[Declarer]) -> Value {
    let who: Vec<String> = by
        .iter()
        .map(|(step, produces)| {
            format!(
                "{step} ({})",
                if *produces { "produces" } else { "consumes" }
            )
        })
        .collect();
    let attribute = |description: &str| json!({ "type": "string", "description": description });
    json!({
        "name": t.kind,
        "title": format!("{} {}", t.kind, t.version),
        "summary": t.description,
        "description": format!("Declared by {}. `dataschema`: `{}`.", who.join(", "), t.urn),
        "contentType": t.format.media_type(),
        "payload": t.schema,
        "correlationId": {
            "description": "The cascade or flow run the event belongs to.",
            "location": "$message.header#/ce-correlationid",
        },
        "headers": {
            "type": "object",
            "description": "CloudEvents attributes, set by the host (never by a step).",
            "properties": {
                "ce-specversion": { "const": "1.0" },
                "ce-type": { "const": t.kind },
                "ce-dataschema": { "const": t.urn },
                "ce-id": attribute("Unique; derived from the cause for emitted events, so a redelivery repeats it."),
                "ce-source": attribute("troupe://APP/step/STEP for emitted events."),
                "ce-time": attribute("RFC 3339."),
                "ce-correlationid": attribute("The cascade or flow run."),
                "ce-causationid": attribute("The id of the event this one answers."),
                "ce-traceparent": attribute("W3C trace context."),
            },
        },
    })
}

/// A step's `grants.http`, as [`add_outbound_http`] shows them.
pub struct StepGrants<'a> {
    pub step: &'a str,
    pub grants: &'a [HttpGrantSpec],
}

/// Add what each step may call outside the app to `doc`, as the root
/// extension `x-troupe-outbound-http`: `{STEP: [{url, methods}]}` from
/// `grants.http` (`methods` absent: any). Headers are never included:
/// they may carry secrets.
pub fn add_outbound_http(doc: &mut Value, steps: &[StepGrants<'_>]) {
    let mut by_step = Map::new();
    for s in steps.iter().filter(|s| !s.grants.is_empty()) {
        let list: Vec<Value> = s
            .grants
            .iter()
            .map(|g| match &g.methods {
                Some(m) => json!({ "url": g.url, "methods": m }),
                None => json!({ "url": g.url }),
            })
            .collect();
        by_step.insert(s.step.to_string(), Value::Array(list));
    }
    if !by_step.is_empty() {
        doc["x-troupe-outbound-http"] = Value::Object(by_step);
    }
}
