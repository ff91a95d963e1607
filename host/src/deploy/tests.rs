//! The gate by example, and the ledger by property: random sequences of
//! deploys and rollbacks, each accepted one checked against real data
//! (sample events validated by the contracts' own validators), not against
//! the gate's own reasoning.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::contract::StepContract;
use crate::world;

const T: &str = "order.placed";

/// A contract JSON for step `name` consuming and producing `T` with the
/// given schemas.
fn contract(name: &str, consumes: Option<&str>, produces: Option<&str>) -> Value {
    let ty = |s: &str| world::EventContract {
        kind: T.into(),
        version: "1.0.0".into(),
        description: String::new(),
        schema: s.into(),
    };
    let c = world::Contract {
        name: name.into(),
        version: "1.0.0".into(),
        description: String::new(),
        consumes: consumes.map(ty).into_iter().collect(),
        produces: produces.map(ty).into_iter().collect(),
        deterministic: true,
    };
    crate::contract::json::to_json(&StepContract::compile(c).unwrap())
}

fn step(contract: Value) -> StepVersion {
    StepVersion {
        component: sha256(contract.to_string().as_bytes()),
        contract,
        choreography: true,
    }
}

/// Content with producer `a` (schema `p`) and consumers `b` (schema `c`)
/// and, if given, `c` (schema `c2`).
fn content(p: &str, c: &str, c2: Option<&str>, mode: Mode) -> Content {
    let mut steps = BTreeMap::new();
    steps.insert("a".to_string(), step(contract("a", None, Some(p))));
    steps.insert("b".to_string(), step(contract("b", Some(c), None)));
    if let Some(c2) = c2 {
        steps.insert("c".to_string(), step(contract("c", Some(c2), None)));
    }
    Content {
        manifest: sha256(format!("{p}{c}{c2:?}{mode}").as_bytes()),
        steps,
        flows: BTreeMap::new(),
        policy: Policy {
            compatibility: mode,
            history: 3,
            types: BTreeMap::new(),
        },
    }
}

fn origin() -> Origin {
    Origin {
        how: "test".into(),
        host: "h".into(),
    }
}

const OPT_INT: &str = r#"{"type":"object","properties":{"amount":{"type":"integer"}}}"#;
const REQ_INT: &str =
    r#"{"type":"object","required":["amount"],"properties":{"amount":{"type":"integer"}}}"#;
const REQ_NUM: &str =
    r#"{"type":"object","required":["amount"],"properties":{"amount":{"type":"number"}}}"#;
const STR: &str = r#"{"type":"object","properties":{"amount":{"type":"string"}}}"#;

fn record(l: &mut Ledger, c: Content, allow: bool) -> Decision {
    let d = l.propose(Proposal::Content(c), origin(), allow, 1_000);
    if let Decision::Record(d) = &d {
        l.recorded(d.clone());
    }
    d
}

#[test]
fn a_breaking_change_is_refused_naming_producer_consumer_type_and_field() {
    let mut l = Ledger::default();
    assert!(matches!(
        record(&mut l, content(OPT_INT, OPT_INT, None, Mode::Backward), false),
        Decision::Record(d) if d.number == 1
    ));
    // `b` now requires `amount`, which `a` of deployment 1 may leave out.
    let Decision::Refused(ledger::Refusal::Breaks(b)) = record(
        &mut l,
        content(OPT_INT, REQ_INT, None, Mode::Backward),
        false,
    ) else {
        panic!("refused")
    };
    let text: Vec<String> = b.iter().map(ToString::to_string).collect();
    assert!(
        text.iter().any(|t| t.contains(T)
            && t.contains("`a` (deployment 1)")
            && t.contains("`b` (this deploy)")
            && t.contains("/amount")),
        "{text:#?}"
    );
    assert_eq!(
        l.current().unwrap().number,
        1,
        "a refused deploy changes nothing"
    );
    // With --allow-breaking it is recorded, with what was let through.
    let Decision::Record(d) = record(
        &mut l,
        content(OPT_INT, REQ_INT, None, Mode::Backward),
        true,
    ) else {
        panic!("recorded")
    };
    assert_eq!(d.number, 2);
    assert!(!d.allowed.is_empty());
}

