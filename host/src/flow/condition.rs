//! `when` conditions: `ID.path.to.field OP JSON`, parsed, checked against
//! the schema of the output they look into (so a misspelt field or a
//! comparison that can never hold is an error when the flow is loaded, not
//! a step silently skipped at run time), and evaluated.

use serde_json::Value;

use super::path::{FieldPath, types_of};

/// A comparison in a `when` condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

/// `when = "ID.path.to.field OP JSON"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub step: String,
    pub path: Vec<String>,
    pub op: Op,
    pub value: Value,
    pub text: String,
}

impl Condition {
    /// Check the condition against `schema`, the JSON Schema of the output
    /// it looks into: each field of its path must be one the schema
    /// declares (where it declares `properties`), and the value must be one
    /// the field can hold (its `type`, its `enum`); `>`, `>=`, `<`, `<=`
    /// compare numbers. What the schema leaves open (no `properties`,
    /// `allOf`/`anyOf`/`oneOf`) is not checked.
    pub fn check(&self, schema: &Value) -> Result<(), String> {
        let field = format!("{}.{}", self.step, self.path.join("."));
        let ordering = !matches!(self.op, Op::Eq | Op::Ne);
        if ordering && !self.value.is_number() {
            return Err(format!(
                "`{}` compares numbers, and {} is not one",
                self.text.trim(),
                self.value
            ));
        }
        let at = FieldPath {
            step: self.step.clone(),
            path: self.path.clone(),
            text: field.clone(),
        };
        let Some(cur) = at.schema_in(schema)? else {
            return Ok(());
        };
        let types = types_of(cur);
        if ordering {
            if !types.is_empty() && !types.iter().any(|t| matches!(*t, "number" | "integer")) {
                return Err(format!(
                    "`{field}` is {}, not a number: `{}` can never hold",
                    types.join(" or "),
                    self.text.trim()
                ));
            }
            return Ok(());
        }
        // `==` to a value the field never takes is never true; `!=`,
        // always.
        let verdict = if self.op == Op::Eq {
            "never true"
        } else {
            "always true"
        };
        if !types.is_empty() && !types.iter().any(|t| is_a(&self.value, t)) {
            return Err(format!(
                "`{field}` is {}, and {} is not: `{}` is {verdict}",
                types.join(" or "),
                self.value,
                self.text.trim(),
            ));
        }
        if let Some(Value::Array(allowed)) = cur.get("enum")
            && !allowed.contains(&self.value)
        {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            return Err(format!(
                "`{field}` is one of {}, never {}: `{}` is {verdict}",
                list.join(", "),
                self.value,
                self.text.trim(),
            ));
        }
        Ok(())
    }

    /// What the condition saw in `data` (the output of `self.step`): the
    /// field's value, or that it is missing. For a skipped step's record.
    pub fn explain(&self, data: &Value) -> String {
        let field = format!("{}.{}", self.step, self.path.join("."));
        let mut v = data;
        for p in &self.path {
            match v.get(p) {
                Some(x) => v = x,
                None => return format!("`{}` is false: `{field}` is missing", self.text.trim()),
            }
        }
        let mut shown = v.to_string();
        if shown.len() > 200 {
            let cut = (0..=200)
                .rev()
                .find(|&i| shown.is_char_boundary(i))
                .unwrap_or(0);
            shown.truncate(cut);
            shown.push_str("...");
        }
        format!("`{}` is false: `{field}` is {shown}", self.text.trim())
    }

    /// Whether the condition holds for the output `data` of `self.step`.
    pub fn holds(&self, data: &Value) -> bool {
        let mut v = data;
        for p in &self.path {
            match v.get(p) {
                Some(x) => v = x,
                None => return false,
            }
        }
        match (&self.op, v.as_f64(), self.value.as_f64()) {
            (Op::Eq, _, _) => v == &self.value,
            (Op::Ne, _, _) => v != &self.value,
            (Op::Gt, Some(a), Some(b)) => a > b,
            (Op::Ge, Some(a), Some(b)) => a >= b,
            (Op::Lt, Some(a), Some(b)) => a < b,
            (Op::Le, Some(a), Some(b)) => a <= b,
            _ => false,
        }
    }
}

