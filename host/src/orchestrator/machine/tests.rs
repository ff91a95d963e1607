//! The machine driven with no I/O and a fake clock: transitions by
//! example, then random sequences of replies, failures, timeouts,
//! duplicates, late deliveries and restarts (`proptest`), checked against
//! the invariants in `mod.rs`.

use serde_json::json;

use super::*;
use crate::event::Emitted;
use crate::flow::{Compensation, Flow, FlowStep};
use crate::orchestrator::FlowSets;
use crate::protocol::{ATTEMPT, DEPLOYMENT, FLOW_STEP, completed_reply, failed_reply};
use crate::retry::RetryPolicy;

mod child;
mod fan;
mod operator;
mod property;

/// The fake clock's start (epoch ms).
const T0: u64 = 1_700_000_000_000;
const SOURCE: &str = "troupe://shop/orchestrator";

fn fstep(id: &str, input: &str, compensate: Option<&str>, max_attempts: u32) -> FlowStep {
    FlowStep {
        id: id.into(),
        action: FlowAction::Command {
            step: format!("s-{id}"),
        },
        input: input.into(),
        after: if input == INPUT {
            vec![]
        } else {
            vec![input.into()]
        },
        when: None,
        when_line: 1,
        timeout_ms: 1_000,
        queue_timeout_ms: 500,
        retry: RetryPolicy {
            max_attempts,
            backoff_ms: 10,
            max_backoff_ms: 100,
        },
        compensate: compensate.map(|c| Compensation {
            step: c.into(),
            input: id.into(),
        }),
        fan: None,
        output_kind: Some(format!("{id}.done")),
        input_kind: if input == INPUT {
            "order.placed".into()
        } else {
            format!("{input}.done")
        },
        line: 1,
    }
}

/// Flow `f`: `a` and `b` (each undone by a compensation) in parallel from
/// the input, then `c` after both, retried up to 3 times.
fn flow() -> Flow {
    let mut c = fstep("c", "a", None, 3);
    c.after = vec!["a".into(), "b".into()];
    Flow {
        name: "f".into(),
        path: "flows/f.toml".into(),
        input: "order.placed".into(),
        timeout_ms: 60_000,
        steps: vec![
            fstep("a", INPUT, Some("undo-a"), 1),
            fstep("b", INPUT, Some("undo-b"), 1),
            c,
        ],
        output: Some("c".into()),
    }
}

fn machine() -> Machine {
    Machine::new(FlowSets::one(1, vec![flow()]), SOURCE.into(), None, 1_000)
}

fn start(m: &mut Machine, id: &str, key: Option<&str>, now: u64) -> Started {
    let s = Start {
        id: id.into(),
        flow: "f".into(),
        input: json!({"order_id": id, "lines": [1, 2, 3]}),
        key: key.map(str::to_string),
        trace: None,
        parent: None,
        deployment: None,
    };
    m.start(s, now).expect("a start")
}

fn sends(t: &Transition) -> Vec<Event> {
    t.sends().cloned().collect()
}

fn sid_of(e: &Event) -> &str {
    &e.extensions[FLOW_STEP]
}

fn done(command: &Event) -> Event {
    let out = Emitted {
        kind: format!("{}.done", sid_of(command)),
        subject: None,
        content_type: Some("application/json".into()),
        data: br#"{"ok": true}"#.to_vec(),
        schema: None,
    };
    completed_reply(command, "troupe://shop/step/x", &[out])
}

fn failed(command: &Event, class: FailureClass, message: &str) -> Event {
    failed_reply(
        command,
        "troupe://shop/step/x",
        &Failure::new(class, message),
    )
}

fn ended(t: &Transition) -> Option<&RunRecord> {
    t.actions.iter().find_map(|a| match a {
        Action::End(r) => Some(&**r),
        _ => None,
    })
}

