//! `troupe-step`: write a Troupe step in Rust.
//!
//! The crate generates the guest bindings of the `troupe:step` world (the WIT
//! in the repository's `wit/`) once, and adds the few helpers every step
//! wants: reading JSON data from an event, emitting JSON, declaring a
//! contract. A step crate is a `cdylib` that implements [`Guest`] and calls
//! [`export!`]:
//!
//! ```ignore
//! use troupe_step::{Contract, Emit, Event, Guest, StepError, export};
//! struct Echo;
//! impl Guest for Echo {
//!     fn describe() -> Contract { /* ... */ }
//!     fn handle(event: Event) -> Result<Vec<Emit>, StepError> { /* ... */ }
//! }
//! export!(Echo);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (or
//! `troupe build DIR`): the output is a component the host loads directly.

pub mod http;
pub mod kv;

/// The generated bindings of the `troupe:step` world.
pub mod bindings {
    wit_bindgen::generate!({
        world: "step",
        path: "../../wit",
        default_bindings_module: "troupe_step::bindings",
        pub_export_macro: true,
    });
}

pub use bindings::troupe::step::host::{Level, log};
pub use bindings::troupe::step::types::EventContract;
pub use bindings::{Contract, Emit, Event, Guest, StepError, export};

use serde::Serialize;
use serde::de::DeserializeOwned;

impl Event {
    /// Parse `data` as JSON into `T`; a parse failure is a `reject` (the
    /// host already validated the schema, so this only fails on a type the
    /// step reads more strictly than it declared).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, StepError> {
        serde_json::from_slice(&self.data)
            .map_err(|e| StepError::Reject(format!("data is not what this step reads: {e}")))
    }

    /// The value of an extension attribute, such as `correlationid`.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Emit {
    /// An event of type `kind` whose data is `value` as JSON.
    pub fn json(kind: &str, value: &impl Serialize) -> Emit {
        Emit {
            kind: kind.to_string(),
            subject: None,
            content_type: None,
            data: serde_json::to_vec(value).expect("a serde value serialises to JSON"),
        }
    }

    /// The same event about `subject`.
    pub fn about(mut self, subject: impl Into<String>) -> Emit {
        self.subject = Some(subject.into());
        self
    }
}

/// An event type in a contract: `kind` at `version`, with a JSON Schema given
/// as a `serde_json::Value` (usually written with `serde_json::json!`).
pub fn event_type(
    kind: &str,
    version: &str,
    description: &str,
    schema: serde_json::Value,
) -> EventContract {
    EventContract {
        kind: kind.to_string(),
        version: version.to_string(),
        schema: schema.to_string(),
        description: description.to_string(),
    }
}

/// Shorthand for `log(Level::Info, text)`.
pub fn info(text: &str) {
    log(Level::Info, text);
}
