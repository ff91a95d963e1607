//! Sample data from a JSON Schema: the smallest instance that satisfies the
//! common keywords (`type`, `properties`, `required`, `items`, `minItems`,
//! `enum`, `const`, `minimum`/`maximum`, `minLength`, `format`, `oneOf`,
//! `anyOf`, `allOf`). The caller checks the result against the compiled
//! schema: a schema this generator cannot satisfy is reported, not guessed.

use serde_json::{Map, Value, json};

/// A sample instance of `schema`.
pub fn sample(schema: &Value) -> Value {
    let Value::Object(s) = schema else {
        // `true` or a non-object schema accepts anything.
        return json!({});
    };
    if let Some(v) = s.get("const") {
        return v.clone();
    }
    if let Some(Value::Array(options)) = s.get("enum")
        && let Some(v) = options.first()
    {
        return v.clone();
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(options)) = s.get(key)
            && let Some(first) = options.first()
        {
            return sample(first);
        }
    }
    if let Some(Value::Array(all)) = s.get("allOf") {
        let mut merged = Map::new();
        for part in all {
            if let Value::Object(o) = sample(part) {
                merged.extend(o);
            }
        }
        return Value::Object(merged);
    }
    let ty = match s.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if s.contains_key("properties") => "object",
        _ if s.contains_key("items") => "array",
        _ => "object",
    };
    match ty {
        "object" => {
            let mut out = Map::new();
            if let Some(Value::Object(props)) = s.get("properties") {
                for (k, v) in props {
                    out.insert(k.clone(), sample(v));
                }
            }
            Value::Object(out)
        }
        "array" => {
            let n = s
                .get("minItems")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .max(1);
            let item = s.get("items").map_or(json!("item"), sample);
            Value::Array(vec![item; n as usize])
        }
        "string" => {
            let format = s.get("format").and_then(Value::as_str).unwrap_or("");
            let base = match format {
                "date-time" => "2026-01-01T00:00:00Z",
                "date" => "2026-01-01",
                "email" => "someone@example.com",
                "uuid" => "00000000-0000-4000-8000-000000000000",
                "uri" => "https://example.com/",
                _ => "sample",
            };
            let min = s.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
            let mut text = base.to_string();
            while text.chars().count() < min {
                text.push('x');
            }
            Value::String(text)
        }
        "integer" | "number" => {
            let min = s.get("minimum").and_then(Value::as_f64);
            let xmin = s
                .get("exclusiveMinimum")
                .and_then(Value::as_f64)
                .map(|m| m + 1.0);
            let max = s.get("maximum").and_then(Value::as_f64);
            let mut n = min.or(xmin).unwrap_or(1.0).max(xmin.unwrap_or(f64::MIN));
            if let Some(max) = max {
                n = n.min(max);
            }
            if ty == "integer" {
                json!(n.ceil() as i64)
            } else {
                json!(n)
            }
        }
        "boolean" => json!(true),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_satisfy_their_schemas() {
        let schemas = [
            json!({"type": "object", "required": ["a", "b"], "properties": {
                "a": {"type": "string", "minLength": 12},
                "b": {"type": "array", "minItems": 2, "items": {"type": "integer", "minimum": 5}},
                "c": {"enum": ["x", "y"]},
                "d": {"type": ["null", "number"], "exclusiveMinimum": 0},
                "e": {"type": "string", "format": "date-time"}
            }}),
            json!({"allOf": [{"properties": {"x": {"const": 1}}}, {"properties": {"y": {"type": "boolean"}}}]}),
            json!({"oneOf": [{"type": "integer", "maximum": -3}, {"type": "string"}]}),
            json!(true),
        ];
        for schema in schemas {
            let v = crate::contract::compile_schema(&schema).unwrap();
            let s = sample(&schema);
            assert!(v.is_valid(&s), "{s} does not satisfy {schema}");
        }
    }
}