#[test]
fn a_run_completes_with_its_join_and_durations() {
    let mut m = machine();
    let Started::New(t) = start(&mut m, "r1", None, T0) else {
        panic!("new")
    };
    assert!(t.checkpoint());
    let first = sends(&t);
    let mut ids: Vec<&str> = first.iter().map(sid_of).collect();
    ids.sort();
    assert_eq!(ids, ["a", "b"]);
    let t = m.on_event(&done(&first[0]), T0 + 40).unwrap();
    assert!(sends(&t).is_empty(), "c waits for both");
    assert!(!t.checkpoint(), "a reply's transition is in the log");
    let t = m.on_event(&done(&first[1]), T0 + 70).unwrap();
    let c = sends(&t);
    assert_eq!(c.iter().map(sid_of).collect::<Vec<_>>(), ["c"]);
    let t = m.on_event(&done(&c[0]), T0 + 100).unwrap();
    let run = ended(&t).expect("ended");
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(run.duration_ms, Some(100));
    assert_eq!(run.steps["c"].duration_ms, Some(30));
    assert_eq!(m.active(), 0);
}

#[test]
fn how_a_step_failed_decides_its_state_not_the_words_of_the_message() {
    // c is retried three times; its last failure decides.
    for (class, state) in [
        (FailureClass::Retry, StepState::Failed),
        (FailureClass::Timeout, StepState::TimedOut),
    ] {
        let mut m = machine();
        let Started::New(t) = start(&mut m, "r1", None, T0) else {
            panic!()
        };
        let first = sends(&t);
        m.on_event(&done(&first[0]), T0 + 1);
        let mut c = sends(&m.on_event(&done(&first[1]), T0 + 2).unwrap());
        let mut now = T0 + 2;
        let mut last = None;
        for attempt in 1..=3 {
            now += 5;
            let t = m
                .on_event(&failed(&c[0], class, "gateway timed out"), now)
                .unwrap();
            if attempt < 3 {
                // Backoff, then the next attempt on its timer.
                let at = m.run("r1").unwrap().steps["c"].deadline_ms.unwrap();
                assert!(sends(&t).is_empty());
                now = at;
                c = sends(&m.on_timer(at, "r1", "c", now).unwrap());
                assert_eq!(c[0].extensions[ATTEMPT], (attempt + 1).to_string());
            } else {
                last = Some(t);
            }
        }
        // a and b are undone; the run ends once they are.
        let t = last.unwrap();
        let rec = &m.run("r1").unwrap().steps["c"];
        assert_eq!(rec.state, state, "{class}");
        assert_eq!(
            rec.errors[0],
            format!("attempt 1: {class}: gateway timed out")
        );
        assert_eq!(sends(&t).len(), 1, "one compensation at a time");
    }
}

#[test]
fn a_timed_out_attempt_is_superseded_and_its_late_completion_refused_and_noted() {
    let mut m = machine();
    let Started::New(t) = start(&mut m, "r1", None, T0) else {
        panic!()
    };
    let first = sends(&t);
    m.on_event(&done(&first[0]), T0 + 1);
    let c1 = sends(&m.on_event(&done(&first[1]), T0 + 2).unwrap());
    // 500 ms to be started, 1,000 ms to run, 1,000 ms for the reply.
    let deadline = T0 + 2 + 2_500;
    let t = m.on_timer(deadline, "r1", "c", deadline).unwrap();
    assert!(sends(&t).is_empty(), "backoff first");
    let rec = &m.run("r1").unwrap().steps["c"];
    assert_eq!(
        rec.errors,
        [
            "attempt 1: timeout: no reply within 2500 ms of being sent (500 ms to be started, \
             queue_timeout_ms, 1000 ms to run, timeout_ms, and 1000 ms for the reply)"
        ]
    );
    let at = rec.deadline_ms.unwrap();
    let c2 = sends(&m.on_timer(at, "r1", "c", at).unwrap());
    assert_ne!(c1[0].id, c2[0].id, "a new attempt is a new command");
    // Attempt 1 answers late: refused, and said.
    let t = m.on_event(&done(&c1[0]), at + 5).unwrap();
    assert!(t.checkpoint());
    let rec = &m.run("r1").unwrap().steps["c"];
    assert_eq!(rec.state, StepState::Dispatched);
    assert!(rec.errors[1].contains("attempt 1 completed after it was superseded"));
    // Delivered again (or replayed after a restart): said once.
    let t = m.on_event(&done(&c1[0]), at + 6).unwrap();
    assert!(!t.checkpoint());
    assert_eq!(m.run("r1").unwrap().steps["c"].errors.len(), 2);
    // Attempt 2's reply completes the run; a duplicate of it then changes
    // nothing (the run has ended).
    let t = m.on_event(&done(&c2[0]), at + 9).unwrap();
    assert_eq!(ended(&t).unwrap().state, RunState::Completed);
    assert!(m.on_event(&done(&c2[0]), at + 10).is_none());
}

