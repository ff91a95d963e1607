//! The subcommands of the `troupe` binary, by what they work on.

pub mod deploys;
pub mod dlq;
pub mod events;
pub mod flows;
pub mod plugins;
pub mod run;
pub mod runs;
pub mod schedules;
pub mod state;
pub mod store;

pub(crate) use super::{ApiArgs, DlqCmd, KvCmd, load_app};
