//! Paths into what a run holds: `ID.field.field`, where `ID` is a flow
//! step (its output) or `input` (the run's input). `until` and `for_each`
//! read a value through one; `when` conditions look through one too.
//! A path is checked against the schema of what it looks into when the
//! flow is loaded, and followed at run time.

use serde_json::Value;

/// `ID` or `ID.a.b`: a value in the output of flow step `ID` (or in the
/// run's input).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldPath {
    pub step: String,
    pub path: Vec<String>,
    /// As written.
    pub text: String,
}

impl FieldPath {
    /// Parse `ID` or `ID.a.b`.
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        let t = text.trim();
        let mut parts = t.split('.');
        let step = parts
            .next()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("{text:?}: expected ID or ID.field"))?
            .to_string();
        let path: Vec<String> = parts.map(str::to_string).collect();
        if path.iter().any(String::is_empty) || t.contains(char::is_whitespace) {
            return Err(format!("{text:?}: expected ID or ID.field (no spaces)"));
        }
        Ok(FieldPath {
            step,
            path,
            text: t.to_string(),
        })
    }

    /// The value at the path in `data` (the output of `self.step`).
    pub fn get<'a>(&self, data: &'a Value) -> Option<&'a Value> {
        self.path.iter().try_fold(data, |v, p| v.get(p))
    }

    /// The schema of the value at the path in `schema` (the schema of the
    /// output it looks into); `None` where the schema leaves it open (no
    /// `properties`, or `allOf`/`anyOf`/`oneOf`). `Err` names a field the
    /// schema does not declare.
    pub fn schema_in<'a>(&self, schema: &'a Value) -> Result<Option<&'a Value>, String> {
        let mut cur = resolve(schema, schema);
        for (i, seg) in self.path.iter().enumerate() {
            if ["allOf", "anyOf", "oneOf"]
                .iter()
                .any(|k| cur.get(k).is_some())
            {
                return Ok(None);
            }
            let Some(props) = cur.get("properties").and_then(Value::as_object) else {
                return Ok(None);
            };
            match props.get(seg) {
                Some(sub) => cur = resolve(schema, sub),
                None => {
                    let mut known: Vec<&str> = props.keys().map(String::as_str).collect();
                    known.sort();
                    let at = if i == 0 && self.step == super::INPUT {
                        "the run's input".to_string()
                    } else if i == 0 {
                        format!("the output of `{}`", self.step)
                    } else {
                        format!("`{}.{}`", self.step, self.path[..i].join("."))
                    };
                    return Err(format!(
                        "{at} has no field `{seg}` (its schema declares: {})",
                        known.join(", ")
                    ));
                }
            }
        }
        Ok(Some(cur))
    }
}

/// The JSON Schema types `schema` allows (empty: any).
pub(super) fn types_of(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Follow a local `$ref` (`#/...`) of `root`, a few levels deep.
pub(super) fn resolve<'a>(root: &'a Value, mut s: &'a Value) -> &'a Value {
    for _ in 0..16 {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) if r.starts_with('#') => match root.pointer(&r[1..]) {
                Some(target) => s = target,
                None => return s,
            },
            _ => return s,
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::FieldPath;

    #[test]
    fn a_path_names_a_step_and_the_fields_below_it() {
        let p = FieldPath::parse("input.order.lines").unwrap();
        assert_eq!(p.step, "input");
        assert_eq!(p.path, ["order", "lines"]);
        assert_eq!(
            p.get(&json!({"order": {"lines": [1, 2]}})),
            Some(&json!([1, 2]))
        );
        assert_eq!(p.get(&json!({"order": {}})), None);
        let whole = FieldPath::parse("fetch").unwrap();
        assert!(whole.path.is_empty());
        assert_eq!(whole.get(&json!([1])), Some(&json!([1])));
        for bad in ["", ".x", "a..b", "a.", "a. b"] {
            assert!(FieldPath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_path_is_checked_against_the_schema_it_looks_into() {
        let schema = json!({
            "type": "object",
            "properties": {
                "lines": {"$ref": "#/$defs/lines"},
                "open": {}
            },
            "$defs": {"lines": {"type": "array", "items": {"type": "object"}}}
        });
        let at = |t: &str| {
            FieldPath::parse(t)
                .unwrap()
                .schema_in(&schema)
                .map(|s| s.cloned())
        };
        assert_eq!(at("o.lines").unwrap().unwrap()["type"], "array");
        assert_eq!(at("o.open.deeper").unwrap(), None);
        let e = at("o.liens").unwrap_err();
        assert!(
            e.contains("no field `liens`") && e.contains("lines, open"),
            "{e}"
        );
    }
}
