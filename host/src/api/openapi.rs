//! The OpenAPI 3.1 document of the HTTP API (`GET /v1/openapi.json`).
//!
//! The operations come from the handlers' `#[utoipa::path]` annotations;
//! [`complete`] adds what holds for all of them (the `401` of every route
//! behind the token, the `503` and `500` of every route that reaches the broker, a
//! JSON error body for every error status) and the schemas of bodies, as
//! JSON Schema written out here: the CloudEvents request schema says
//! exactly what `event::json` accepts, so a client (or schemathesis) that
//! follows it is never refused for the shape of its event.

use serde_json::{Value, json};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Troupe", description = "Run event-driven microservices out of sandboxed WebAssembly steps."),
    paths(super::runs::start_run, super::runs::run_status, super::runs::list, super::runs::counts, super::runs::cancel, super::runs::redrive, super::runs::signal, super::publish, super::dlq::list, super::dlq::show, super::dlq::replay, super::dlq::replay_many, super::dlq::purge_many, super::trace, super::kv::bucket, super::kv::entry, super::deploys::list, super::deploys::show, super::deploys::deploy, super::healthz, super::health::readyz, super::metrics, super::openapi, super::app::app, super::schedules::list, super::schedules::pause, super::schedules::resume, super::schedules::trigger),
    modifiers(&Bearer)
)]
struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        api.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// The OpenAPI document of this API: the operations as the handlers
/// declare them, completed by [`complete`].
pub fn openapi_json() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
    complete(&mut doc);
    doc
}