#[test]
fn a_duplicate_reply_changes_nothing() {
    let mut m = machine();
    let Started::New(t) = start(&mut m, "r1", None, T0) else {
        panic!()
    };
    let first = sends(&t);
    m.on_event(&done(&first[0]), T0 + 1);
    let before = serde_json::to_value(m.run("r1").unwrap()).unwrap();
    let t = m.on_event(&done(&first[0]), T0 + 9).unwrap();
    assert!(t.actions.is_empty(), "{:?}", t.actions);
    let mut after = serde_json::to_value(m.run("r1").unwrap()).unwrap();
    after["updated"] = before["updated"].clone();
    assert_eq!(before, after);
}

#[test]
fn after_a_long_downtime_a_waiting_step_gets_its_timeout_again_under_the_same_command() {
    let mut m = machine();
    let Started::New(t) = start(&mut m, "r1", None, T0) else {
        panic!()
    };
    let first = sends(&t);
    // The host dies at T0 + 10 and is back 5 s later (timeouts: 1 s).
    let stored = serde_json::to_vec(m.run("r1").unwrap()).unwrap();
    let mut m = machine();
    m.load(serde_json::from_slice(&stored).unwrap());
    let back = T0 + 5_010;
    let ts = m.recover(back);
    assert_eq!(ts.len(), 1);
    let again = sends(&ts[0]);
    let ids = |v: &[Event]| {
        let mut ids: Vec<String> = v.iter().map(|e| e.id.clone()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&again), ids(&first), "same commands, same ids");
    let rec = &m.run("r1").unwrap().steps["a"];
    assert_eq!((rec.attempts, rec.deadline_ms), (1, Some(back + 2_500)));
    // The old deadline no longer acts; the new one does.
    assert!(m.on_timer(T0 + 2_500, "r1", "a", back).is_none());
    // The reply to the first command counts, and the step's duration runs
    // from when it was first dispatched.
    let a = first.iter().find(|e| sid_of(e) == "a").unwrap();
    m.on_event(&done(a), back + 20).unwrap();
    let rec = &m.run("r1").unwrap().steps["a"];
    assert_eq!(rec.state, StepState::Completed);
    assert_eq!(rec.duration_ms, Some(5_030), "from T0 to back + 20");
}

#[test]
fn compensations_run_one_at_a_time_in_reverse_order_of_completion() {
    let mut m = machine();
    let Started::New(t) = start(&mut m, "r1", None, T0) else {
        panic!()
    };
    let first = sends(&t);
    let (a, b) = if sid_of(&first[0]) == "a" {
        (&first[0], &first[1])
    } else {
        (&first[1], &first[0])
    };
    m.on_event(&done(b), T0 + 1);
    let c = sends(&m.on_event(&done(a), T0 + 2).unwrap());
    let t = m
        .on_event(&failed(&c[0], FailureClass::Rejected, "no"), T0 + 3)
        .unwrap();
    let undo = sends(&t);
    assert_eq!(undo.iter().map(sid_of).collect::<Vec<_>>(), ["a~undo"]);
    assert_eq!(undo[0].extensions[crate::event::TARGET], "undo-a");
    let t = m.on_event(&done(&undo[0]), T0 + 4).unwrap();
    let undo = sends(&t);
    assert_eq!(undo.iter().map(sid_of).collect::<Vec<_>>(), ["b~undo"]);
    let t = m.on_event(&done(&undo[0]), T0 + 5).unwrap();
    let run = ended(&t).unwrap();
    assert_eq!(run.state, RunState::Compensated);
    assert_eq!(run.steps["a"].state, StepState::Compensated);
    assert!(
        run.error
            .as_deref()
            .unwrap()
            .starts_with("step c failed: rejected: no")
    );
}

