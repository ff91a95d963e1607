//! Compiling a contract: its event types' names and versions checked, each
//! schema bounded ([`super::bounds`]) and compiled with the engine and the
//! limits every check runs under (linear-time patterns, the budget
//! keyword).

use std::sync::Arc;

use serde_json::Value;

use super::{ContractError, DataFormat, EventType, RESERVED_PREFIX, bounds, budget, is_kind};
use crate::event::schema_urn;
use crate::text;
use crate::world;

pub(super) fn compile_list(
    list: Vec<world::EventContract>,
    name: &'static str,
) -> Result<Vec<Arc<EventType>>, ContractError> {
    let mut out: Vec<Arc<EventType>> = Vec::with_capacity(list.len());
    for c in list {
        if !is_kind(&c.kind) {
            return Err(ContractError::Kind(text::clean(&c.kind, 200)));
        }
        if c.kind.starts_with(RESERVED_PREFIX) {
            return Err(ContractError::Reserved {
                kind: c.kind,
                list: name,
            });
        }
        if out.iter().any(|t| t.kind == c.kind) {
            return Err(ContractError::Duplicate {
                kind: c.kind,
                list: name,
            });
        }
        check_semver(&format!("event type {:?}", c.kind), &c.version)?;
        // Refused before it is parsed: the text is the guest's.
        bounds::check_text(c.schema.len()).map_err(|error| ContractError::Bounds {
            kind: c.kind.clone(),
            error,
        })?;
        let schema: Value =
            serde_json::from_str(&c.schema).map_err(|e| ContractError::SchemaJson {
                kind: c.kind.clone(),
                error: e.to_string(),
            })?;
        let bounded = bounds::bound(&schema).map_err(|error| ContractError::Bounds {
            kind: c.kind.clone(),
            error,
        })?;
        let validator = compile_bounded(&bounded).map_err(|error| ContractError::Schema {
            kind: c.kind.clone(),
            error,
        })?;
        let format = DataFormat::of(&schema).map_err(|error| ContractError::MediaType {
            kind: c.kind.clone(),
            error,
        })?;
        out.push(Arc::new(EventType {
            format,
            urn: schema_urn(&c.kind, &c.version),
            kind: c.kind,
            version: c.version,
            description: c.description,
            schema,
            validator,
        }));
    }
    Ok(out)
}

/// The largest compiled pattern (the `regex` crate's size limit).
const REGEX_BYTES: usize = 256 * 1024;
/// The most memory each pattern's lazy DFA may keep (past it the engine
/// is slower, still linear).
const REGEX_DFA_BYTES: usize = 256 * 1024;

/// Compile a JSON Schema, bounded first ([`bounds::bound`]).
pub fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, String> {
    let text = serde_json::to_string(schema).map_err(|e| e.to_string())?;
    bounds::check_text(text.len())?;
    let bounded = bounds::bound(schema)?;
    compile_bounded(&bounded)
}

/// Compile `bounded`, what [`bounds::bound`] made of a schema. It is
/// checked against its meta-schema as it is compiled, so that a typo is an
/// error, not a schema that accepts all (the budget keyword is one that
/// meta-schemas allow).
fn compile_bounded(bounded: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .with_pattern_options(
            jsonschema::PatternOptions::regex()
                .size_limit(REGEX_BYTES)
                .dfa_size_limit(REGEX_DFA_BYTES),
        )
        // `format: "regex"` (asserted by drafts 4 to 7) compiles the data
        // as a pattern: with the same engine and limits.
        .with_format("regex", |s: &str| {
            s.chars().count() <= bounds::MAX_PATTERN_CHARS
                && regex::RegexBuilder::new(s)
                    .size_limit(REGEX_BYTES)
                    .build()
                    .is_ok()
        })
        .with_keyword(budget::KEYWORD, budget::counter)
        .build(bounded)
        .map_err(|e| text::clean(&e.to_string(), 500))
}

/// `MAJOR.MINOR.PATCH`, each a number, with an optional `-pre` suffix.
pub(super) fn check_semver(what: &str, v: &str) -> Result<(), ContractError> {
    let core = v.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    let ok = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(ContractError::Version {
            what: what.to_string(),
            version: v.to_string(),
        })
    }
}
