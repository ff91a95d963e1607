//! The deployments an app has had, and the decision on the next one.

use std::collections::BTreeMap;

use super::{Break, Content, Deployment, Origin, gate};
use crate::contract::StepContract;

/// Every deployment recorded so far, by number.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    known: BTreeMap<u64, Deployment>,
}

/// What is asked of the ledger.
#[derive(Debug, Clone)]
pub enum Proposal {
    /// Deploy this content (the app's files as they are now).
    Content(Content),
    /// Return to deployment `n` (its content, as a new deployment).
    Rollback(u64),
}

/// The ledger's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The content is the current deployment's: nothing to record.
    Unchanged(u64),
    /// Record this deployment, the next number. Nothing changes until the
    /// broker has it ([`Ledger::recorded`]).
    Record(Deployment),
    /// Refused, and why; nothing changes.
    Refused(Refusal),
}

/// Why a deploy is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Changed contracts that are not passive under their types' modes.
    Breaks(Vec<Break>),
    /// `--to N` names no deployment.
    Unknown(u64),
    /// A contract in the content does not compile.
    Contract { step: String, error: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Breaks(b) => {
                write!(f, "{} change(s) are not passive:", b.len())?;
                for b in b {
                    write!(f, "\n  {b}")?;
                }
                Ok(())
            }
            Refusal::Unknown(n) => write!(f, "there is no deployment {n}"),
            Refusal::Contract { step, error } => write!(f, "step `{step}`: {error}"),
        }
    }
}

impl Ledger {
    /// Take a deployment the broker holds (recorded here, or by another
    /// host). Recording one twice changes nothing.
    pub fn recorded(&mut self, d: Deployment) {
        self.known.insert(d.number, d);
    }

    /// The latest deployment: the one new work goes to.
    pub fn current(&self) -> Option<&Deployment> {
        self.known.values().next_back()
    }

    pub fn get(&self, n: u64) -> Option<&Deployment> {
        self.known.get(&n)
    }

    /// Every deployment, oldest first.
    pub fn all(&self) -> impl DoubleEndedIterator<Item = &Deployment> {
        self.known.values()
    }

    /// Decide on `p`, made by `origin` at `now_ms`. With `allow_breaking`
    /// what the gate finds is recorded with the deployment instead of
    /// refusing it.
    pub fn propose(
        &self,
        p: Proposal,
        origin: Origin,
        allow_breaking: bool,
        now_ms: u64,
    ) -> Decision {
        let (content, rollback_of) = match p {
            Proposal::Content(c) => (c, None),
            Proposal::Rollback(n) => match self.known.get(&n) {
                Some(d) => (d.content.clone(), Some(n)),
                None => return Decision::Refused(Refusal::Unknown(n)),
            },
        };
        if let Some(cur) = self.current()
            && cur.content == content
        {
            return Decision::Unchanged(cur.number);
        }
        let next = match content.contracts() {
            Ok(c) => c,
            Err((step, e)) => {
                return Decision::Refused(Refusal::Contract {
                    step,
                    error: e.to_string(),
                });
            }
        };
        let policy = &content.policy;
        let transitive =
            policy.compatibility.transitive() || policy.types.values().any(|m| m.transitive());
        let depth = if transitive { policy.history } else { 1 };
        // A recorded contract that no longer compiles (a host of another
        // version wrote it) cannot be compared: that deployment is passed.
        let prior: Vec<(u64, BTreeMap<String, StepContract>)> = self
            .known
            .values()
            .rev()
            .take(depth)
            .filter_map(|d| Some((d.number, d.contracts().ok()?)))
            .collect();
        let prior: Vec<(u64, &BTreeMap<String, StepContract>)> =
            prior.iter().map(|(n, c)| (*n, c)).collect();
        let breaks = gate(&prior, &next, policy);
        if !breaks.is_empty() && !allow_breaking {
            return Decision::Refused(Refusal::Breaks(breaks));
        }
        Decision::Record(Deployment {
            number: self.known.keys().next_back().map_or(1, |n| n + 1),
            created: crate::clock::rfc3339(now_ms),
            created_ms: now_ms,
            origin,
            rollback_of,
            allowed: breaks.iter().map(ToString::to_string).collect(),
            content,
        })
    }
}