/// What the handlers' annotations cannot say (see the module).
fn complete(doc: &mut Value) {
    doc["components"]["schemas"] = schemas();
    let error = json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            let open = op.get("security").is_some_and(|s| s == &json!([{}]));
            let responses = &mut op["responses"];
            if !open {
                responses["401"] = json!({"description": "No valid bearer token"});
            }
            if path.starts_with("/v1/") && path != "/v1/openapi.json" {
                if responses["503"].as_object().is_none() {
                    responses["503"] =
                        json!({"description": "The broker cannot be reached or failed"});
                }
                responses["500"] = json!({
                    "description": "An internal error (a bug in Troupe; the host logs it)"
                });
            }
            for (status, r) in responses.as_object_mut().into_iter().flatten() {
                if status.starts_with('4') || status.starts_with('5') {
                    r["content"] = error.clone();
                }
            }
            if let Some(schema) = success_schema(method, path) {
                let (status, ct) = match (method.as_str(), path.as_str()) {
                    (
                        "post",
                        "/v1/dlq/replay"
                        | "/v1/dlq/purge"
                        | "/v1/schedules/{name}/pause"
                        | "/v1/schedules/{name}/resume",
                    ) => ("200", "application/json"),
                    ("post", _) => ("202", "application/json"),
                    (_, "/metrics") => ("200", "text/plain"),
                    _ => ("200", "application/json"),
                };
                responses[status]["content"] = json!({ ct: {"schema": schema.clone()} });
                if path == "/readyz" {
                    // Not ready says why in the same shape.
                    responses["503"]["content"] = json!({ ct: {"schema": schema.clone()} });
                }
                if path == "/v1/flows/{flow}/runs" || path == "/v1/runs/{id}/cancel" {
                    // An idempotent start answered with the run it started;
                    // a cancel that is done.
                    responses["200"]["content"] = json!({ ct: {"schema": schema} });
                }
            }
            if path.starts_with("/v1/kv/") {
                // What a bucket name and a key may be.
                for p in op["parameters"].as_array_mut().into_iter().flatten() {
                    p["schema"] = match p["name"].as_str() {
                        Some("bucket") => json!({
                            "type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"
                        }),
                        _ => json!({"type": "string", "minLength": 1, "maxLength": 4096}),
                    };
                }
            }
            if method == "get" && (path == "/v1/runs" || path == "/v1/dlq") {
                // What each filter takes, exactly as the handler reads it.
                for p in op["parameters"].as_array_mut().into_iter().flatten() {
                    let schema = match p["name"].as_str() {
                        Some("since" | "until") => when(),
                        Some("status") => json!({"type": "string", "enum": RUN_STATES}),
                        Some("class") => json!({"type": "string", "enum": CLASSES}),
                        Some("cursor") => {
                            json!({"type": "string", "pattern": "^[0-9a-fA-F-]{36}$"})
                        }
                        Some("step" | "type") => json!({"type": "string", "minLength": 1}),
                        _ => continue,
                    };
                    p["schema"] = schema;
                }
            }
            if method == "post" && (path == "/v1/dlq/replay" || path == "/v1/dlq/purge") {
                let when = when();
                let one = |k: &str| json!({"required": [k]});
                op["requestBody"] = json!({
                    "required": true,
                    "description": "Which dead letters (at least one filter, or `all`), and how",
                    "content": {"application/json": {"schema": {
                        "type": "object", "additionalProperties": false,
                        "properties": {
                            "step": {"type": "string", "minLength": 1},
                            "class": {"type": "string", "enum": CLASSES},
                            "type": {"type": "string", "minLength": 1},
                            "since": when.clone(), "until": when,
                            "limit": {"type": "integer", "minimum": 1, "maximum": super::dlq::MAX_LIMIT},
                            "dry_run": {"type": "boolean"},
                            "all": {"type": "boolean"}
                        },
                        "anyOf": [
                            one("step"), one("class"), one("type"), one("since"), one("until"),
                            {"required": ["all"], "properties": {"all": {"const": true}}}
                        ]
                    }}}
                });
            }
            if method == "post" && path.starts_with("/v1/runs/{id}/") {
                // A refusal says the run's state, with the run.
                op["responses"]["409"]["content"] = json!({"application/json": {"schema": {
                    "type": "object", "required": ["error", "state", "run"],
                    "properties": {
                        "error": {"type": "string"}, "state": {"type": "string"},
                        "run": {"$ref": "#/components/schemas/Run"}
                    }
                }}});
            }
            if method == "post" && path.ends_with("/signals/{name}") {
                op["requestBody"] = json!({
                    "required": false,
                    "description": "The signal's data: any JSON the schema the flow declares for the signal accepts (empty: null)",
                    "content": {"application/json": {"schema": {}}}
                });
                for p in op["parameters"].as_array_mut().into_iter().flatten() {
                    if p["name"] == "name" {
                        p["schema"] =
                            json!({"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,63}$"});
                    }
                }
            }
            if method == "post" && (path.ends_with("/cancel") || path.ends_with("/redrive")) {
                op["requestBody"] = json!({
                    "required": false,
                    "description": "Optional: who asks (`by`, default `api`) and why (`reason`), kept on the run",
                    "content": {"application/json": {"schema": {
                        "type": "object", "additionalProperties": false,
                        "properties": {"by": {"type": "string"}, "reason": {"type": "string"}}
                    }}}
                });
            }
            if method == "post" && path == "/v1/deployments" {
                // Every field is optional, and so is the body.
                op["requestBody"] = json!({
                    "required": false,
                    "description": "Optional: `to` returns to deployment N; `allow_breaking` records what the gate finds instead of refusing; `dry_run` decides only",
                    "content": {"application/json": {"schema": {
                        "type": "object", "additionalProperties": false,
                        "properties": {
                            "to": {"type": "integer", "minimum": 1},
                            "allow_breaking": {"type": "boolean"},
                            "dry_run": {"type": "boolean"}
                        }
                    }}}
                });
            }
            if method == "post" && path == "/v1/events" {
                op["requestBody"]["content"] = json!({
                    "application/cloudevents+json": {"schema": {"$ref": "#/components/schemas/CloudEvent"}},
                    "application/json": {"schema": {"$ref": "#/components/schemas/CloudEvent"}},
                    "application/cloudevents-batch+json": {"schema": {
                        "type": "array", "items": {"$ref": "#/components/schemas/CloudEvent"}
                    }},
                });
            }
        }
    }
}

/// The states of a run, as the API names them.
const RUN_STATES: [&str; 7] = [
    "running",
    "compensating",
    "completed",
    "compensated",
    "failed",
    "timed_out",
    "cancelled",
];