#[test]
fn a_key_used_by_an_active_run_returns_it() {
    let mut m = machine();
    let Started::New(t) = start(&mut m, "r1", Some("k"), T0) else {
        panic!()
    };
    let row = t.actions.iter().find_map(|a| match a {
        Action::Put { key, .. } => Some(key.clone()),
        _ => None,
    });
    assert_eq!(row, Some(key_row("f", "k")));
    assert!(matches!(start(&mut m, "r2", Some("k"), T0 + 1), Started::Existing(id) if id == "r1"));
    assert!(matches!(
        start(&mut m, "r3", Some("k2"), T0 + 1),
        Started::New(_)
    ));
    assert_ne!(key_row("f", "k"), key_row("g", "k"));
}

#[test]
fn the_run_deadline_times_out_what_is_in_flight_and_still_undoes() {
    let mut m = machine();
    let Started::New(t) = start(&mut m, "r1", None, T0) else {
        panic!()
    };
    let first = sends(&t);
    let a = first.iter().find(|e| sid_of(e) == "a").unwrap();
    m.on_event(&done(a), T0 + 1);
    let t = m.on_timer(T0 + 60_000, "r1", "", T0 + 60_000).unwrap();
    let undo = sends(&t);
    assert_eq!(undo.iter().map(sid_of).collect::<Vec<_>>(), ["a~undo"]);
    let t = m.on_event(&done(&undo[0]), T0 + 60_010).unwrap();
    let run = ended(&t).unwrap();
    assert_eq!(run.state, RunState::TimedOut);
    assert_eq!(run.steps["b"].state, StepState::TimedOut);
}

/// Found by the property test: a step still in flight when the run began
/// to fail, failing in turn, used to leave the run compensating forever
/// (its deadline no longer acts once it compensates).
#[test]
fn a_step_in_flight_that_fails_while_the_run_is_undone_lets_the_run_end() {
    let mut m = machine();
    let Started::New(t) = start(&mut m, "r1", None, T0) else {
        panic!()
    };
    let first = sends(&t);
    let t = m
        .on_event(&failed(&first[0], FailureClass::Rejected, "no"), T0 + 1)
        .unwrap();
    assert!(ended(&t).is_none(), "the other step is in flight");
    // The other fails retryably: not tried again in a run being undone.
    let t = m
        .on_event(&failed(&first[1], FailureClass::Trap, "boom"), T0 + 2)
        .unwrap();
    assert!(sends(&t).is_empty());
    let run = ended(&t).expect("the run ends");
    assert_eq!(run.state, RunState::Failed, "nothing completed to undo");
}

#[test]
fn a_run_whose_commit_was_lost_is_written_again_with_the_same_commands() {
    let mut m = machine();
    let Started::New(t) = start(&mut m, "r1", None, T0) else {
        panic!("new")
    };
    let first = sends(&t);
    // a's reply is applied; b still waits. Say the commit of the
    // transition that sent c is lost: after b's reply, c waits.
    m.on_event(&done(&first[0]), T0 + 10).unwrap();
    let lost = m.on_event(&done(&first[1]), T0 + 20).unwrap();
    let c = sends(&lost);
    let again = m.resync("r1", T0 + 500).expect("active");
    assert!(again.checkpoint(), "the record is written");
    let resent = sends(&again);
    assert_eq!(resent.len(), 1, "only c waits: {resent:?}");
    assert_eq!(resent[0].id, c[0].id, "the same command, deduplicated");
    assert!(
        !again
            .actions
            .iter()
            .any(|a| matches!(a, Action::Arm { .. })),
        "the timers armed for the lost transition still stand"
    );
    // It goes on as if nothing happened.
    let t = m.on_event(&done(&resent[0]), T0 + 600).unwrap();
    assert_eq!(ended(&t).expect("ended").state, RunState::Completed);
    assert!(m.resync("r1", T0 + 700).is_none(), "no longer active");
}

#[test]
fn a_start_that_could_not_be_stored_is_forgotten_with_its_key() {
    let mut m = machine();
    let Started::New(t) = start(&mut m, "r1", Some("k"), T0) else {
        panic!("new")
    };
    let a = sends(&t).remove(0);
    m.forget("r1");
    assert_eq!(m.active(), 0);
    assert!(
        m.on_event(&done(&a), T0 + 10).is_none(),
        "a reply is only acked"
    );
    assert!(
        matches!(start(&mut m, "r2", Some("k"), T0 + 20), Started::New(_)),
        "the key starts a new run"
    );
}

