//! Step contracts: what a step consumes and produces, and the checks made on
//! every message that crosses the sandbox boundary.
//!
//! A contract comes out of the component itself (its `describe` export), is
//! checked once when the step loads (names, semver versions, schemas that
//! compile), and its JSON Schemas are compiled once into validators. After
//! that, [`StepContract::check_input`] and [`StepContract::check_output`] are
//! the two gates every event passes, on the hot path.
//!
//! **Every event is checked, whatever its content type.** A type's data is
//! JSON unless its schema says otherwise with `contentMediaType` (then the
//! schema applies to the data as a JSON string: the text itself, or its
//! base64 with `contentEncoding: "base64"`). Data whose content type is not
//! the one declared breaks the contract, as data that breaks the schema
//! does. JSON is recognised as media types are: case-insensitively, with
//! parameters (`; charset=utf-8`) and `+json` suffixes.
//!
//! **A contract is guest input** ([`bounds`], [`budget`]): its schemas are
//! bounded in size and structure before they are compiled, their patterns
//! run on an engine with linear time (the `regex` crate), and every check
//! has a budget of time; one that runs out is the step's `limit`, not a
//! pass.
//!
//! **`troupe.*` event types belong to the host** (its alerts, the
//! orchestrator's replies): a step may neither consume nor produce one.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::event::{Event, media_type};
use crate::text;
use crate::world;

pub mod bounds;
pub mod budget;
mod compile;
pub mod json;

pub use compile::compile_schema;
use compile::{check_semver, compile_list};

/// The stack of every thread that checks messages against contracts (a
/// step's workers, the async runtime's threads, its blocking pool): the
/// deepest check the bounds allow fits in it, on the deepest data the JSON
/// parser allows (tested in `bounds`).
pub const CHECK_STACK: usize = 16 << 20;

/// Run the contract checks of what comes from outside (a producer's
/// events, a run's input) apart from the threads that serve: on the
/// runtime's blocking pool, and at most as many at once as the machine has
/// cores, so costly checks queue behind each other rather than in front of
/// every other request. `None` if the check panicked or the runtime stops.
pub async fn check_apart<T: Send + 'static>(
    check: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    static ROOM: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    let room = ROOM.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        tokio::sync::Semaphore::new(cores)
    });
    let _turn = room.acquire().await.ok()?;
    tokio::task::spawn_blocking(check).await.ok()
}

/// The prefix of the event types only the host may publish.
pub const RESERVED_PREFIX: &str = "troupe.";

/// A contract that does not hold together: the step cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("step name {0:?} must be lower-case letters, digits and `-`, starting with a letter")]
    Name(String),
    #[error("{what} version {version:?} is not semver (MAJOR.MINOR.PATCH)")]
    Version { what: String, version: String },
    #[error("event type {0:?} must be lower-case words joined by `.` (letters, digits, `-`, `_`)")]
    Kind(String),
    #[error("event type {kind:?} is declared twice in `{list}`")]
    Duplicate { kind: String, list: &'static str },
    #[error("the schema of {kind:?} is not JSON: {error}")]
    SchemaJson { kind: String, error: String },
    #[error("the schema of {kind:?} is not a valid JSON Schema: {error}")]
    Schema { kind: String, error: String },
    #[error("the schema of {kind:?}: {error}")]
    MediaType { kind: String, error: String },
    #[error("the schema of {kind:?} is too large or unsound for a step's contract: {error}")]
    Bounds { kind: String, error: String },
    #[error(
        "the contract's schemas are {bytes} bytes long together, the limit is {max} (too large \
         for a step's contract)"
    )]
    TooLarge { bytes: usize, max: usize },
    #[error(
        "event type {kind:?} in `{list}` belongs to the host (`troupe.*` types are its alerts \
         and replies); a step may not declare it"
    )]
    Reserved { kind: String, list: &'static str },
}