/// The failure classes, as the API names them.
const CLASSES: [&str; 6] = ["rejected", "contract", "retry", "trap", "limit", "timeout"];

/// A point in time as filters take it (`clock::parse_when`): RFC 3339, or
/// a duration before now.
fn when() -> Value {
    json!({
        "type": "string",
        "description": "RFC 3339, or a duration before now: 1 to 6 digits and ms, s, m, h, d or w (15m, 1h, 2d)",
        "anyOf": [{"format": "date-time"}, {"pattern": crate::clock::WHEN_PATTERN}]
    })
}

/// The schema of an operation's success body.
fn success_schema(method: &str, path: &str) -> Option<Value> {
    let r = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    Some(match (method, path) {
        ("post", "/v1/flows/{flow}/runs" | "/v1/schedules/{name}/trigger") => json!({
            "type": "object", "required": ["run_id", "status_url"],
            "properties": {"run_id": {"type": "string"}, "status_url": {"type": "string"}}
        }),
        ("get", "/v1/runs/{id}") => r("Run"),
        ("get", "/v1/schedules") => json!({
            "type": "object", "required": ["schedules"],
            "properties": {"schedules": {"type": "array", "items": r("Schedule")}}
        }),
        ("post", "/v1/schedules/{name}/pause" | "/v1/schedules/{name}/resume") => r("Schedule"),
        ("post", "/v1/runs/{id}/cancel")
        | ("post", "/v1/runs/{id}/redrive")
        | ("post", "/v1/runs/{id}/signals/{name}") => r("Run"),
        ("get", "/v1/runs") => json!({
            "type": "object", "required": ["runs"],
            "properties": {
                "runs": {"type": "array", "items": r("RunSummary")},
                "next_cursor": {"type": "string", "description": "The cursor of the next page, while there is one"}
            }
        }),
        ("get", "/v1/runs/counts") => json!({
            "type": "object", "required": ["counts", "total"],
            "properties": {
                "counts": {"type": "array", "items": {
                    "type": "object", "required": ["flow", "state", "count"],
                    "properties": {"flow": {"type": "string"}, "state": {"type": "string"}, "count": {"type": "integer", "minimum": 0}}
                }},
                "total": {"type": "integer", "minimum": 0}
            }
        }),
        ("get", "/v1/deployments") => json!({
            "type": "object", "required": ["deployments", "current", "loaded"],
            "properties": {
                "deployments": {"type": "array", "items": {"type": "object", "required": ["number", "created", "steps"]}},
                "current": {"type": "integer", "minimum": 0},
                "loaded": {"type": "array", "items": {"type": "integer"}}
            }
        }),
        ("get", "/v1/deployments/{n}") => json!({
            "type": "object", "required": ["number", "created", "origin", "manifest", "steps"],
            "properties": {"number": {"type": "integer", "minimum": 1}}
        }),
        ("post", "/v1/deployments") => json!({
            "type": "object", "required": ["deployment", "recorded", "dry_run", "changes"],
            "properties": {
                "deployment": {"type": "object"}, "recorded": {"type": "boolean"},
                "dry_run": {"type": "boolean"}, "changes": {"type": "array", "items": {"type": "string"}}
            }
        }),
        ("post", "/v1/events") => json!({
            "type": "object",
            "description": "`id` for one event, `ids` for a batch",
            "properties": {
                "id": {"type": "string"},
                "ids": {"type": "array", "items": {"type": "string"}}
            }
        }),
        ("get", "/v1/dlq") => json!({"type": "array", "items": r("DeadLetter")}),
        ("get", "/v1/dlq/{id}") => r("DeadLetter"),
        ("post", "/v1/dlq/replay") => json!({
            "type": "object", "required": ["dry_run", "matched", "replayed", "more", "refused", "reasons"],
            "properties": {
                "dry_run": {"type": "boolean"},
                "matched": {"type": "integer", "minimum": 0},
                "replayed": {"type": "integer", "minimum": 0, "description": "Replayed (in a dry run: would be)"},
                "more": {"type": "boolean", "description": "`limit` left some of those matched for the next batch"},
                "refused": {"type": "integer", "minimum": 0, "description": "Left in the DLQ: today's consumer would refuse them"},
                "reasons": {"type": "array", "items": {
                    "type": "object", "required": ["reason", "count", "examples"],
                    "properties": {
                        "reason": {"type": "string"}, "count": {"type": "integer", "minimum": 1},
                        "examples": {"type": "array", "items": {"type": "string"}}
                    }
                }}
            }
        }),
        ("post", "/v1/dlq/purge") => json!({
            "type": "object", "required": ["dry_run", "matched", "purged", "more"],
            "properties": {
                "dry_run": {"type": "boolean"},
                "matched": {"type": "integer", "minimum": 0},
                "purged": {"type": "integer", "minimum": 0},
                "more": {"type": "boolean"}
            }
        }),
        ("post", "/v1/dlq/{id}/replay") => json!({
            "type": "object", "required": ["replayed"], "properties": {"replayed": {"type": "string"}}
        }),
        ("get", "/v1/traces/{correlation_id}") => {
            json!({"type": "array", "items": r("CloudEvent")})
        }
        ("get", "/v1/kv/{bucket}") => json!({
            "type": "object", "required": ["bucket", "keys"],
            "properties": {"bucket": {"type": "string"}, "keys": {"type": "array", "items": {"type": "string"}}}
        }),
        ("get", "/v1/kv/{bucket}/{key}") => json!({
            "type": "object", "required": ["bucket", "key", "version"],
            "description": "`value` when the value is UTF-8 text, else `value_base64`",
            "properties": {
                "bucket": {"type": "string"}, "key": {"type": "string"},
                "version": {"type": "integer", "minimum": 1},
                "value": {"type": "string"}, "value_base64": {"type": "string"}
            }
        }),
        ("get", "/healthz") => json!({
            "type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}
        }),
        ("get", "/readyz") => json!({
            "type": "object", "required": ["ready", "problems", "broker"],
            "properties": {
                "ready": {"type": "boolean"},
                "problems": {"type": "array", "items": {"type": "string"}},
                "broker": {"type": "object"},
                "orchestrator": {
                    "type": "object", "required": ["driving", "lost"],
                    "properties": {
                        "driving": {"type": "boolean"},
                        "lease_error": {"type": "string"},
                        "lost": {"type": "integer", "minimum": 0}
                    }
                }
            }
        }),
        ("get", "/metrics") => json!({"type": "string"}),
        ("get", "/v1/openapi.json") => json!({"type": "object"}),
        _ => return None,
    })
}

