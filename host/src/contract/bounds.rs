//! A contract's schemas are the guest's input: bounded before the host
//! compiles them.
//!
//! `describe` is written by whoever wrote the step, and the host compiles
//! what it returns and runs it on every message, at the API's door too. So
//! before a schema reaches the validator it is measured here, and refused
//! with what was too large unless it fits within:
//!
//! - [`MAX_SCHEMA_BYTES`] of text per event type, [`MAX_SUBSCHEMAS`]
//!   subschemas, [`MAX_REFS`] `$ref`s, [`MAX_PATTERNS`] patterns of at most
//!   [`MAX_PATTERN_CHARS`] characters each;
//! - [`MAX_DEPTH`] levels of JSON nesting, and [`MAX_CHAIN`] subschemas on
//!   any path through the schema and its `$ref`s (what the validator
//!   recurses through when it compiles and checks);
//! - `$ref`s that point inside the schema (`#`, `#/json/pointer`, or
//!   `#anchor`), none that leads back to where it started without
//!   consuming any of the data (`{"$defs": {"a": {"$ref": "#/$defs/b"},
//!   "b": {"$ref": "#/$defs/a"}}}` would check the same value for ever),
//!   and no `$dynamicRef`/`$recursiveRef` or `$id` below the root (which
//!   would make the pointers mean something else).
//!
//! A recursive schema that descends into the data on the way round (a tree
//! whose `children` items are `{"$ref": "#"}`) is fine: each turn consumes a
//! level of the data, and the data's own depth is bounded by its parser.
//!
//! The walk also returns the schema with the budget keyword
//! ([`super::budget::KEYWORD`]) wherever a check's work can multiply: the
//! root, every subschema applied to each element or property of the data
//! ([`PER_ELEMENT`]), and every `$ref`'s target (what recursion goes
//! through). Between two counts a check applies at most the schema's own
//! subschemas, so counting there bounds its work; counting in every
//! subschema cost 20% more time on a small order for no better bound.

use std::collections::HashMap;

use serde_json::Value;

mod scc;

use scc::components;

/// The largest schema text of one event type.
pub const MAX_SCHEMA_BYTES: usize = 128 * 1024;
/// The largest schema text of a whole contract, all its types together.
pub const MAX_CONTRACT_BYTES: usize = 1 << 20;
/// The most subschemas (objects and booleans in schema positions).
pub const MAX_SUBSCHEMAS: usize = 4096;
/// The most `$ref`s in one schema.
pub const MAX_REFS: usize = 512;
/// The most `pattern`s and `patternProperties` in one schema.
pub const MAX_PATTERNS: usize = 128;
/// The longest pattern.
pub const MAX_PATTERN_CHARS: usize = 1024;
/// The deepest JSON nesting of a schema.
pub const MAX_DEPTH: usize = 64;
/// The most subschemas on one path through the schema and its `$ref`s
/// (a recursive part counts with all its subschemas).
pub const MAX_CHAIN: usize = 128;

/// Keywords whose value is a subschema applied to the same value.
const IN_PLACE_ONE: &[&str] = &["not", "if", "then", "else"];
/// ... a list of them.
const IN_PLACE_LIST: &[&str] = &["allOf", "anyOf", "oneOf"];
/// ... a map of them.
const IN_PLACE_MAP: &[&str] = &["dependentSchemas", "dependencies"];
/// Keywords whose value is a subschema applied to a part of the value.
const DESCEND_ONE: &[&str] = &[
    "additionalProperties",
    "additionalItems",
    "contains",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
    "contentSchema",
    "items",
];
const DESCEND_LIST: &[&str] = &["prefixItems", "items"];
const DESCEND_MAP: &[&str] = &["properties", "patternProperties"];
/// Keywords whose subschemas apply once for each element or property of
/// the data: where the budget keyword goes.
const PER_ELEMENT: &[&str] = &[
    "items",
    "additionalItems",
    "contains",
    "unevaluatedItems",
    "additionalProperties",
    "patternProperties",
    "propertyNames",
    "unevaluatedProperties",
];
/// Keywords holding subschemas that apply only through a `$ref`.
const DEFINITIONS: &[&str] = &["$defs", "definitions"];