#[test]
fn a_passive_change_is_accepted_and_the_same_content_is_no_new_deployment() {
    let mut l = Ledger::default();
    record(
        &mut l,
        content(REQ_INT, REQ_INT, None, Mode::Backward),
        false,
    );
    // The consumer widens (integer -> number): it reads all it read.
    assert!(matches!(
        record(&mut l, content(REQ_INT, REQ_NUM, None, Mode::Backward), false),
        Decision::Record(d) if d.number == 2
    ));
    assert_eq!(
        record(
            &mut l,
            content(REQ_INT, REQ_NUM, None, Mode::Backward),
            false
        ),
        Decision::Unchanged(2)
    );
}

#[test]
fn forward_protects_the_consumers_of_the_last_deployment() {
    let mut l = Ledger::default();
    record(
        &mut l,
        content(REQ_INT, REQ_INT, None, Mode::Forward),
        false,
    );
    // The producer starts sending numbers: the consumers of deployment 1
    // (still serving its runs) read integers only.
    let Decision::Refused(ledger::Refusal::Breaks(b)) = record(
        &mut l,
        content(REQ_NUM, REQ_NUM, None, Mode::Forward),
        false,
    ) else {
        panic!("refused")
    };
    assert!(
        b.iter().any(|b| b.producer.deployment.is_none()
            && b.consumer.step == "b"
            && b.consumer.deployment == Some(1)),
        "{b:#?}"
    );
    // Backward alone would let it through: the new consumer reads numbers.
    assert!(matches!(
        record(
            &mut l,
            content(REQ_NUM, REQ_NUM, None, Mode::Backward),
            false
        ),
        Decision::Record(_)
    ));
    // None checks nothing against earlier deployments.
    assert!(matches!(
        record(&mut l, content(STR, STR, None, Mode::None), false),
        Decision::Record(_)
    ));
}

#[test]
fn transitive_modes_compare_with_older_deployments_too() {
    let mut l = Ledger::default();
    record(&mut l, content(OPT_INT, OPT_INT, None, Mode::None), false);
    record(&mut l, content(REQ_INT, OPT_INT, None, Mode::None), false);
    // A new consumer `c` that requires `amount`: deployment 2's `a` always
    // sends it, deployment 1's did not.
    let c = |m| content(REQ_INT, OPT_INT, Some(REQ_INT), m);
    assert!(matches!(
        l.propose(Proposal::Content(c(Mode::Backward)), origin(), false, 0),
        Decision::Record(_)
    ));
    let Decision::Refused(ledger::Refusal::Breaks(b)) = l.propose(
        Proposal::Content(c(Mode::BackwardTransitive)),
        origin(),
        false,
        0,
    ) else {
        panic!("refused")
    };
    assert!(
        b.iter()
            .all(|b| b.producer.deployment == Some(1) && b.consumer.step == "c"),
        "{b:#?}"
    );
}

