//! Checking an app's wiring before it runs (`troupe check`, and `troupe
//! run`, which refuses to start on an error).
//!
//! Contracts may only change passively: every event a producer may emit
//! must be one its consumers accept. For each event type that one step
//! produces and another consumes, the producer's schema is compared with
//! the consumer's, structurally: a field the consumer requires must be one
//! the producer always sends, a field both describe must have compatible
//! types and values, and a closed consumer (`additionalProperties: false`)
//! must know every field the producer may send. Versions of one event type
//! must share their major version, and the same content type (JSON, or the
//! `contentMediaType` of both schemas). This is a sound-enough approximation of
//! "the producer's schema is a subset of the consumer's" for the keywords
//! contracts use (`type`, `required`, `properties`, `items`, `enum`,
//! `additionalProperties`); what it cannot judge it does not report.

use serde::Serialize;
use serde_json::Value;

use crate::contract::StepView;
use crate::contract::{DataFormat, EventType};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The app would dead-letter valid traffic: it does not start.
    Error,
    /// Likely a mistake, but the app runs (a step that imports `wasi:http`
    /// with no grant: every request it makes is denied).
    Warning,
    /// Worth knowing (a type nobody consumes, or nobody in the app produces).
    Info,
}

/// What the check needs to know of a step's outbound HTTP.
pub struct HttpUse<'a> {
    pub step: &'a str,
    /// The component imports `wasi:http/outgoing-handler`.
    pub imports: bool,
    /// Its `grants.http` urls.
    pub grants: Vec<&'a str>,
}

/// Grants against imports: a step that can make requests but may reach
/// nothing, and grants for a step that cannot make requests.
pub fn http(steps: &[HttpUse<'_>]) -> Vec<Finding> {
    let mut out = Vec::new();
    for s in steps {
        match (s.imports, s.grants.is_empty()) {
            (true, true) => out.push(Finding {
                severity: Severity::Warning,
                message: format!(
                    "step `{}` imports wasi:http/outgoing-handler but has no `grants.http`: \
                     every request it makes will be denied",
                    s.step
                ),
            }),
            (false, false) => out.push(Finding {
                severity: Severity::Warning,
                message: format!(
                    "step `{}` has `grants.http` ({}) but its component does not import \
                     wasi:http/outgoing-handler: it cannot make requests",
                    s.step,
                    s.grants.join(", ")
                ),
            }),
            _ => {}
        }
    }
    out
}

/// One thing the check found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

/// Check the wiring of `steps`.
pub fn check(steps: &[impl StepView]) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in steps {
        for produced in &p.contract().produces {
            let consumers: Vec<_> = steps
                .iter()
                .filter_map(|c| {
                    c.contract()
                        .consumes
                        .iter()
                        .find(|t| t.kind == produced.kind)
                        .map(|t| (c, t))
                })
                .collect();
            if consumers.is_empty() {
                out.push(Finding {
                    severity: Severity::Info,
                    message: format!(
                        "{} emitted by `{}` is consumed by no step of this app (other systems may)",
                        produced.kind,
                        p.name()
                    ),
                });
            }
            for (c, consumed) in consumers {
                let wire = format!("{} from `{}` to `{}`", produced.kind, p.name(), c.name());
                let problems = wire_problems(p.name(), produced, c.name(), consumed);
                for problem in problems {
                    out.push(Finding {
                        severity: Severity::Error,
                        message: format!("{wire}: {problem}"),
                    });
                }
            }
        }
    }
    for c in steps {
        for consumed in &c.contract().consumes {
            let produced = steps.iter().any(|p| {
                p.contract()
                    .produces
                    .iter()
                    .any(|t| t.kind == consumed.kind)
            });
            if !produced {
                out.push(Finding {
                    severity: Severity::Info,
                    message: format!(
                        "{} consumed by `{}` is produced by no step of this app (it comes from outside: a producer, a flow, another system)",
                        consumed.kind,
                        c.name()
                    ),
                });
            }
        }
    }
    out
}

