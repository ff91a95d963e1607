//! The gate: may a deployment follow those before it?
//!
//! For each event type the new deployment consumes or produces, under the
//! type's [`Mode`], it compares contracts across deployments with the
//! comparison `troupe check` makes within one (`check::wire_problems`):
//!
//! - **backward**: each consumer in the new deployment must read what each
//!   producer of an earlier one emitted, and what its own earlier version
//!   accepted from outside (events a producer published then, still
//!   queued or replayed from the dead-letter queue later);
//! - **forward**: each consumer of an earlier deployment (still serving its
//!   pinned runs, or on a host not yet moved) must read what each producer
//!   of the new one emits, and what the new version of itself accepts from
//!   outside;
//! - **full**: both; **none**: neither. A transitive mode compares with the
//!   last `history` deployments, the others with the last one.
//!
//! A pair that was live together before (neither side changed) is not
//! compared again: the gate judges changes, not history.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Mode, Policy};
use crate::check::wire_problems;
use crate::contract::{EventType, StepContract};

/// One reason a deploy is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    /// The event type.
    #[serde(rename = "type")]
    pub kind: String,
    pub mode: Mode,
    /// Who sends the data, and in which deployment (`None`: this deploy).
    pub producer: Side,
    /// Who could not read it.
    pub consumer: Side,
    /// What in the data (the field) and why.
    pub problem: String,
}

/// One side of a compared pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    pub step: String,
    /// The deployment of the contract compared; `None` for the one being
    /// deployed.
    pub deployment: Option<u64>,
    /// The data is what this step accepted from outside (producers beyond
    /// the app), not what it emits.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub outside: bool,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.outside {
            write!(f, "events from outside as `{}` accepts them", self.step)?;
        } else {
            write!(f, "`{}`", self.step)?;
        }
        match self.deployment {
            // `troupe check --against DIR`: the files compared with.
            Some(0) => f.write_str(" (as deployed)"),
            Some(n) => write!(f, " (deployment {n})"),
            None => f.write_str(" (this deploy)"),
        }
    }
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} [{}]: {} -> {}: {}",
            self.kind, self.mode, self.producer, self.consumer, self.problem
        )
    }
}

type Contracts = BTreeMap<String, StepContract>;

/// The type `kind` as step `step` consumes it in `c`.
fn consumed<'a>(c: &'a Contracts, step: &str, kind: &str) -> Option<&'a EventType> {
    c.get(step)?
        .consumes
        .iter()
        .find(|t| t.kind == kind)
        .map(|t| &**t)
}

/// The type `kind` as step `step` produces it in `c`.
fn produced<'a>(c: &'a Contracts, step: &str, kind: &str) -> Option<&'a EventType> {
    c.get(step)?.produced(kind).map(|t| &**t)
}

/// Whether two declarations of a type describe the same data.
fn same(a: Option<&EventType>, b: Option<&EventType>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            a.version == b.version && a.format == b.format && a.schema == b.schema
        }
        _ => false,
    }
}

/// What refuses `next` after `prior` (the deployments before it, newest
/// first, each with its contracts) under `policy`.
pub fn gate(prior: &[(u64, &Contracts)], next: &Contracts, policy: &Policy) -> Vec<Break> {
    let mut kinds: Vec<&str> = next
        .values()
        .flat_map(|c| c.consumes.iter().chain(&c.produces))
        .map(|t| t.kind.as_str())
        .collect();
    kinds.sort();
    kinds.dedup();
    let mut out = Vec::new();
    for kind in kinds {
        let mode = policy.mode(kind);
        let depth = if mode.transitive() { policy.history } else { 1 };
        for (n, old) in prior.iter().take(depth) {
            let mut pair = |producer: Side, p: &EventType, consumer: Side, c: &EventType| {
                for problem in wire_problems(&producer.step, p, &consumer.step, c) {
                    out.push(Break {
                        kind: kind.to_string(),
                        mode,
                        producer: producer.clone(),
                        consumer: consumer.clone(),
                        problem,
                    });
                }
            };
            let side = |step: &str, deployment: Option<u64>, outside: bool| Side {
                step: step.to_string(),
                deployment,
                outside,
            };
            if mode.backward() {
                for (cn, _) in next.iter() {
                    let Some(ct) = consumed(next, cn, kind) else {
                        continue;
                    };
                    let c_same = same(consumed(old, cn, kind), Some(ct));
                    for (pn, _) in old.iter() {
                        let Some(pt) = produced(old, pn, kind) else {
                            continue;
                        };
                        if c_same && same(produced(next, pn, kind), Some(pt)) {
                            continue;
                        }
                        pair(side(pn, Some(*n), false), pt, side(cn, None, false), ct);
                    }
                    if let Some(was) = consumed(old, cn, kind)
                        && !c_same
                    {
                        pair(side(cn, Some(*n), true), was, side(cn, None, false), ct);
                    }
                }
            }
            if mode.forward() {
                for (pn, _) in next.iter() {
                    let Some(pt) = produced(next, pn, kind) else {
                        continue;
                    };
                    let p_same = same(produced(old, pn, kind), Some(pt));
                    for (cn, _) in old.iter() {
                        let Some(ct) = consumed(old, cn, kind) else {
                            continue;
                        };
                        if p_same && same(consumed(next, cn, kind), Some(ct)) {
                            continue;
                        }
                        pair(side(pn, None, false), pt, side(cn, Some(*n), false), ct);
                    }
                }
                for (cn, _) in next.iter() {
                    let (Some(now), Some(was)) =
                        (consumed(next, cn, kind), consumed(old, cn, kind))
                    else {
                        continue;
                    };
                    if !same(Some(was), Some(now)) {
                        pair(side(cn, None, true), now, side(cn, Some(*n), false), was);
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| (&a.kind, a.to_string()).cmp(&(&b.kind, b.to_string())));
    out.dedup();
    out
}

/// The modes in `policy` that name a type `next` neither consumes nor
/// produces (a typo the gate would otherwise ignore in silence).
pub fn unknown_types<'a>(policy: &'a Policy, next: &Contracts) -> Vec<&'a str> {
    policy
        .types
        .keys()
        .filter(|k| {
            !next
                .values()
                .flat_map(|c| c.consumes.iter().chain(&c.produces))
                .any(|t| &t.kind == *k)
        })
        .map(String::as_str)
        .collect()
}