#[test]
fn a_rollback_is_a_new_deployment_with_the_old_content_and_passes_the_gate() {
    let min0 = SCHEMAS[4];
    let mut l = Ledger::default();
    record(
        &mut l,
        content(REQ_INT, OPT_INT, None, Mode::Backward),
        false,
    );
    assert!(matches!(
        record(&mut l, content(min0, OPT_INT, None, Mode::Backward), false),
        Decision::Record(d) if d.number == 2
    ));
    let Decision::Record(d) = l.propose(Proposal::Rollback(1), origin(), false, 0) else {
        panic!("recorded")
    };
    assert_eq!((d.number, d.rollback_of), (3, Some(1)));
    assert_eq!(d.content, l.get(1).unwrap().content);
    assert_eq!(
        l.propose(Proposal::Rollback(9), origin(), false, 0),
        Decision::Refused(ledger::Refusal::Unknown(9))
    );
    // Back to a narrower consumer: what it accepted from outside since
    // (1.5) it would refuse. Refused like any deploy.
    let mut l = Ledger::default();
    record(
        &mut l,
        content(REQ_INT, REQ_INT, None, Mode::Backward),
        false,
    );
    assert!(matches!(
        record(
            &mut l,
            content(REQ_INT, REQ_NUM, None, Mode::Backward),
            false
        ),
        Decision::Record(_)
    ));
    let Decision::Refused(ledger::Refusal::Breaks(b)) =
        l.propose(Proposal::Rollback(1), origin(), false, 0)
    else {
        panic!("refused")
    };
    assert!(b.iter().any(|b| b.producer.outside), "{b:#?}");
}

#[test]
fn keep_holds_the_current_and_every_pinned_deployment() {
    assert_eq!(keep(Some(4), [2, 2, 4]), [2, 4].into());
    assert_eq!(keep(None, []), Default::default());
}

// ---------------------------------------------------------------------
// By property.

const SCHEMAS: &[&str] = &[
    OPT_INT,
    REQ_INT,
    REQ_NUM,
    STR,
    r#"{"type":"object","required":["amount"],"properties":{"amount":{"type":"integer","minimum":0}}}"#,
    r#"{"type":"object","required":["amount","note"],"properties":{"amount":{"type":"integer"},"note":{"type":"string"}}}"#,
    r#"{"type":"object","properties":{"amount":{"type":"integer","maximum":100}}}"#,
    r#"{"type":"object","properties":{"amount":{"enum":[1,2]}}}"#,
];

/// Events the oracle tries: what one schema accepts, another may not.
fn samples() -> Vec<Value> {
    vec![
        json!({}),
        json!({"amount": 1}),
        json!({"amount": 2}),
        json!({"amount": -1}),
        json!({"amount": 150}),
        json!({"amount": 1.5}),
        json!({"amount": "1"}),
        json!({"amount": 1, "note": "n"}),
        json!({"note": "n"}),
        json!({"amount": 150, "note": "n"}),
    ]
}

fn valid(schema: &str, v: &Value) -> bool {
    jsonschema::validator_for(&serde_json::from_str(schema).unwrap())
        .unwrap()
        .is_valid(v)
}

/// `from` accepts nothing `to` refuses, on every sample.
fn reads_all(from: &str, to: &str) -> bool {
    samples().iter().all(|s| !valid(from, s) || valid(to, s))
}