/// Text CloudEvents allows in an attribute: no control characters.
const TEXT: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";

/// A schema that holds when every one of `keys` is set (present, not null).
fn set(keys: &[&str]) -> Value {
    let not_null: serde_json::Map<String, Value> = keys
        .iter()
        .map(|k| (k.to_string(), json!({"not": {"type": "null"}})))
        .collect();
    json!({"required": keys, "properties": not_null})
}

fn schemas() -> Value {
    let mut all = base_schemas();
    for more in [run_schemas(), schedule_schemas()] {
        if let (Some(all), Some(more)) = (all.as_object_mut(), more.as_object()) {
            all.extend(more.clone());
        }
    }
    all
}

/// The schemas of a schedule as `GET /v1/schedules` lists it, and of a
/// run's step in its status.
fn schedule_schemas() -> Value {
    json!({
        "RunStep": {
                    "type": "object", "required": ["state", "attempts"],
                    "properties": {
                        "state": {"type": "string"},
                        "attempts": {"type": "integer", "minimum": 0},
                        "started": {"type": "string"},
                        "finished": {"type": "string"},
                        "duration_ms": {"type": "integer", "minimum": 0},
                        "output_type": {"type": "string"},
                        "output": {},
                        "errors": {"type": "array", "items": {"type": "string"}},
                        "reason": {"type": "string"},
                        "component": {"type": "string", "description": "SHA-256 of the component that answered its last attempt"},
                        "wakes": {"type": "string", "description": "A sleeping step: when it wakes (RFC 3339)"},
                        "child": {"type": "string", "description": "A child flow step: the id of the run its current attempt started"},
                        "elements": {
                            "type": "object", "required": ["total", "sent", "settled", "failed"],
                            "description": "A for-each step: its elements (each one is a step of its own, `ID[i]`)",
                            "properties": {
                                "total": {"type": "integer", "minimum": 0},
                                "sent": {"type": "integer", "minimum": 0},
                                "settled": {"type": "integer", "minimum": 0},
                                "failed": {"type": "integer", "minimum": 0}
                            }
                        }
                    }
                },
        "Schedule": {
            "type": "object",
            "required": ["name", "flow", "when", "overlap", "catch_up", "input", "paused", "started", "skipped", "missed", "next"],
            "properties": {
                "name": {"type": "string"}, "flow": {"type": "string"},
                "when": {"type": "string", "description": "`cron \"PATTERN\"` or `every DURATION`"},
                "overlap": {"type": "string", "enum": ["skip", "allow"]},
                "catch_up": {"type": "string", "enum": ["none", "one"]},
                "input": {},
                "paused": {"type": "boolean"},
                "paused_by": {"type": "string"}, "paused_reason": {"type": "string"},
                "last_tick": {"type": "string"}, "last_run": {"type": "string"},
                "since": {"type": "string", "description": "When a host first ticked it"},
                "started": {"type": "integer", "minimum": 0},
                "skipped": {"type": "integer", "minimum": 0, "description": "Ticks skipped because the last run still ran"},
                "missed": {"type": "integer", "minimum": 0, "description": "Ticks that passed while no host drove the flows"},
                "last_error": {"type": "string"},
                "next": {"type": "array", "items": {"type": "string"}, "description": "The next ticks (none while paused)"}
            }
        }
    })
}