/// Why an event broke a contract: the reason recorded in the DLQ.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Violation {
    #[error("step does not consume {0:?}")]
    NotConsumed(String),
    #[error("step emitted {0:?}, which its contract does not declare in `produces`")]
    Undeclared(String),
    #[error("{direction} {kind:?} data is not JSON: {error}")]
    NotJson {
        direction: Direction,
        kind: String,
        error: String,
    },
    #[error("{direction} {kind:?} data breaks schema {version}: {errors}")]
    Schema {
        direction: Direction,
        kind: String,
        version: String,
        errors: String,
    },
    #[error("{direction} {kind:?} data is {content_type:?}, but the contract declares {declared}")]
    ContentType {
        direction: Direction,
        kind: String,
        content_type: String,
        declared: String,
    },
    #[error("{direction} {kind:?} data is not UTF-8 text, as {declared} must be")]
    NotText {
        direction: Direction,
        kind: String,
        declared: String,
    },
    #[error("output {kind:?}: its {attribute} {problem}")]
    Attribute {
        kind: String,
        attribute: &'static str,
        problem: &'static str,
    },
    #[error(
        "{direction} {kind:?} data is {content_type:?}, a CloudEvents envelope type, which no \
         event's data may be (a CloudEvents reader would take the data for a whole event)"
    )]
    Envelope {
        direction: Direction,
        kind: String,
        content_type: String,
    },
    /// The check ran out of its budget: the contract is too costly for
    /// this data. Not a broken contract: the step's `limit`.
    #[error(
        "checking {direction} {kind:?} against schema {version} took over {} ms, the budget of \
         one check: the step's contract is too costly for this data",
        budget::CHECK_BUDGET.as_millis()
    )]
    Budget {
        direction: Direction,
        kind: String,
        version: String,
    },
}

impl Violation {
    /// Which way the offending message was crossing.
    pub fn direction(&self) -> Direction {
        match self {
            Violation::NotConsumed(_) => Direction::Input,
            Violation::Undeclared(_) | Violation::Attribute { .. } => Direction::Output,
            Violation::NotJson { direction, .. }
            | Violation::Schema { direction, .. }
            | Violation::ContentType { direction, .. }
            | Violation::NotText { direction, .. }
            | Violation::Envelope { direction, .. }
            | Violation::Budget { direction, .. } => *direction,
        }
    }

    /// Whether the check ran out of its budget (the step's `limit`)
    /// rather than finding the message broken.
    pub fn out_of_budget(&self) -> bool {
        matches!(self, Violation::Budget { .. })
    }
}

/// What an event type's data is: JSON (the default), or another media
/// type declared by `contentMediaType` in its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataFormat {
    /// JSON: the schema applies to the parsed data.
    Json,
    /// `media_type` (lower-case, without parameters): the schema applies
    /// to the data as a JSON string, the text itself or (`base64`) the
    /// base64 of the bytes.
    Other { media_type: String, base64: bool },
}

impl DataFormat {
    /// The declared media type, for messages and documents.
    pub fn media_type(&self) -> &str {
        match self {
            DataFormat::Json => crate::event::JSON,
            DataFormat::Other { media_type, .. } => media_type,
        }
    }

    /// Read the format a schema declares.
    fn of(schema: &Value) -> Result<DataFormat, String> {
        let Some(declared) = schema.get("contentMediaType") else {
            return Ok(DataFormat::Json);
        };
        let declared = declared
            .as_str()
            .ok_or("`contentMediaType` must be a string")?;
        let (media_type, json) = media_type(declared)
            .ok_or_else(|| format!("`contentMediaType` {declared:?} is not a media type"))?;
        if json {
            return Err(format!(
                "`contentMediaType` {declared:?} is JSON: leave it out, and the schema applies \
                 to the JSON data itself"
            ));
        }
        let base64 = match schema.get("contentEncoding").map(Value::as_str) {
            None => false,
            Some(Some("base64")) => true,
            Some(_) => return Err("`contentEncoding` may only be \"base64\"".into()),
        };
        Ok(DataFormat::Other { media_type, base64 })
    }
}

/// Which way a message was crossing the sandbox boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Input,
    Output,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Input => "input",
            Direction::Output => "output",
        })
    }
}