#[derive(Clone, Copy, PartialEq)]
enum Edge {
    /// Applied to the same value: a cycle of these never ends.
    InPlace,
    /// Applied to a part of the value.
    Descend,
}

struct Node {
    /// `(to, kind)`; `to` is an index into `Walk::nodes`.
    edges: Vec<(usize, Edge)>,
    /// The `$ref` this subschema holds, and its JSON pointer (for errors).
    reference: Option<String>,
    pointer: String,
    /// Whether the budget keyword goes in it.
    counted: bool,
}

#[derive(Default)]
struct Walk {
    nodes: Vec<Node>,
    by_pointer: HashMap<String, usize>,
    anchors: HashMap<String, usize>,
    patterns: usize,
}

/// Whether a schema's text of `bytes` is within [`MAX_SCHEMA_BYTES`]:
/// asked before the text is parsed.
pub fn check_text(bytes: usize) -> Result<(), String> {
    if bytes > MAX_SCHEMA_BYTES {
        return Err(format!(
            "it is {bytes} bytes long, the limit is {MAX_SCHEMA_BYTES}"
        ));
    }
    Ok(())
}

/// Measure `schema` (its text already within [`check_text`]): `Ok` with
/// the schema to compile (the budget keyword where work multiplies), or
/// what makes it too large or unsound.
pub fn bound(schema: &Value) -> Result<Value, String> {
    let depth = json_depth(schema);
    if depth > MAX_DEPTH {
        return Err(format!(
            "it is nested {depth} levels deep, the limit is {MAX_DEPTH}"
        ));
    }
    let mut walk = Walk::default();
    walk.schema(schema, String::new(), true, true)?;
    if walk.nodes.len() > MAX_SUBSCHEMAS {
        return Err(format!(
            "it has {} subschemas, the limit is {MAX_SUBSCHEMAS}",
            walk.nodes.len()
        ));
    }
    if walk.patterns > MAX_PATTERNS {
        return Err(format!(
            "it has {} patterns, the limit is {MAX_PATTERNS}",
            walk.patterns
        ));
    }
    walk.link_refs(schema)?;
    walk.refuse_in_place_cycles()?;
    walk.check_chain()?;
    let mut out = schema.clone();
    for n in walk.nodes.iter().filter(|n| n.counted) {
        if let Some(Value::Object(o)) = out.pointer_mut(&n.pointer) {
            o.insert(super::budget::KEYWORD.into(), Value::Bool(true));
        }
    }
    Ok(out)
}

/// The depth of a JSON value's nesting, without recursion.
fn json_depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        deepest = deepest.max(d);
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    deepest
}

/// A JSON pointer's escaping of one reference token (RFC 6901).
fn token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