/// The schemas of runs: a run's status, a run in a list, an operator's
/// action on one.
fn run_schemas() -> Value {
    json!({
        "Operated": {
            "type": "object", "required": ["by", "at", "event"],
            "description": "What an operator did to a run: who, why, when, and the id of the control event that asked",
            "properties": {
                "by": {"type": "string"}, "reason": {"type": "string"},
                "at": {"type": "string"}, "event": {"type": "string"}
            }
        },
        "RunSummary": {
            "type": "object", "required": ["id", "flow", "state", "created", "updated"],
            "properties": {
                "id": {"type": "string"}, "flow": {"type": "string"},
                "state": {"type": "string", "enum": RUN_STATES},
                "created": {"type": "string"}, "updated": {"type": "string"},
                "deployment": {"type": "integer", "minimum": 1},
                "key": {"type": "string"},
                "error": {"type": "string", "description": "Why it failed, cut to 300 bytes"}
            }
        },
        "Run": {
            "type": "object",
            "required": ["id", "flow", "state", "input", "created", "updated", "steps"],
            "properties": {
                "id": {"type": "string"},
                "flow": {"type": "string"},
                "deployment": {"type": "integer", "minimum": 1, "description": "The deployment the run started on: its flow and steps, to its end"},
                "state": {"type": "string", "enum": RUN_STATES},
                "input": {},
                "created": {"type": "string"},
                "updated": {"type": "string"},
                "finished": {"type": "string"},
                "duration_ms": {"type": "integer", "minimum": 0},
                "error": {"type": "string"},
                "cancelled": {"$ref": "#/components/schemas/Operated"},
                "redrives": {"type": "array", "items": {"$ref": "#/components/schemas/Operated"}},
                "signals": {"type": "array", "items": {
                    "type": "object", "required": ["name", "data", "by", "at", "event", "state"],
                    "properties": {
                        "name": {"type": "string"}, "data": {}, "by": {"type": "string"},
                        "at": {"type": "string"}, "event": {"type": "string"},
                        "step": {"type": "string"},
                        "state": {"type": "string", "enum": ["delivered", "kept", "ignored"]},
                        "note": {"type": "string"}
                    }
                }},
                "steps": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/RunStep"}},
                "parent": {
                    "type": "object", "required": ["run", "step"],
                    "description": "A child run: the run whose flow step started it",
                    "properties": {"run": {"type": "string"}, "step": {"type": "string"}}
                }
            }
        }
    })
}