/// One declared event type with its compiled schema.
pub struct EventType {
    pub kind: String,
    pub version: String,
    pub description: String,
    /// The schema as the step declared it.
    pub schema: Value,
    /// `dataschema` of events of this type.
    pub urn: String,
    /// What the data is: JSON, or the media type the schema declares.
    pub format: DataFormat,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventType")
            .field("kind", &self.kind)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// What the app-wide checks and documents need of a step: its name, its
/// contract, and whether it subscribes to what it consumes. A running
/// step (`LoadedStep`) is one; so is a step described from the contract
/// cache without being instantiated (`host::Described`).
pub trait StepView {
    fn name(&self) -> &str;
    fn contract(&self) -> &StepContract;
    /// Whether it subscribes to the types it consumes (`choreography`).
    fn choreography(&self) -> bool;
}

/// A step's contract, checked and compiled.
#[derive(Debug)]
pub struct StepContract {
    pub name: String,
    pub version: String,
    pub description: String,
    pub deterministic: bool,
    pub consumes: Vec<Arc<EventType>>,
    pub produces: Vec<Arc<EventType>>,
    consumes_by_kind: HashMap<String, Arc<EventType>>,
    produces_by_kind: HashMap<String, Arc<EventType>>,
}

impl StepContract {
    /// Check and compile the contract a step returned from `describe`.
    pub fn compile(c: world::Contract) -> Result<StepContract, ContractError> {
        if !is_step_name(&c.name) {
            return Err(ContractError::Name(c.name));
        }
        check_semver(&format!("step {:?}", c.name), &c.version)?;
        // Many types each within the bound still add up: the whole is
        // bounded too, before any is compiled.
        let total: usize = c
            .consumes
            .iter()
            .chain(&c.produces)
            .map(|t| t.schema.len())
            .sum();
        if total > bounds::MAX_CONTRACT_BYTES {
            return Err(ContractError::TooLarge {
                bytes: total,
                max: bounds::MAX_CONTRACT_BYTES,
            });
        }
        let consumes = compile_list(c.consumes, "consumes")?;
        let produces = compile_list(c.produces, "produces")?;
        let index = |l: &[Arc<EventType>]| l.iter().map(|t| (t.kind.clone(), t.clone())).collect();
        Ok(StepContract {
            consumes_by_kind: index(&consumes),
            produces_by_kind: index(&produces),
            name: c.name,
            version: c.version,
            description: c.description,
            deterministic: c.deterministic,
            consumes,
            produces,
        })
    }

    /// The event types the step consumes.
    pub fn consumed_kinds(&self) -> Vec<String> {
        self.consumes.iter().map(|t| t.kind.clone()).collect()
    }

    /// The declared type `kind` that the step produces, if any.
    pub fn produced(&self, kind: &str) -> Option<&Arc<EventType>> {
        self.produces_by_kind.get(kind)
    }

    /// Gate on the way in: the step declared `event.kind` and the data
    /// follows its schema.
    pub fn check_input(&self, event: &Event) -> Result<(), Violation> {
        let t = self
            .consumes_by_kind
            .get(&event.kind)
            .ok_or_else(|| Violation::NotConsumed(event.kind.clone()))?;
        check_data(t, Direction::Input, &event.content_type, &event.data)
    }

    /// The gate on the way in, for JSON data already parsed (a run's
    /// input, checked before the run starts).
    pub fn check_input_value(&self, kind: &str, data: &Value) -> Result<(), Violation> {
        let t = self
            .consumes_by_kind
            .get(kind)
            .ok_or_else(|| Violation::NotConsumed(kind.to_string()))?;
        if t.format != DataFormat::Json {
            return Err(content_type_violation(
                t,
                Direction::Input,
                crate::event::JSON,
            ));
        }
        check_value(t, Direction::Input, data)
    }

