//! Host bindings of the `troupe:step` world: the only `bindgen!` in Troupe.
//!
//! Everything that talks to a guest uses the types generated here
//! ([`Step`], [`StepPre`], and the `troupe::step::*` modules), so a change to
//! `wit/step.wit` shows up in one place.

wasmtime::component::bindgen!({
    world: "step",
    path: "../wit",
    // Guests are called asynchronously, so that a call can be cut short
    // while the guest waits in a host call (`runtime::guard`); the
    // host's own import (`log`) returns at once and stays synchronous.
    exports: { default: async },
});

pub use self::troupe::step::host::Level;
pub use self::troupe::step::types::EventContract;

/// The guest's view of an event (the WIT `event` record).
pub type GuestEvent = Event;
