//! Deployments: which version of each step and flow an app runs, as data.
//!
//! A [`Deployment`] is immutable once recorded: a number, and its
//! [`Content`]: the SHA-256 of each step's component with the contract it
//! declared, each flow's text and digest, the manifest's digest, and the
//! compatibility [`Policy`] it was deployed under. It is recorded in the
//! broker (one state row, `deploy/N`, written only if `N` is free), so
//! every host of the app sees it, and it outlives the files it came from:
//! a run started on deployment 3 is driven by deployment 3's flow and its
//! commands are handled by deployment 3's components, to its end, whatever
//! was deployed since (restate's immutable deployments).
//!
//! This module is the decisions only, as the orchestrator's machine:
//! [`Ledger::propose`] says whether a candidate is unchanged, refused (the
//! gate, `gate.rs`, under each event type's compatibility mode) or the next
//! deployment; [`keep`] which deployments a host keeps loaded. No I/O: the
//! effects (reading the app's files, loading components, writing the
//! record, switching the workers) are `crate::deployer`'s.

pub mod gate;
pub mod ledger;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contract::{ContractError, StepContract};

pub use gate::{Break, gate};
pub use ledger::{Decision, Ledger, Proposal};

/// The state-row key of deployment `n` (zero-padded: rows scan in order).
pub fn row(n: u64) -> String {
    format!("{ROW_PREFIX}{n:010}")
}

/// The prefix of deployments' state rows.
pub const ROW_PREFIX: &str = "deploy/";

/// The state row where the host driving the flows says which deployments
/// runs in flight are pinned to (for the other hosts of the app, on NATS).
pub const IN_USE_ROW: &str = "deploys-in-use";

/// The number of a deployment read from its state-row key.
pub fn number_of(key: &str) -> Option<u64> {
    key.strip_prefix(ROW_PREFIX)?.parse().ok()
}

/// What a deployment is, apart from its number and where it came from:
/// two deploys of the same content are one deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Content {
    /// SHA-256 (hex) of `troupe.toml`.
    pub manifest: String,
    pub steps: BTreeMap<String, StepVersion>,
    #[serde(default)]
    pub flows: BTreeMap<String, FlowVersion>,
    /// The compatibility modes it was deployed under (`[deploy]`).
    #[serde(default)]
    pub policy: Policy,
}

/// One step of a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepVersion {
    /// SHA-256 (hex) of the component.
    pub component: String,
    /// The contract its `describe` declared (`contract::json`).
    pub contract: Value,
    /// Whether it subscribes to the types it consumes.
    pub choreography: bool,
}

/// One flow of a deployment: its file, as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowVersion {
    /// SHA-256 (hex) of the text.
    pub digest: String,
    pub text: String,
}

impl FlowVersion {
    pub fn new(text: String) -> FlowVersion {
        FlowVersion {
            digest: sha256(text.as_bytes()),
            text,
        }
    }
}

/// A recorded deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub number: u64,
    /// When it was recorded (RFC 3339, and epoch ms).
    pub created: String,
    pub created_ms: u64,
    /// How it was made (`start`, `api`, `signal`, `watch`) and by which
    /// host.
    pub origin: Origin,
    /// The deployment it returned to (`troupe deploy --to N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    /// What the gate found and `--allow-breaking` let through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
    #[serde(flatten)]
    pub content: Content,
}

/// Where a deployment came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// `start`, `api`, `signal` or `watch`.
    pub how: String,
    /// The host that recorded it.
    pub host: String,
}

impl Deployment {
    /// Each step's contract, compiled again from the record.
    pub fn contracts(&self) -> Result<BTreeMap<String, StepContract>, (String, ContractError)> {
        self.content.contracts()
    }

    /// The component digest of `step` in this deployment.
    pub fn component(&self, step: &str) -> Option<&str> {
        self.content.steps.get(step).map(|s| s.component.as_str())
    }
}

impl Content {
    /// Each step's contract, compiled from the JSON the content keeps.
    pub fn contracts(&self) -> Result<BTreeMap<String, StepContract>, (String, ContractError)> {
        self.steps
            .iter()
            .map(|(name, s)| {
                let raw = crate::contract::json::from_json(&s.contract).ok_or_else(|| {
                    (
                        name.clone(),
                        ContractError::Name("(a contract that does not read back)".into()),
                    )
                })?;
                let c = StepContract::compile(raw).map_err(|e| (name.clone(), e))?;
                Ok((name.clone(), c))
            })
            .collect()
    }