/// Why data of `produced` (as step `producer` declares it) might not be
/// data of `consumed` (as step `consumer` declares it): the major
/// versions, the content types, then the schemas field by field. Empty
/// when every event the producer may emit is one the consumer accepts.
pub fn wire_problems(
    producer: &str,
    produced: &EventType,
    consumer: &str,
    consumed: &EventType,
) -> Vec<String> {
    if major(&produced.version) != major(&consumed.version) {
        return vec![format!(
            "`{producer}` emits version {} but `{consumer}` reads version {}: a major version \
             change is not passive",
            produced.version, consumed.version
        )];
    }
    if produced.format != consumed.format {
        return vec![format!(
            "`{producer}` emits {} data but `{consumer}` reads {}",
            describe_format(&produced.format),
            describe_format(&consumed.format)
        )];
    }
    let mut problems = Vec::new();
    compare(&produced.schema, &consumed.schema, "", &mut problems);
    problems
}

fn describe_format(f: &DataFormat) -> String {
    match f {
        DataFormat::Other {
            media_type,
            base64: true,
        } => format!("{media_type} (base64)"),
        f => f.media_type().to_string(),
    }
}

fn major(version: &str) -> &str {
    version.split('.').next().unwrap_or(version)
}

fn types(schema: &Value) -> Option<Vec<&str>> {
    match schema.get("type")? {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(ts) => Some(ts.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn required(schema: &Value) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Record why data valid under `producer` might be invalid under `consumer`.
fn compare(producer: &Value, consumer: &Value, at: &str, problems: &mut Vec<String>) {
    let here = if at.is_empty() {
        "/".to_string()
    } else {
        at.to_string()
    };
    if let Some(want) = types(consumer) {
        match types(producer) {
            Some(have) => {
                let accepted =
                    |t: &&str| want.contains(t) || (*t == "integer" && want.contains(&"number"));
                let bad: Vec<&str> = have.iter().filter(|t| !accepted(t)).copied().collect();
                if !bad.is_empty() {
                    problems.push(format!(
                        "at {here} the producer may send {} but the consumer accepts {}",
                        bad.join(" or "),
                        want.join(" or ")
                    ));
                    return;
                }
            }
            None => problems.push(format!(
                "at {here} the producer does not say what type it sends; the consumer accepts {}",
                want.join(" or ")
            )),
        }
    }
    if let Some(Value::Array(allowed)) = consumer.get("enum") {
        match producer.get("enum") {
            Some(Value::Array(sent)) => {
                for v in sent.iter().filter(|v| !allowed.contains(v)) {
                    problems.push(format!("at {here} the producer may send {v}, which the consumer's enum does not allow"));
                }
            }
            _ => problems.push(format!(
                "at {here} the consumer accepts only {}, the producer is not restricted",
                Value::Array(allowed.clone())
            )),
        }
    }
    bounds(producer, consumer, &here, problems);
    let sent_required = required(producer);
    let props = |s: &Value| {
        s.get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let (pp, cp) = (props(producer), props(consumer));
    for r in required(consumer) {
        if !sent_required.contains(&r) {
            problems.push(format!(
                "the consumer requires {at}/{r}, which the producer may leave out"
            ));
        }
    }
    for (name, c_schema) in &cp {
        if let Some(p_schema) = pp.get(name) {
            compare(p_schema, c_schema, &format!("{at}/{name}"), problems);
        }
    }
    if consumer.get("additionalProperties") == Some(&Value::Bool(false)) {
        for name in pp.keys().filter(|n| !cp.contains_key(*n)) {
            problems.push(format!("the producer may send {at}/{name}, which the consumer does not allow (additionalProperties: false)"));
        }
    }
    if let (Some(pi), Some(ci)) = (producer.get("items"), consumer.get("items")) {
        compare(pi, ci, &format!("{at}/*"), problems);
    }
}

/// The bounds a consumer sets that the producer does not promise to keep:
/// numbers (`minimum`, `maximum`, their exclusive forms, `multipleOf`),
/// lengths (`minLength`, `maxLength`, `minItems`, `maxItems`), and what can
/// only be compared for equality (`const`, `pattern`, `format`).
fn bounds(producer: &Value, consumer: &Value, here: &str, problems: &mut Vec<String>) {
    let num = |s: &Value, k: &str| s.get(k).and_then(Value::as_f64);
    // The producer's upper bound: (value, exclusive).
    let upper = |s: &Value| match (num(s, "maximum"), num(s, "exclusiveMaximum")) {
        (Some(m), Some(x)) if x <= m => Some((x, true)),
        (Some(m), _) => Some((m, false)),
        (None, Some(x)) => Some((x, true)),
        (None, None) => None,
    };
    let lower = |s: &Value| match (num(s, "minimum"), num(s, "exclusiveMinimum")) {
        (Some(m), Some(x)) if x >= m => Some((x, true)),
        (Some(m), _) => Some((m, false)),
        (None, Some(x)) => Some((x, true)),
        (None, None) => None,
    };
    let show = |b: Option<(f64, bool)>, upper_bound: bool| match (b, upper_bound) {
        (None, _) => "any value".to_string(),
        (Some((v, true)), true) => format!("values below {v}"),
        (Some((v, false)), true) => format!("values up to {v}"),
        (Some((v, true)), false) => format!("values above {v}"),
        (Some((v, false)), false) => format!("values down to {v}"),
    };
    if let Some((c, c_excl)) = upper(consumer) {
        let ok =
            upper(producer).is_some_and(|(p, p_excl)| p < c || (p == c && (p_excl || !c_excl)));
        if !ok {
            problems.push(format!(
                "at {here} the producer may send {} but the consumer's {} is {c}",
                show(upper(producer), true),
                if c_excl {
                    "exclusiveMaximum"
                } else {
                    "maximum"
                }
            ));
        }
    }
    if let Some((c, c_excl)) = lower(consumer) {
        let ok =
            lower(producer).is_some_and(|(p, p_excl)| p > c || (p == c && (p_excl || !c_excl)));
        if !ok {
            problems.push(format!(
                "at {here} the producer may send {} but the consumer's {} is {c}",
                show(lower(producer), false),
                if c_excl {
                    "exclusiveMinimum"
                } else {
                    "minimum"
                }
            ));
        }
    }
    if let Some(c) = num(consumer, "multipleOf") {
        let ok = num(producer, "multipleOf").is_some_and(|p| (p / c).fract() == 0.0);
        if !ok {
            problems.push(format!(
                "at {here} the consumer accepts only multiples of {c}, which the producer does not promise"
            ));
        }
    }
    for (k, at_most) in [
        ("maxLength", true),
        ("maxItems", true),
        ("minLength", false),
        ("minItems", false),
    ] {
        let Some(c) = consumer.get(k).and_then(Value::as_u64) else {
            continue;
        };
        let p = producer.get(k).and_then(Value::as_u64);
        let ok = match (p, at_most) {
            (Some(p), true) => p <= c,
            (Some(p), false) => p >= c,
            (None, true) => false,
            (None, false) => c == 0,
        };
        if !ok {
            let sent = p.map_or("no bound".to_string(), |p| p.to_string());
            problems.push(format!(
                "at {here} the consumer's {k} is {c}; the producer's is {sent}"
            ));
        }
    }
    for k in ["const", "pattern", "format"] {
        let Some(c) = consumer.get(k) else {
            continue;
        };
        let promised = producer.get(k) == Some(c)
            || (k == "const"
                && producer
                    .get("enum")
                    .and_then(Value::as_array)
                    .is_some_and(|e| !e.is_empty() && e.iter().all(|v| v == c)));
        if !promised {
            problems.push(format!(
                "at {here} the consumer requires {k} {c}, which the producer does not promise"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(p: Value, c: Value) -> Vec<String> {
        let mut out = Vec::new();
        compare(&p, &c, "", &mut out);
        out
    }

    #[test]
    fn passive_changes_pass_and_breaking_ones_are_named() {
        let v1 = json!({"type": "object", "required": ["id", "qty"],
                        "properties": {"id": {"type": "string"}, "qty": {"type": "integer"}}});
        // A new optional field: passive.
        let v2 = json!({"type": "object", "required": ["id", "qty"],
                        "properties": {"id": {"type": "string"}, "qty": {"type": "integer"}, "note": {"type": "string"}}});
        assert!(problems(v2.clone(), v1.clone()).is_empty());
        // A removed required field, a retyped field: breaking.
        let removed =
            json!({"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}});
        assert!(problems(removed, v1.clone())[0].contains("requires /qty"));
        let retyped = json!({"type": "object", "required": ["id", "qty"],
                             "properties": {"id": {"type": "string"}, "qty": {"type": "string"}}});
        assert!(problems(retyped, v1.clone())[0].contains("at /qty the producer may send string"));
        // Integers are numbers; a closed consumer must know every field.
        let number = json!({"type": "object", "properties": {"qty": {"type": "number"}}});
        assert!(problems(v1.clone(), number).is_empty());
        let closed = json!({"type": "object", "additionalProperties": false, "properties": {"id": {}, "qty": {}}});
        assert!(problems(v2, closed)[0].contains("/note"));
        assert!(problems(json!({"enum": ["a", "b"]}), json!({"enum": ["a"]}))[0].contains("\"b\""));
    }

    #[test]
    fn bounds_the_consumer_sets_must_be_kept_by_the_producer() {
        let score = |s: Value| json!({"type": "object", "properties": {"score": s}});
        let p = |s: Value, c: Value| problems(score(s), score(c));
        let num = json!({"type": "number"});
        let e = p(num.clone(), json!({"type": "number", "maximum": 0.5}));
        assert!(
            e[0].contains(
                "at /score the producer may send any value but the consumer's maximum is 0.5"
            ),
            "{e:?}"
        );
        assert!(
            p(
                json!({"type": "number", "minimum": 0, "maximum": 0.5}),
                json!({"type": "number", "minimum": 0, "maximum": 1})
            )
            .is_empty()
        );
        assert!(
            p(
                json!({"type": "number", "exclusiveMaximum": 1}),
                json!({"type": "number", "maximum": 1})
            )
            .is_empty()
        );
        assert!(
            !p(
                json!({"type": "number", "maximum": 1}),
                json!({"type": "number", "exclusiveMaximum": 1})
            )
            .is_empty()
        );
        assert!(
            p(
                json!({"type": "number", "minimum": 0.2}),
                json!({"type": "number", "minimum": 0})
            )
            .is_empty()
        );
        assert!(
            p(
                json!({"type": "number", "minimum": -1}),
                json!({"type": "number", "minimum": 0})
            )[0]
            .contains("minimum is 0")
        );
        assert!(
            p(
                json!({"type": "string", "maxLength": 10}),
                json!({"type": "string", "maxLength": 5})
            )[0]
            .contains("maxLength is 5")
        );
        assert!(
            p(
                json!({"type": "string"}),
                json!({"type": "string", "minLength": 1})
            )[0]
            .contains("minLength")
        );
        assert!(
            p(
                json!({"type": "string", "pattern": "^a"}),
                json!({"type": "string", "pattern": "^a"})
            )
            .is_empty()
        );
        assert!(
            p(
                json!({"type": "string"}),
                json!({"type": "string", "format": "email"})
            )[0]
            .contains("format")
        );
        assert!(
            p(
                json!({"type": "integer", "multipleOf": 10}),
                json!({"type": "integer", "multipleOf": 5})
            )
            .is_empty()
        );
        assert!(p(json!({"enum": ["x"]}), json!({"const": "x"})).is_empty());
    }
}
