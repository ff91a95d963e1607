//! Every contract check has a budget of time, and runs out of it as a
//! failure of the step whose contract it is, never as a pass.
//!
//! The schemas are bounded in size and structure ([`super::bounds`]) and
//! their patterns run on an engine with linear time, but the work of a
//! check still grows with the schema times the data (an `anyOf` of a
//! hundred branches on each of ten thousand items). So [`super::bounds`]
//! puts the keyword [`KEYWORD`] wherever that work multiplies (the root,
//! the subschemas applied to each element or property, the targets of
//! `$ref`s); the validator calls it each time it applies one of those,
//! and it counts. Every [`CHECK_EVERY`]
//! counts it looks at the clock, and once the check's deadline has passed
//! it unwinds out of the validator ([`std::panic::resume_unwind`], which
//! calls no panic hook: nothing is printed), to [`within`], which answers
//! `None`.
//!
//! **The validator holds no state a check could leave half-written**: a
//! compiled schema is read-only but for its lazily compiled `$ref`s, which
//! are compiled before any subschema under them is applied.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::{Duration, Instant};

use jsonschema::paths::{LazyLocation, Location};
use jsonschema::{Keyword, ValidationError};
use serde_json::{Map, Value};

/// The keyword that counts. Never in a schema as the step declared it:
/// only in what the host compiles.
pub const KEYWORD: &str = "x-troupe-budget";

/// How long one check of one message against one schema may take.
pub const CHECK_BUDGET: Duration = Duration::from_millis(250);

/// Subschemas applied between two looks at the clock.
const CHECK_EVERY: u32 = 64;

/// The budget of the check running on this thread.
#[derive(Clone, Copy)]
enum Deadline {
    /// No check with a budget is running.
    None,
    /// One is, and has not looked at the clock yet: most checks end before
    /// they first would, and never pay for reading it.
    Unstarted(Duration),
    /// One is, and must end by then.
    At(Instant),
}

thread_local! {
    static DEADLINE: Cell<Deadline> = const { Cell::new(Deadline::None) };
    static COUNT: Cell<u32> = const { Cell::new(0) };
}

/// What unwinds out of a check that ran out of time.
struct Spent;

/// Run `check` with `budget`: `None` if it ran out. The budget is counted
/// from the check's first look at the clock, [`CHECK_EVERY`] subschemas
/// in: a few microseconds late at most.
pub fn within<T>(budget: Duration, check: impl FnOnce() -> T) -> Option<T> {
    let before = DEADLINE.replace(Deadline::Unstarted(budget));
    let count = COUNT.replace(0);
    let result = catch_unwind(AssertUnwindSafe(check));
    DEADLINE.set(before);
    COUNT.set(count);
    match result {
        Ok(v) => Some(v),
        Err(payload) if payload.is::<Spent>() => None,
        Err(payload) => resume_unwind(payload),
    }
}

fn count() {
    let n = COUNT.get().wrapping_add(1);
    COUNT.set(n);
    if !n.is_multiple_of(CHECK_EVERY) {
        return;
    }
    match DEADLINE.get() {
        Deadline::None => {}
        Deadline::Unstarted(budget) => DEADLINE.set(Deadline::At(Instant::now() + budget)),
        Deadline::At(deadline) => {
            if Instant::now() >= deadline {
                resume_unwind(Box::new(Spent));
            }
        }
    }
}

/// The keyword's validator: it passes, and counts.
struct Counter;

impl Keyword for Counter {
    fn validate<'i>(
        &self,
        _instance: &'i Value,
        _location: &LazyLocation,
    ) -> Result<(), ValidationError<'i>> {
        count();
        Ok(())
    }

    fn is_valid(&self, _instance: &Value) -> bool {
        count();
        true
    }
}

/// The factory `jsonschema` calls for each occurrence of [`KEYWORD`].
#[allow(
    clippy::result_large_err,
    reason = "the signature jsonschema asks of a factory"
)]
pub fn counter<'a>(
    _parent: &'a Map<String, Value>,
    _value: &'a Value,
    _path: Location,
) -> Result<Box<dyn Keyword>, ValidationError<'a>> {
    Ok(Box::new(Counter))
}