    /// Gate on the way out: the step declared `kind` in `produces`, the
    /// data is of the declared content type and follows its schema, and
    /// the subject is a valid attribute. Returns the declared type.
    pub fn check_output(
        &self,
        kind: &str,
        subject: Option<&str>,
        content_type: &str,
        data: &[u8],
    ) -> Result<&Arc<EventType>, Violation> {
        let t = self
            .produces_by_kind
            .get(kind)
            .ok_or_else(|| Violation::Undeclared(text::clean(kind, 200)))?;
        if subject.is_some_and(text::has_control) {
            return Err(Violation::Attribute {
                kind: t.kind.clone(),
                attribute: "subject",
                problem: "holds control characters, which CloudEvents attributes may not",
            });
        }
        check_data(t, Direction::Output, content_type, data)?;
        Ok(t)
    }
}

fn content_type_violation(t: &EventType, direction: Direction, content_type: &str) -> Violation {
    Violation::ContentType {
        direction,
        kind: t.kind.clone(),
        content_type: text::clean(content_type, 200),
        declared: t.format.media_type().to_string(),
    }
}

fn check_data(
    t: &EventType,
    direction: Direction,
    content_type: &str,
    data: &[u8],
) -> Result<(), Violation> {
    let Some((essence, json)) = media_type(content_type) else {
        return Err(content_type_violation(t, direction, content_type));
    };
    if crate::event::is_envelope_essence(&essence) {
        return Err(Violation::Envelope {
            direction,
            kind: t.kind.clone(),
            content_type: text::clean(content_type, 200),
        });
    }
    let value = match &t.format {
        DataFormat::Json if json => {
            serde_json::from_slice(data).map_err(|e| Violation::NotJson {
                direction,
                kind: t.kind.clone(),
                error: e.to_string(),
            })?
        }
        DataFormat::Other { media_type, base64 } if *media_type == essence => {
            if *base64 {
                use base64::Engine as _;
                Value::String(base64::engine::general_purpose::STANDARD.encode(data))
            } else {
                let text = std::str::from_utf8(data).map_err(|_| Violation::NotText {
                    direction,
                    kind: t.kind.clone(),
                    declared: media_type.clone(),
                })?;
                Value::String(text.to_string())
            }
        }
        _ => return Err(content_type_violation(t, direction, content_type)),
    };
    check_value(t, direction, &value)
}

fn check_value(t: &EventType, direction: Direction, value: &Value) -> Result<(), Violation> {
    match schema_errors(&t.validator, value) {
        Some(None) => Ok(()),
        Some(Some(errors)) => Err(Violation::Schema {
            direction,
            kind: t.kind.clone(),
            version: t.version.clone(),
            errors,
        }),
        None => Err(Violation::Budget {
            direction,
            kind: t.kind.clone(),
            version: t.version.clone(),
        }),
    }
}

/// What `validator` finds wrong with `value`, within the check budget:
/// `Some(None)` nothing, `Some(Some(errors))` the first few problems (each
/// with where in the data), `None` that checking ran out of its budget.
fn schema_errors(validator: &jsonschema::Validator, value: &Value) -> Option<Option<String>> {
    budget::within(budget::CHECK_BUDGET, || {
        if validator.is_valid(value) {
            return None;
        }
        let errors: Vec<String> = validator
            .iter_errors(value)
            .take(5)
            .map(|e| {
                let path = e.instance_path.to_string();
                let e = text::clean(&e.to_string(), 300);
                format!("{}: {e}", if path.is_empty() { "/" } else { &path })
            })
            .collect();
        Some(errors.join("; "))
    })
}

/// Check `value` against a schema compiled with [`compile_schema`], within
/// the check budget: the first few problems (each with where in the data),
/// or that checking ran out of its budget.
pub fn check_schema(validator: &jsonschema::Validator, value: &Value) -> Result<(), String> {
    match schema_errors(validator, value) {
        Some(None) => Ok(()),
        Some(Some(errors)) => Err(errors),
        None => Err("checking it ran out of the schema's budget".into()),
    }
}

/// Step names: `order-validate`.
pub fn is_step_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_lowercase())
        && s.len() <= 64
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// Event types: `order.placed`, `troupe.alert.contract`.
pub fn is_kind(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.split('.').all(|w| {
            let mut b = w.bytes();
            matches!(b.next(), Some(c) if c.is_ascii_lowercase())
                && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
        })
}

#[cfg(test)]
pub(crate) mod tests;