#[derive(Debug, Clone)]
enum Op {
    Deploy {
        p: usize,
        c: usize,
        c2: Option<usize>,
        mode: Mode,
        allow: bool,
    },
    Rollback(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let mode = prop_oneof![
        Just(Mode::Backward),
        Just(Mode::BackwardTransitive),
        Just(Mode::Forward),
        Just(Mode::Full),
        Just(Mode::FullTransitive),
        Just(Mode::None),
    ];
    let n = SCHEMAS.len();
    prop_oneof![
        5 => (0..n, 0..n, prop::option::of(0..n), mode, prop::bool::weighted(0.1))
            .prop_map(|(p, c, c2, mode, allow)| Op::Deploy { p, c, c2, mode, allow }),
        1 => (1u64..8).prop_map(Op::Rollback),
    ]
}

/// The schema step `s` declares for `T` in `c` (consumed or produced).
fn schema_of(c: &Content, s: &str, consumed: bool) -> Option<String> {
    let key = if consumed { "consumes" } else { "produces" };
    let list = c.steps.get(s)?.contract.get(key)?.as_array()?;
    Some(list.first()?.get("schema")?.as_str()?.to_string())
}

/// What the gate promises of `next` after `prior` (newest first), checked
/// on data.
fn holds(prior: &[&Content], next: &Content) -> Result<(), String> {
    let mode = next.policy.compatibility;
    let depth = if mode.transitive() {
        next.policy.history
    } else {
        1
    };
    for old in prior.iter().take(depth) {
        let pairs = |a: &Content, b: &Content| {
            let mut v = Vec::new();
            for p in a.steps.keys() {
                for c in b.steps.keys() {
                    if let (Some(ps), Some(cs)) = (schema_of(a, p, false), schema_of(b, c, true)) {
                        v.push((p.clone(), ps, c.clone(), cs));
                    }
                }
            }
            v
        };
        let unchanged = |p: &str, c: &str| {
            schema_of(old, p, false) == schema_of(next, p, false)
                && schema_of(old, c, true) == schema_of(next, c, true)
        };
        if mode.backward() {
            for (p, ps, c, cs) in pairs(old, next) {
                if !unchanged(&p, &c) && !reads_all(&ps, &cs) {
                    return Err(format!("backward: new `{c}` cannot read old `{p}`"));
                }
            }
        }
        if mode.forward() {
            for (p, ps, c, cs) in pairs(next, old) {
                if !unchanged(&p, &c) && !reads_all(&ps, &cs) {
                    return Err(format!("forward: old `{c}` cannot read new `{p}`"));
                }
            }
        }
        for c in next.steps.keys() {
            if let (Some(was), Some(now)) = (schema_of(old, c, true), schema_of(next, c, true))
                && was != now
            {
                if mode.backward() && !reads_all(&was, &now) {
                    return Err(format!("backward: `{c}` reads less than it did"));
                }
                if mode.forward() && !reads_all(&now, &was) {
                    return Err(format!("forward: `{c}` reads more than it did"));
                }
            }
        }
    }
    Ok(())
}

fn config() -> ProptestConfig {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    ProptestConfig {
        cases: env("PROPTEST_CASES").map_or(300, |c| c as u32),
        rng_seed: proptest::test_runner::RngSeed::Fixed(env("PROPTEST_RNG_SEED").unwrap_or(0x32)),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_accepted_deployment_keeps_its_promise_on_data(ops in prop::collection::vec(op(), 1..12)) {
        let mut l = Ledger::default();
        for op in ops {
            let before = l.clone();
            let (decision, asked) = match op {
                Op::Deploy { p, c, c2, mode, allow } => {
                    let content = content(SCHEMAS[p], SCHEMAS[c], c2.map(|i| SCHEMAS[i]), mode);
                    (l.propose(Proposal::Content(content.clone()), origin(), allow, 0), Some((content, allow)))
                }
                Op::Rollback(n) => (l.propose(Proposal::Rollback(n), origin(), false, 0), None),
            };
            match decision {
                Decision::Unchanged(n) => {
                    prop_assert_eq!(Some(n), l.current().map(|d| d.number));
                    if let Some((c, _)) = &asked {
                        prop_assert_eq!(c, &l.current().unwrap().content);
                    }
                }
                Decision::Refused(_) => {}
                Decision::Record(d) => {
                    prop_assert_eq!(d.number, l.current().map_or(1, |c| c.number + 1));
                    if let Some(n) = d.rollback_of {
                        prop_assert_eq!(&d.content, &l.get(n).unwrap().content);
                    }
                    let allowed = asked.as_ref().is_some_and(|(_, a)| *a);
                    if !allowed {
                        prop_assert!(d.allowed.is_empty());
                        let prior: Vec<&Content> = l.all().rev().map(|d| &d.content).collect();
                        if let Err(e) = holds(&prior, &d.content) {
                            return Err(TestCaseError::fail(format!("deployment {}: {e}", d.number)));
                        }
                    }
                    l.recorded(d);
                }
            }
            // Nothing but a recorded deployment changes the ledger.
            prop_assert!(l == before || l.current().map(|d| d.number) == before.current().map_or(Some(1), |d| Some(d.number + 1)));
        }
    }
}
