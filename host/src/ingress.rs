//! Events from outside (the API's `POST /v1/events`, `troupe publish`):
//! the one check an event passes before it is stored, whichever way it
//! came in. A proper type, no extension only the host may set (so no
//! producer can send a step a command, or answer one in its place), and
//! the contract of every step that consumes it.

use crate::contract::{StepView, Violation, is_kind};
use crate::event::Event;
use crate::protocol::host_owned_extension;

/// Why an event from outside is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0:?} is not an event type: lower-case words joined by `.`, e.g. order.placed")]
    NotAType(String),
    #[error("the extension `{0}` is set by the host only")]
    HostOwned(&'static str),
    #[error(
        "datacontenttype {0:?} is a CloudEvents envelope type, which no event's data may be (a \
         CloudEvents reader would take the data for a whole event)"
    )]
    Envelope(String),
    /// It breaks the contract of a step that consumes it.
    #[error("step `{step}` would refuse it: {violation}")]
    Contract { step: String, violation: Violation },
}

impl Refused {
    /// Whether the event itself is malformed (rather than refused by a
    /// consumer's contract).
    pub fn malformed(&self) -> bool {
        !matches!(self, Refused::Contract { .. })
    }
}

/// Check `event` from outside against `steps` (pass none to skip the
/// contracts, as `troupe publish --no-check` does; the envelope is checked
/// whatever the steps).
pub fn check<S: StepView>(event: &Event, steps: &[S]) -> Result<(), Refused> {
    if !is_kind(&event.kind) {
        return Err(Refused::NotAType(event.kind.clone()));
    }
    if let Some(ext) = host_owned_extension(event) {
        return Err(Refused::HostOwned(ext));
    }
    if crate::event::is_envelope_type(&event.content_type) {
        return Err(Refused::Envelope(crate::text::clean(
            &event.content_type,
            200,
        )));
    }
    for s in steps
        .iter()
        .filter(|s| s.contract().consumes.iter().any(|t| t.kind == event.kind))
    {
        s.contract()
            .check_input(event)
            .map_err(|violation| Refused::Contract {
                step: s.name().to_string(),
                violation,
            })?;
    }
    Ok(())
}