/// Whether `v` is of JSON Schema type `t`.
fn is_a(v: &Value, t: &str) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => true,
    }
}

pub(super) fn parse_condition(text: &str) -> Result<Condition, String> {
    let ops = [
        (">=", Op::Ge),
        ("<=", Op::Le),
        ("==", Op::Eq),
        ("!=", Op::Ne),
        (">", Op::Gt),
        ("<", Op::Lt),
    ];
    let (at, sym, op) = ops
        .iter()
        .filter_map(|(sym, op)| text.find(sym).map(|i| (i, *sym, op.clone())))
        .min_by_key(|(i, sym, _)| (*i, usize::MAX - sym.len()))
        .ok_or("expected `ID.field OP value`, with OP one of == != > >= < <=")?;
    let (lhs, rhs) = (text[..at].trim(), text[at + sym.len()..].trim());
    let value: Value = serde_json::from_str(rhs)
        .map_err(|_| format!("{rhs:?} is not a JSON value (quote strings)"))?;
    let mut parts = lhs.split('.');
    let step = parts
        .next()
        .filter(|s| !s.is_empty())
        .ok_or("no step before the field")?
        .to_string();
    let path: Vec<String> = parts.map(str::to_string).collect();
    if path.is_empty() || path.iter().any(String::is_empty) {
        return Err(format!("{lhs:?}: expected ID.field"));
    }
    Ok(Condition {
        step,
        path,
        op,
        value,
        text: text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_compare_numbers_and_values() {
        let c = parse_condition("validate.total_cents >= 1000").unwrap();
        assert_eq!(
            (c.step.as_str(), c.path.clone(), c.op.clone()),
            ("validate", vec!["total_cents".to_string()], Op::Ge)
        );
        assert!(c.holds(&json!({"total_cents": 1000})));
        assert!(!c.holds(&json!({"total_cents": 999})));
        assert!(!c.holds(&json!({})));
        let c = parse_condition("a.x.y == \"eu\"").unwrap();
        assert!(c.holds(&json!({"x": {"y": "eu"}})));
        assert!(parse_condition("a.x = 3").is_err());
        assert!(parse_condition("a.x == eu").is_err());
    }

    #[test]
    fn conditions_are_checked_against_the_outputs_schema() {
        let schema = json!({
            "type": "object",
            "properties": {
                "verdict": {"$ref": "#/$defs/verdict"},
                "score": {"type": "number"},
                "meta": {"type": "object", "properties": {"region": {"type": "string"}}},
                "open": {}
            },
            "$defs": {"verdict": {"type": "string", "enum": ["approve", "reject"]}}
        });
        let check = |t: &str| parse_condition(t).unwrap().check(&schema);
        for ok in [
            "fraud.verdict == \"approve\"",
            "fraud.verdict != \"reject\"",
            "fraud.score >= 0.5",
            "fraud.meta.region == \"eu\"",
            "fraud.open == 3",
            "fraud.open.anything == 3",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        let e = check("fraud.verdikt == \"approve\"").unwrap_err();
        assert!(
            e.contains("has no field `verdikt`") && e.contains("score, verdict"),
            "{e}"
        );
        let e = check("fraud.meta.regoin == \"eu\"").unwrap_err();
        assert!(e.contains("`fraud.meta` has no field `regoin`"), "{e}");
        let e = check("fraud.score == \"approve\"").unwrap_err();
        assert!(
            e.contains("`fraud.score` is number") && e.contains("never true"),
            "{e}"
        );
        let e = check("fraud.verdict == \"approved\"").unwrap_err();
        assert!(e.contains("one of \"approve\", \"reject\""), "{e}");
        let e = check("fraud.verdict > 1").unwrap_err();
        assert!(e.contains("not a number"), "{e}");
        let e = check("fraud.score > \"high\"").unwrap_err();
        assert!(e.contains("compares numbers"), "{e}");
        let c = parse_condition("fraud.verdict == \"approve\"").unwrap();
        assert_eq!(
            c.explain(&json!({"verdict": "reject"})),
            "`fraud.verdict == \"approve\"` is false: `fraud.verdict` is \"reject\""
        );
        assert!(c.explain(&json!({})).ends_with("is missing"));
    }
}
