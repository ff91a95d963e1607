use serde_json::{Value, json};

use super::*;
use crate::contract::compile_schema;

fn bounded(schema: &Value) -> Result<Value, String> {
    check_text(serde_json::to_string(schema).unwrap().len())?;
    bound(schema)
}

/// `n` definitions, each a `$ref` to the next (a flat chain: what crashed
/// the host with a stack overflow at 1,000 levels).
fn ref_chain(n: usize) -> Value {
    let mut defs = serde_json::Map::new();
    for i in 0..n {
        let next = if i + 1 < n {
            json!({ "$ref": format!("#/$defs/d{}", i + 1) })
        } else {
            json!({ "type": "object" })
        };
        defs.insert(format!("d{i}"), next);
    }
    json!({ "$defs": defs, "$ref": "#/$defs/d0" })
}

#[test]
fn a_flat_ref_chain_is_refused_by_its_length() {
    for n in [1_000, 4_000] {
        let e = bounded(&ref_chain(n)).unwrap_err();
        assert!(e.contains("`$ref`s, the limit"), "{e}");
    }
    assert!(bounded(&ref_chain(20)).is_ok());
    // Under the count of `$ref`s, the path is what is too long.
    let e = bounded(&ref_chain(200)).unwrap_err();
    assert!(
        e.contains("path through its subschemas and `$ref`s is 201"),
        "{e}"
    );
}

#[test]
fn refs_that_go_round_without_consuming_data_are_refused() {
    let mutual = json!({
        "$defs": { "a": { "$ref": "#/$defs/b" }, "b": { "allOf": [{ "$ref": "#/$defs/a" }] } },
        "$ref": "#/$defs/a"
    });
    let e = bounded(&mutual).unwrap_err();
    assert!(e.contains("without consuming any of the data"), "{e}");
    assert!(e.contains("/$defs/a") && e.contains("/$defs/b"), "{e}");
    let itself = json!({ "not": { "$ref": "#" } });
    assert!(bounded(&itself).is_err());
    let anchored = json!({ "$defs": { "x": { "$anchor": "x", "anyOf": [{ "$ref": "#x" }] } } });
    assert!(bounded(&anchored).is_err());
}

#[test]
fn a_recursive_schema_that_descends_into_the_data_is_fine() {
    let tree = json!({
        "type": "object",
        "properties": {
            "name": { "type": "string" },
            "children": { "type": "array", "items": { "$ref": "#" } }
        }
    });
    let v = compile_schema(&tree).unwrap();
    let mut deep = json!({ "name": "leaf" });
    for _ in 0..60 {
        deep = json!({ "name": "n", "children": [deep] });
    }
    assert!(v.is_valid(&deep));
    let bad = json!({ "name": "n", "children": [{ "name": 1 }] });
    assert!(!v.is_valid(&bad));
}

#[test]
fn refs_may_only_point_inside_the_schema() {
    for r in [
        "https://example.com/s.json",
        "other.json#/a",
        "https://json-schema.org/draft/2020-12/schema",
    ] {
        let e = bounded(&json!({ "$ref": r })).unwrap_err();
        assert!(e.contains("points outside the schema"), "{r}: {e}");
    }
    let e = bounded(&json!({ "$ref": "#/$defs/none" })).unwrap_err();
    assert!(e.contains("points at nothing"), "{e}");
    let e = bounded(&json!({ "enum": [{}], "$ref": "#/enum/0" })).unwrap_err();
    assert!(e.contains("does not point at a subschema"), "{e}");
    // Under the root's own `$id`, and percent-encoded.
    let ok = json!({
        "$id": "urn:example:s",
        "$defs": { "a b": { "type": "string" } },
        "properties": { "x": { "$ref": "urn:example:s#/$defs/a%20b" }, "y": { "$ref": "#/$defs/a%20b" } }
    });
    let v = compile_schema(&ok).unwrap();
    assert!(v.is_valid(&json!({ "x": "s", "y": "t" })));
    assert!(!v.is_valid(&json!({ "y": 2 })));
    assert!(!v.is_valid(&json!({ "x": 1 })));
}

#[test]
fn sizes_are_bounded_with_what_was_too_large() {
    let mut props = serde_json::Map::new();
    for i in 0..(MAX_SUBSCHEMAS + 1) {
        props.insert(format!("p{i}"), json!({}));
    }
    let e = bound(&json!({ "properties": props })).unwrap_err();
    assert!(
        e.contains("subschemas, the limit is 4096") || e.contains("over 4096"),
        "{e}"
    );
    let e = check_text(MAX_SCHEMA_BYTES + 1).unwrap_err();
    assert!(e.contains("bytes long"), "{e}");
    let long = "a".repeat(MAX_PATTERN_CHARS + 1);
    let e = bounded(&json!({ "pattern": long })).unwrap_err();
    assert!(e.contains("`pattern` is 1025 characters long"), "{e}");
    let mut many = serde_json::Map::new();
    for i in 0..(MAX_PATTERNS + 1) {
        many.insert(format!("^p{i}$"), json!({}));
    }
    let e = bounded(&json!({ "patternProperties": many })).unwrap_err();
    assert!(e.contains("patterns, the limit is 128"), "{e}");
    let mut deep = json!({});
    for _ in 0..70 {
        deep = json!({ "not": deep });
    }
    let e = bounded(&deep).unwrap_err();
    assert!(e.contains("nested 71 levels deep"), "{e}");
}