/// A command says when a worker must start it by and how long it may run
/// (start-to-close); a hybrid step's event carries neither.
#[test]
fn a_command_carries_its_start_by_and_run_for_bounds() {
    let mut m = machine();
    let Started::New(t) = start(&mut m, "r1", None, T0) else {
        panic!()
    };
    for c in sends(&t) {
        assert_eq!(
            protocol::command_bounds(&c),
            Some((T0 + 500, std::time::Duration::from_millis(1_000))),
            "{c:?}"
        );
    }
}

/// The rows a transition writes, by key.
fn puts(t: &Transition) -> Vec<(&str, &[u8])> {
    t.actions
        .iter()
        .filter_map(|a| match a {
            Action::Put { key, value } => Some((key.as_str(), value.as_slice())),
            _ => None,
        })
        .collect()
}

fn pins_written(t: &Transition) -> Option<Vec<u64>> {
    puts(t)
        .into_iter()
        .find(|(k, _)| *k == crate::deploy::IN_USE_ROW)
        .map(|(_, v)| serde_json::from_slice(v).unwrap())
}

/// Drive run `id` to its end, answering each command as it comes.
fn finish_run(m: &mut Machine, first: Vec<Event>, mut now: u64) -> Transition {
    let mut queue = first;
    let mut last = None;
    while let Some(c) = queue.pop() {
        now += 10;
        let t = m.on_event(&done(&c), now).expect("a live run");
        queue.extend(sends(&t));
        last = Some(t);
    }
    last.expect("a reply")
}

#[test]
fn a_run_is_pinned_to_the_deployment_it_started_on_to_its_end() {
    // Deployment 1: flow `f`. Deployment 2: `f` with `c` run once more at
    // most, and a different command target for `b`.
    let mut two = flow();
    two.steps[1].action = FlowAction::Command {
        step: "s-b-v2".into(),
    };
    let mut sets = FlowSets::one(1, vec![flow()]);
    let mut m = Machine::new(sets.clone(), SOURCE.into(), None, 1_000);
    let Started::New(t) = start(&mut m, "r1", None, T0) else {
        panic!("new")
    };
    // The start writes the pins, in its commit.
    assert_eq!(pins_written(&t), Some(vec![1]));
    assert_eq!(m.run("r1").unwrap().deployment, Some(1));
    let r1 = sends(&t);
    assert!(r1.iter().all(|c| c.extensions[DEPLOYMENT] == "1"));
    // A deploy: new runs on 2, r1 on 1.
    sets.insert(2, vec![two]);
    sets.current = 2;
    m.set_flows(sets);
    let Started::New(t) = start(&mut m, "r2", None, T0 + 5) else {
        panic!("new")
    };
    assert_eq!(pins_written(&t), Some(vec![1, 2]));
    let r2 = sends(&t);
    assert!(r2.iter().all(|c| c.extensions[DEPLOYMENT] == "2"));
    let target = |cs: &[Event], sid: &str| {
        cs.iter()
            .find(|c| sid_of(c) == sid)
            .map(|c| c.extensions[crate::event::TARGET].clone())
    };
    assert_eq!(target(&r1, "b").as_deref(), Some("s-b"));
    assert_eq!(target(&r2, "b").as_deref(), Some("s-b-v2"));
    // r1's next commands still come from deployment 1's flow.
    let t = finish_run(&mut m, r1, T0 + 10);
    assert_eq!(ended(&t).unwrap().deployment, Some(1));
    assert_eq!(pins_written(&t), Some(vec![2]), "1 is no longer pinned");
    assert_eq!(m.pins(), [2].into());
    let t = finish_run(&mut m, r2, T0 + 100);
    assert_eq!(pins_written(&t), Some(vec![]));
    assert!(m.pins().is_empty());
}

#[test]
fn a_reply_records_the_component_that_answered() {
    let mut m = machine();
    let Started::New(t) = start(&mut m, "r1", None, T0) else {
        panic!("new")
    };
    let c = sends(&t);
    let mut reply = done(&c[0]);
    reply
        .extensions
        .insert(protocol::COMPONENT.into(), "ab".repeat(32));
    m.on_event(&reply, T0 + 5).unwrap();
    let rec = &m.run("r1").unwrap().steps[sid_of(&c[0])];
    assert_eq!(rec.component.as_deref(), Some("ab".repeat(32).as_str()));
}
