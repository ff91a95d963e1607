//! Host bindings of the `troupe:step` world and of `wasi:keyvalue`: the
//! only place `bindgen!` runs in Troupe.
//!
//! Everything that talks to a guest uses the types generated here
//! ([`Step`], [`StepPre`], the `troupe::step::*` modules, [`keyvalue`]),
//! so a change to the WIT shows up in one place.

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

/// Host bindings of `wasi:keyvalue@0.2.0-draft` (store, atomics, batch):
/// the interface steps keep state through (`runtime/state.rs` implements
/// it over [`crate::kv`]). Its calls may wait on the broker's store, so
/// they are asynchronous, and a broken invariant of the host traps.
pub mod keyvalue {
    wasmtime::component::bindgen!({
        path: "../wit/kv/deps/keyvalue",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::KvBucket,
        },
    });
}

/// An open bucket, as the guest holds it: the bucket's name, checked
/// against the step's grants when it was opened.
#[derive(Debug)]
pub struct KvBucket(pub String);