#[test]
fn dynamic_refs_and_inner_ids_are_refused() {
    let e = bounded(&json!({ "items": { "$dynamicRef": "#meta" } })).unwrap_err();
    assert!(
        e.contains("`$dynamicRef` at /items is not supported"),
        "{e}"
    );
    let e = bounded(&json!({ "properties": { "a": { "$id": "urn:x" } } })).unwrap_err();
    assert!(e.contains("`$id` at /properties/a below the root"), "{e}");
}

#[test]
fn the_budget_keyword_goes_where_work_multiplies_and_never_in_values() {
    let s = json!({
        "properties": { "a": { "const": { "x": 1 } }, "b": true },
        "items": { "enum": [{}] },
        "prefixItems": [{ "type": "string" }],
        "additionalProperties": { "type": "string" },
        "patternProperties": { "^p": { "type": "integer" } },
        "dependencies": { "a": ["b"], "c": { "required": ["a"] } },
        "allOf": [{ "$ref": "#/$defs/d" }],
        "$defs": { "d": {}, "e": {} }
    });
    let b = bounded(&s).unwrap();
    let k = crate::contract::budget::KEYWORD;
    let counted = |p: &str| b.pointer(p).unwrap().get(k).is_some();
    for p in [
        "",
        "/items",
        "/additionalProperties",
        "/patternProperties/^p",
        "/$defs/d",
    ] {
        assert!(counted(p), "{p}");
    }
    for p in [
        "/properties/a",
        "/prefixItems/0",
        "/dependencies/c",
        "/allOf/0",
        "/$defs/e",
    ] {
        assert!(!counted(p), "{p}");
    }
    assert_eq!(b["properties"]["a"]["const"], json!({ "x": 1 }));
    assert_eq!(b["properties"]["b"], true);
    assert_eq!(b["items"]["enum"], json!([{}]));
    assert_eq!(b["dependencies"]["a"], json!(["b"]));
    assert!(b["properties"].get(k).is_none());
}

/// A check that runs out of its budget ends, whatever the shape of the
/// work: many elements, or recursion through a `$ref`.
#[test]
fn a_costly_check_runs_out_of_its_budget() {
    use crate::contract::budget::within;
    use std::time::{Duration, Instant};
    // Each zero fails the first 1,999 branches and passes the last.
    let mut branches: Vec<Value> = (1..2_000).map(|i| json!({ "minimum": i })).collect();
    branches.push(json!({ "type": "integer" }));
    let wide = compile_schema(&json!({ "type": "array", "items": { "anyOf": branches } })).unwrap();
    let data = Value::Array(vec![json!(0); 50_000]);
    let start = Instant::now();
    assert_eq!(
        within(Duration::from_millis(50), || wide.is_valid(&data)),
        None
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // The same schema on a little data is checked in full.
    let small = Value::Array(vec![json!(0); 3]);
    assert_eq!(
        within(Duration::from_millis(50), || wide.is_valid(&small)),
        Some(true)
    );
}

#[test]
fn backtracking_patterns_are_refused_or_run_in_linear_time() {
    // A look-around needs backtracking: the linear engine refuses it.
    let e = compile_schema(&json!({ "pattern": "^(?=a)a$" })).unwrap_err();
    assert!(e.contains(r#"is not a "regex""#), "{e}");
    // The classic catastrophic pattern runs in linear time.
    let v = compile_schema(&json!({ "not": { "pattern": "^(a+)+$" } })).unwrap();
    let input = Value::String(format!("{}!", "a".repeat(100_000)));
    let start = std::time::Instant::now();
    assert!(v.is_valid(&input));
    assert!(start.elapsed() < std::time::Duration::from_secs(2));
}

/// The stack size of the threads that check contracts (steps' workers,
/// the API's blocking pool): the worst schema the bounds allow, on the
/// deepest data the parser allows, must fit in it.
#[test]
fn the_worst_bounded_schema_fits_a_checking_threads_stack() {
    std::thread::Builder::new()
        .stack_size(crate::contract::CHECK_STACK)
        .spawn(|| {
            // A chain as long as allowed (two subschemas a link), then a
            // recursion through the data back to its start: one recursive
            // part of 127 subschemas, each level of the data through all.
            let mut defs = serde_json::Map::new();
            let n = MAX_CHAIN / 2 - 1;
            for i in 0..n {
                let next = if i + 1 < n {
                    json!({ "allOf": [{ "$ref": format!("#/$defs/d{}", i + 1) }] })
                } else {
                    json!({ "items": { "$ref": "#" }, "type": ["array", "string"] })
                };
                defs.insert(format!("d{i}"), next);
            }
            let schema = json!({ "$defs": defs, "$ref": "#/$defs/d0" });
            let v = compile_schema(&schema).unwrap();
            let mut text = String::new();
            for _ in 0..127 {
                text.push('[');
            }
            text.push_str("\"x\"");
            for _ in 0..127 {
                text.push(']');
            }
            let deep: Value = serde_json::from_str(&text).unwrap();
            assert!(v.is_valid(&deep));
            let bad = json!([[1]]);
            assert!(v.iter_errors(&bad).next().is_some());
        })
        .unwrap()
        .join()
        .unwrap();
}