    /// What changed from `before` to this content, one line each, for the
    /// deploy's answer and log.
    pub fn changes_from(&self, before: &Content) -> Vec<String> {
        let mut out = Vec::new();
        for (name, s) in &self.steps {
            match before.steps.get(name) {
                None => out.push(format!("step `{name}` added")),
                Some(b) if b.component != s.component => out.push(format!(
                    "step `{name}`: component {} -> {}",
                    short(&b.component),
                    short(&s.component)
                )),
                Some(b) if b.choreography != s.choreography => {
                    out.push(format!("step `{name}`: choreography {}", s.choreography))
                }
                _ => {}
            }
        }
        for name in before.steps.keys().filter(|n| !self.steps.contains_key(*n)) {
            out.push(format!("step `{name}` removed"));
        }
        for (name, f) in &self.flows {
            match before.flows.get(name) {
                None => out.push(format!("flow `{name}` added")),
                Some(b) if b.digest != f.digest => out.push(format!("flow `{name}` changed")),
                _ => {}
            }
        }
        for name in before.flows.keys().filter(|n| !self.flows.contains_key(*n)) {
            out.push(format!("flow `{name}` removed"));
        }
        if self.manifest != before.manifest {
            out.push("troupe.toml changed".into());
        }
        out
    }
}

/// The first 12 hex digits of a digest, as shown.
pub fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// SHA-256, hex.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// How a changed contract must stay compatible with those deployed before
/// it, per event type (Confluent Schema Registry's modes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Consumers of the new deployment read what the last one produced
    /// (and what its consumers accepted from outside).
    #[default]
    Backward,
    /// ... what each of the last `history` deployments produced.
    BackwardTransitive,
    /// Consumers of the last deployment (still serving its runs) read what
    /// the new one produces.
    Forward,
    ForwardTransitive,
    /// Both.
    Full,
    FullTransitive,
    /// No check against earlier deployments (the app's own wiring is
    /// still checked).
    None,
}

impl Mode {
    pub fn backward(self) -> bool {
        matches!(
            self,
            Mode::Backward | Mode::BackwardTransitive | Mode::Full | Mode::FullTransitive
        )
    }

    pub fn forward(self) -> bool {
        matches!(
            self,
            Mode::Forward | Mode::ForwardTransitive | Mode::Full | Mode::FullTransitive
        )
    }

    pub fn transitive(self) -> bool {
        matches!(
            self,
            Mode::BackwardTransitive | Mode::ForwardTransitive | Mode::FullTransitive
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Backward => "backward",
            Mode::BackwardTransitive => "backward_transitive",
            Mode::Forward => "forward",
            Mode::ForwardTransitive => "forward_transitive",
            Mode::Full => "full",
            Mode::FullTransitive => "full_transitive",
            Mode::None => "none",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `[deploy]` table: the compatibility mode of every event type
/// (`compatibility`, backward by default), of some types apart
/// (`[deploy.types]`), and how many earlier deployments a transitive mode
/// compares with (`history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub compatibility: Mode,
    #[serde(default = "default_history")]
    pub history: usize,
    #[serde(default)]
    pub types: BTreeMap<String, Mode>,
}

/// Deployments a transitive mode compares with, by default.
pub const DEFAULT_HISTORY: usize = 10;

fn default_history() -> usize {
    DEFAULT_HISTORY
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            compatibility: Mode::default(),
            history: DEFAULT_HISTORY,
            types: BTreeMap::new(),
        }
    }
}

impl Policy {
    /// The mode of event type `kind`.
    pub fn mode(&self, kind: &str) -> Mode {
        self.types.get(kind).copied().unwrap_or(self.compatibility)
    }

    /// What is wrong with the table, as `troupe.toml` reports it.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=1000).contains(&self.history) {
            return Err("[deploy] history must be between 1 and 1000".into());
        }
        if let Some(k) = self.types.keys().find(|k| !crate::contract::is_kind(k)) {
            return Err(format!("[deploy.types] {k:?} is not an event type"));
        }
        Ok(())
    }
}

/// The deployments a host keeps loaded: the current one, and every one a
/// run in flight is pinned to. Everything else is unloaded.
pub fn keep(current: Option<u64>, in_use: impl IntoIterator<Item = u64>) -> BTreeSet<u64> {
    current.into_iter().chain(in_use).collect()
}