fn base_schemas() -> Value {
    // Set by the host only, and never both.
    let forbidden: Vec<Value> = ["troupeto", "trouperun", "troupestep", "troupeattempt"]
        .iter()
        .map(|k| set(&[k]))
        .chain([set(&["data", "data_base64"])])
        .collect();
    // Optional attributes may be null: the JSON format reads null as unset.
    let text = |extra: Value| {
        let mut s = json!({"type": ["string", "null"], "pattern": TEXT});
        if let (Some(s), Some(e)) = (s.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        s
    };
    json!({
        "Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "string", "description": "What went wrong, for a person"}}
        },
        "CloudEvent": {
            "description": "A CloudEvents 1.0 event in the JSON format. Only `type` is required: the host fills in `id` (a UUIDv7), `source`, `time` and `datacontenttype` (application/json). `data` is JSON when the content type is JSON, else a string (the text) or `data_base64` (the bytes). Extensions: lower-case letters and digits, up to 20; values strings, 32-bit integers or booleans; `troupeto`, `trouperun`, `troupestep` and `troupeattempt` are set by the host only. Binary mode (ce-* headers, the body is the data) is accepted too; see the README.",
            "type": "object",
            "required": ["type"],
            "properties": {
                "specversion": {"enum": ["1.0", null]},
                "type": {
                    "type": "string", "maxLength": 128,
                    "pattern": "^[a-z][a-z0-9_-]*(\\.[a-z][a-z0-9_-]*)*$",
                    "description": "Dot-separated words of lower-case letters, digits, `-` and `_`, each starting with a letter"
                },
                "id": text(json!({"minLength": 1})),
                "source": text(json!({"minLength": 1, "format": "uri-reference"})),
                "subject": text(json!({"maxLength": 1024})),
                "time": {"type": ["string", "null"], "format": "date-time"},
                "datacontenttype": {
                    "type": ["string", "null"], "maxLength": 256,
                    "pattern": "^ *[A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127} *(;[^\\u0000-\\u001f\\u007f-\\u009f]*)?$"
                },
                "dataschema": text(json!({"format": "uri-reference"})),
                "data": {},
                "data_base64": {
                    "type": ["string", "null"], "contentEncoding": "base64",
                    "pattern": "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
                },
            },
            "propertyNames": {"pattern": "^[a-z0-9]{1,20}$|^data_base64$"},
            "additionalProperties": {
                "anyOf": [
                    text(json!({})),
                    {"type": "integer", "minimum": -2147483648i64, "maximum": 2147483647},
                    {"type": "boolean"},
                    {"type": "null"}
                ]
            },
            "not": {"anyOf": forbidden},
            "allOf": [{
                "description": "Data that is not JSON is a string (its text) or data_base64",
                "if": {
                    "required": ["datacontenttype"],
                    "properties": {"datacontenttype": {"type": "string", "not": {
                        "pattern": "^[Aa][Pp][Pp][Ll][Ii][Cc][Aa][Tt][Ii][Oo][Nn]/([Jj][Ss][Oo][Nn]|[^;]*\\+[Jj][Ss][Oo][Nn])\\s*(;.*)?$"
                    }}}
                },
                "then": {"properties": {"data": {"type": ["string", "null"]}}}
            }]
        },
        "DeadLetter": {
            "type": "object",
            "required": ["id", "step", "class", "message", "attempts", "time", "event_id", "event_type"],
            "properties": {
                "id": {"type": "string"},
                "step": {"type": "string"},
                "class": {"type": "string", "enum": CLASSES},
                "message": {"type": "string"},
                "attempts": {"type": "integer", "minimum": 0},
                "time": {"type": "string"},
                "event_id": {"type": "string"},
                "event_type": {"type": "string"},
                "deployment": {"type": "integer", "minimum": 1, "description": "The deployment of the step version that could not handle it"},
                "component": {"type": "string", "description": "SHA-256 of that version's component"},
                "event": {"$ref": "#/components/schemas/CloudEvent"}
            }
        },
    })
}