impl Walk {
    /// Register the subschema `v` at `pointer` and everything under it;
    /// returns its index. Recursion is bounded by [`MAX_DEPTH`], checked
    /// before.
    fn schema(
        &mut self,
        v: &Value,
        pointer: String,
        root: bool,
        counted: bool,
    ) -> Result<usize, String> {
        let me = self.nodes.len();
        self.by_pointer.insert(pointer.clone(), me);
        self.nodes.push(Node {
            edges: Vec::new(),
            reference: None,
            pointer: pointer.clone(),
            counted,
        });
        if self.nodes.len() > MAX_SUBSCHEMAS {
            return Err(format!(
                "it has over {MAX_SUBSCHEMAS} subschemas, the limit"
            ));
        }
        let Value::Object(o) = v else {
            return Ok(me);
        };
        let at = |what: &str| {
            if pointer.is_empty() {
                what.to_string()
            } else {
                format!("{what} at {pointer}")
            }
        };
        for k in ["$dynamicRef", "$recursiveRef"] {
            if o.contains_key(k) {
                return Err(format!(
                    "{} is not supported in a step's contract; use `$ref`",
                    at(&format!("`{k}`"))
                ));
            }
        }
        if !root && (o.contains_key("$id") || o.get("id").is_some_and(Value::is_string)) {
            return Err(format!(
                "{} below the root is not supported in a step's contract (it would change \
                 what the `$ref`s under it point at)",
                at("`$id`")
            ));
        }
        match o.get("$ref") {
            None => {}
            Some(Value::String(r)) => self.nodes[me].reference = Some(r.clone()),
            Some(_) => return Err(format!("{} is not a string", at("`$ref`"))),
        }
        for k in ["$anchor", "$dynamicAnchor"] {
            if let Some(Value::String(a)) = o.get(k) {
                self.anchors.insert(a.clone(), me);
            }
        }
        if let Some(Value::String(p)) = o.get("pattern") {
            self.pattern(p, &at("`pattern`"))?;
        }
        if let Some(Value::Object(pp)) = o.get("patternProperties") {
            for p in pp.keys() {
                self.pattern(p, &at("a `patternProperties` key"))?;
            }
        }
        let mut children: Vec<(usize, Edge)> = Vec::new();
        for (k, child) in o {
            let here = format!("{pointer}/{}", token(k));
            let edge = if IN_PLACE_ONE.contains(&k.as_str())
                || IN_PLACE_LIST.contains(&k.as_str())
                || IN_PLACE_MAP.contains(&k.as_str())
            {
                Some(Edge::InPlace)
            } else if DESCEND_ONE.contains(&k.as_str())
                || DESCEND_LIST.contains(&k.as_str())
                || DESCEND_MAP.contains(&k.as_str())
            {
                Some(Edge::Descend)
            } else if DEFINITIONS.contains(&k.as_str()) {
                None
            } else {
                continue;
            };
            let map = IN_PLACE_MAP.contains(&k.as_str())
                || DESCEND_MAP.contains(&k.as_str())
                || DEFINITIONS.contains(&k.as_str());
            let subs: Vec<(String, &Value)> = match child {
                Value::Object(m) if map => m
                    .iter()
                    // `dependencies` also holds lists of names: not schemas.
                    .filter(|(_, s)| s.is_object() || s.is_boolean())
                    .map(|(n, s)| (format!("{here}/{}", token(n)), s))
                    .collect(),
                Value::Array(a) if !map => a
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (format!("{here}/{i}"), s))
                    .collect(),
                s @ (Value::Object(_) | Value::Bool(_)) if !map => vec![(here, s)],
                _ => Vec::new(),
            };
            // `items` as a list (drafts before 2020-12) is one subschema
            // per position, not per element.
            let per_element = PER_ELEMENT.contains(&k.as_str()) && !child.is_array();
            for (p, s) in subs {
                let child = self.schema(s, p, false, per_element)?;
                if let Some(e) = edge {
                    children.push((child, e));
                }
            }
        }
        self.nodes[me].edges.extend(children);
        Ok(me)
    }

    fn pattern(&mut self, p: &str, what: &str) -> Result<(), String> {
        self.patterns += 1;
        let chars = p.chars().count();
        if chars > MAX_PATTERN_CHARS {
            return Err(format!(
                "{what} is {chars} characters long, the limit is {MAX_PATTERN_CHARS}"
            ));
        }
        Ok(())
    }

    /// Add each `$ref`'s edge to the subschema it points at.
    fn link_refs(&mut self, schema: &Value) -> Result<(), String> {
        let root_id = schema
            .get("$id")
            .or_else(|| schema.get("id"))
            .and_then(Value::as_str)
            .map(|s| s.trim_end_matches('#').to_string());
        let mut refs = 0;
        for i in 0..self.nodes.len() {
            let Some(r) = self.nodes[i].reference.clone() else {
                continue;
            };
            refs += 1;
            if refs > MAX_REFS {
                return Err(format!("it has over {MAX_REFS} `$ref`s, the limit"));
            }
            let at = &self.nodes[i].pointer;
            let fragment = match (r.split_once('#'), &root_id) {
                (Some(("", f)), _) => f,
                (Some((base, f)), Some(id)) if base == id => f,
                (None, Some(id)) if r == *id => "",
                _ => {
                    return Err(format!(
                        "the `$ref` {r:?} at {at} points outside the schema; a step's contract \
                         may only refer inside itself (`#/$defs/name`)"
                    ));
                }
            };
            let decoded = percent_encoding::percent_decode_str(fragment)
                .decode_utf8()
                .map_err(|_| format!("the `$ref` {r:?} at {at} is not UTF-8"))?;
            let target = if decoded.is_empty() || decoded.starts_with('/') {
                self.by_pointer.get(&*decoded).copied()
            } else {
                self.anchors.get(&*decoded).copied()
            };
            let Some(target) = target else {
                let pointee = pointee(schema, &decoded);
                return Err(format!(
                    "the `$ref` {r:?} at {at} {}",
                    if pointee {
                        "does not point at a subschema"
                    } else {
                        "points at nothing"
                    }
                ));
            };
            self.nodes[i].edges.push((target, Edge::InPlace));
            self.nodes[target].counted = true;
        }
        Ok(())
    }

    /// Refuse a cycle of in-place edges: it checks the same value for ever.
    fn refuse_in_place_cycles(&self) -> Result<(), String> {
        // 0: unseen, 1: on the current path, 2: done.
        let mut state = vec![0u8; self.nodes.len()];
        for start in 0..self.nodes.len() {
            if state[start] != 0 {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            state[start] = 1;
            while let Some(&mut (n, ref mut next)) = stack.last_mut() {
                let edges = &self.nodes[n].edges;
                let Some(&(to, kind)) = edges.get(*next) else {
                    state[n] = 2;
                    stack.pop();
                    continue;
                };
                *next += 1;
                if kind != Edge::InPlace {
                    continue;
                }
                match state[to] {
                    0 => {
                        state[to] = 1;
                        stack.push((to, 0));
                    }
                    1 => {
                        let from = stack.iter().position(|&(m, _)| m == to).unwrap_or(0);
                        let path: Vec<&str> = stack[from..]
                            .iter()
                            .map(|&(m, _)| pointer_or_root(&self.nodes[m].pointer))
                            .collect();
                        return Err(format!(
                            "its `$ref`s go round without consuming any of the data, which \
                             would check the same value for ever: {} -> {}",
                            path.join(" -> "),
                            pointer_or_root(&self.nodes[to].pointer)
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The longest path through the subschemas and `$ref`s, each recursive
    /// part (a strongly connected component) counted with all its members.
    fn check_chain(&self) -> Result<(), String> {
        let (component, count) = components(&self.nodes);
        let mut size = vec![0usize; count];
        for &c in &component {
            size[c] += 1;
        }
        let mut succ: Vec<Vec<usize>> = vec![Vec::new(); count];
        for (n, node) in self.nodes.iter().enumerate() {
            for &(to, _) in &node.edges {
                if component[n] != component[to] {
                    succ[component[n]].push(component[to]);
                }
            }
        }
        // Tarjan numbers components in reverse topological order: every
        // edge goes to a lower number, so the longest path from each is
        // known once those below it are.
        let mut longest = vec![0usize; count];
        for c in 0..count {
            let below = succ[c].iter().map(|&d| longest[d]).max().unwrap_or(0);
            longest[c] = size[c] + below;
        }
        let deepest = longest.iter().copied().max().unwrap_or(0);
        if deepest > MAX_CHAIN {
            return Err(format!(
                "a path through its subschemas and `$ref`s is {deepest} subschemas long, the \
                 limit is {MAX_CHAIN}"
            ));
        }
        Ok(())
    }
}

fn pointer_or_root(p: &str) -> &str {
    if p.is_empty() { "#" } else { p }
}

/// Whether `pointer` (decoded) names anything in `schema`.
fn pointee(schema: &Value, pointer: &str) -> bool {
    pointer.starts_with('/') && schema.pointer(pointer).is_some()
}

#[cfg(test)]
mod tests;
