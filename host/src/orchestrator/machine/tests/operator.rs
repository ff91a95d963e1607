//! An operator's controls by example: cancel, redrive, signals.

use super::*;
use crate::flow::SignalSchema;
use crate::orchestrator::control::{self as ctl, Ask, Control, Signal};
use crate::orchestrator::run::SignalState;

fn ask() -> Ask {
    Ask {
        by: "ops".into(),
        reason: Some("why".into()),
    }
}

fn control(run: &str, c: Control) -> Event {
    ctl::event(run, SOURCE, &c)
}

#[test]
fn a_cancel_undoes_what_completed_waits_for_what_can_be_undone_and_supersedes_the_rest() {
    let mut m = machine();
    let Started::New(t) = start(&mut m, "r1", None, T0) else {
        panic!("new")
    };
    let first = sends(&t);
    let a = first.iter().find(|e| sid_of(e) == "a").unwrap();
    let b = first.iter().find(|e| sid_of(e) == "b").unwrap();
    m.on_event(&done(a), T0 + 5).unwrap();
    // `b` (undoable) is in flight when the cancel comes.
    let t = m
        .on_event(&control("r1", Control::Cancel(ask())), T0 + 10)
        .unwrap();
    assert!(t.checkpoint());
    let run = m.run("r1").unwrap();
    assert_eq!(run.state, RunState::Compensating);
    assert_eq!(run.cancelled.as_ref().unwrap().by, "ops");
    assert_eq!(run.steps["c"].state, StepState::Cancelled);
    assert_eq!(run.steps["b"].state, StepState::Dispatched, "waited for");
    let undo_a: Vec<Event> = sends(&t);
    assert_eq!(undo_a.iter().map(sid_of).collect::<Vec<_>>(), ["a~undo"]);
    // A copy of the cancel: nothing.
    assert!(
        m.on_event(&control("r1", Control::Cancel(ask())), T0 + 11)
            .is_none()
    );
    // `b` completes: it is undone too, then the run ends cancelled.
    let t = m.on_event(&done(b), T0 + 20).unwrap();
    assert!(
        m.run("r1").unwrap().steps["b"]
            .reason
            .as_deref()
            .unwrap()
            .contains("after the run was cancelled")
    );
    let mut undos: Vec<Event> = sends(&t);
    undos.extend(undo_a);
    let mut end = None;
    for u in undos {
        if let Some(t) = m.on_event(&done(&u), T0 + 30) {
            for more in sends(&t) {
                if let Some(t) = m.on_event(&done(&more), T0 + 40) {
                    end = ended(&t).cloned().or(end);
                }
            }
            end = ended(&t).cloned().or(end);
        }
    }
    let end = end.expect("the run ended");
    assert_eq!(end.state, RunState::Cancelled);
    assert_eq!(end.steps["a"].state, StepState::Compensated);
    assert_eq!(end.steps["b"].state, StepState::Compensated);
    assert!(
        end.error
            .as_deref()
            .unwrap()
            .contains("cancelled by ops: why")
    );
}

/// `a` then `s` (awaits signal `go`, its data `{"ok": boolean}`) then `c`
/// (only if `s.ok == true`).
fn signal_flow() -> Flow {
    let mut s = fstep("s", INPUT, None, 1);
    s.action = FlowAction::Signal {
        name: "go".into(),
        schema: SignalSchema::compile(
            json!({"type": "object", "properties": {"ok": {"type": "boolean"}}}),
        )
        .unwrap(),
    };
    s.after = vec!["a".into()];
    s.output_kind = None;
    s.queue_timeout_ms = 0;
    let mut c = fstep("c", "a", None, 1);
    c.after = vec!["a".into(), "s".into()];
    c.when = Some(crate::flow::Condition {
        step: "s".into(),
        path: vec!["ok".into()],
        op: crate::flow::Op::Eq,
        value: json!(true),
        text: "s.ok == true".into(),
    });
    Flow {
        name: "f".into(),
        path: "flows/f.toml".into(),
        input: "order.placed".into(),
        timeout_ms: 60_000,
        steps: vec![fstep("a", INPUT, None, 1), s, c],
        output: Some("c".into()),
    }
}

fn go(data: Value) -> Control {
    Control::Signal(Signal {
        name: "go".into(),
        by: "ops".into(),
        data,
    })
}

#[test]
fn a_signal_before_its_step_is_kept_and_taken_when_the_run_gets_there() {
    let mut m = Machine::new(
        FlowSets::one(1, vec![signal_flow()]),
        SOURCE.into(),
        None,
        1_000,
    );
    let Started::New(t) = start(&mut m, "r1", None, T0) else {
        panic!("new")
    };
    let a = sends(&t).remove(0);
    // Sent while `a` runs: kept.
    let early = control("r1", go(json!({"ok": true})));
    let t = m.on_event(&early, T0 + 1).unwrap();
    assert!(t.checkpoint());
    let run = m.run("r1").unwrap();
    assert_eq!(run.signals[0].state, SignalState::Kept);
    assert_eq!(run.signals[0].step.as_deref(), Some("s"));
    // The same event again: nothing new.
    assert!(m.on_event(&early, T0 + 2).is_none());
    assert_eq!(m.run("r1").unwrap().signals.len(), 1);
    // Another, while one is kept: ignored, and said.
    m.on_event(&control("r1", go(json!({"ok": false}))), T0 + 3)
        .unwrap();
    assert_eq!(m.run("r1").unwrap().signals[1].state, SignalState::Ignored);
    // `a` completes: `s` takes the kept signal at once, and `c` runs.
    let t = m.on_event(&done(&a), T0 + 10).unwrap();
    let run = m.run("r1").unwrap();
    assert_eq!(run.steps["s"].state, StepState::Completed);
    assert_eq!(
        run.steps["s"].output.as_ref().unwrap().get(),
        r#"{"ok":true}"#
    );
    assert_eq!(
        run.steps["s"].output_type.as_deref(),
        Some("troupe.signal.go")
    );
    assert_eq!(run.signals[0].state, SignalState::Delivered);
    assert_eq!(sends(&t).iter().map(sid_of).collect::<Vec<_>>(), ["c"]);
    assert!(t.checkpoint());
}

#[test]
fn a_signal_to_a_waiting_step_is_its_output_and_a_later_one_is_ignored() {
    let mut m = Machine::new(
        FlowSets::one(1, vec![signal_flow()]),
        SOURCE.into(),
        None,
        1_000,
    );
    let Started::New(t) = start(&mut m, "r1", None, T0) else {
        panic!("new")
    };
    let a = sends(&t).remove(0);
    let t = m.on_event(&done(&a), T0 + 10).unwrap();
    assert!(sends(&t).is_empty(), "a signal step sends nothing");
    assert_eq!(m.run("r1").unwrap().steps["s"].state, StepState::Dispatched);
    let t = m
        .on_event(&control("r1", go(json!({"ok": false}))), T0 + 20)
        .unwrap();
    // `c`'s condition is false: skipped, and the run ends.
    let end = ended(&t).expect("the run ended");
    assert_eq!(end.state, RunState::Completed);
    assert_eq!(end.steps["c"].state, StepState::Skipped);
    assert_eq!(end.signals[0].state, SignalState::Delivered);
}

#[test]
fn a_signal_step_that_waits_past_its_timeout_fails_the_run() {
    let mut m = Machine::new(
        FlowSets::one(1, vec![signal_flow()]),
        SOURCE.into(),
        None,
        1_000,
    );
    let Started::New(t) = start(&mut m, "r1", None, T0) else {
        panic!("new")
    };
    let a = sends(&t).remove(0);
    m.on_event(&done(&a), T0 + 10).unwrap();
    let at = m.run("r1").unwrap().steps["s"].deadline_ms.unwrap();
    assert_eq!(
        at,
        T0 + 10 + 1_000,
        "its timeout_ms, no queue and no reply grace"
    );
    let t = m.on_timer(at, "r1", "s", at).unwrap();
    let end = ended(&t).expect("the run ended");
    assert_eq!(end.steps["s"].state, StepState::TimedOut);
    assert_eq!(end.steps["s"].attempts, 1);
}

#[test]
fn a_redriven_run_sends_its_failed_step_again_under_new_ids_from_attempt_one() {
    let mut m = Machine::new(
        FlowSets::one(1, vec![signal_flow()]),
        SOURCE.into(),
        None,
        1_000,
    );
    let Started::New(t) = start(&mut m, "r1", None, T0) else {
        panic!("new")
    };
    let a = sends(&t).remove(0);
    let t = m
        .on_event(&failed(&a, FailureClass::Rejected, "no"), T0 + 5)
        .unwrap();
    let failed_run = ended(&t).expect("ended").clone();
    assert_eq!(failed_run.state, RunState::Failed);
    let mut t = m
        .redrive(failed_run.clone(), ask(), "ctl-1", T0 + 100)
        .unwrap();
    assert!(t.actions.iter().any(|a| matches!(a, Action::Reopen)));
    let again = sends(&t).remove(0);
    assert_eq!(sid_of(&again), "a");
    assert_eq!(again.extensions[ATTEMPT], "1");
    assert_ne!(again.id, a.id, "a new command id");
    let run = m.run("r1").unwrap();
    assert_eq!(run.state, RunState::Running);
    assert_eq!(run.steps["a"].errors.len(), 1, "the earlier error is kept");
    assert_eq!(run.redrives[0].event, "ctl-1");
    // The same redrive again, or a redrive of an active run: refused.
    assert!(
        m.redrive(failed_run.clone(), ask(), "ctl-1", T0 + 101)
            .is_err()
    );
    t.actions.clear();
    let t = m.on_event(&done(&again), T0 + 110).unwrap();
    assert_eq!(
        m.run("r1").unwrap().steps["s"].state,
        StepState::Dispatched,
        "{t:?}"
    );
    // A compensated run is not redriven.
    let mut compensated = failed_run;
    compensated.state = RunState::Compensated;
    compensated.id = "r2".into();
    let why = m
        .redrive(compensated, ask(), "ctl-2", T0 + 200)
        .unwrap_err();
    assert!(why.contains("compensated"), "{why}");
}

#[test]
fn a_step_with_a_compensation_that_times_out_while_undone_is_tried_again_to_be_undone() {
    let mut f = flow();
    f.steps[1].retry.max_attempts = 2; // `b`, undone by `undo-b`
    let mut m = Machine::new(FlowSets::one(1, vec![f]), SOURCE.into(), None, 1_000);
    let Started::New(t) = start(&mut m, "r1", None, T0) else {
        panic!("new")
    };
    let first = sends(&t);
    let a = first.iter().find(|e| sid_of(e) == "a").unwrap();
    m.on_event(&failed(a, FailureClass::Rejected, "no"), T0 + 5)
        .unwrap();
    // `b` was in flight; its attempt times out: what it did is unknown.
    let at = m.run("r1").unwrap().steps["b"].deadline_ms.unwrap();
    m.on_timer(at, "r1", "b", at).unwrap();
    let rec = &m.run("r1").unwrap().steps["b"];
    assert_eq!(rec.state, StepState::Backoff, "tried again: {rec:?}");
    let retry_at = rec.deadline_ms.unwrap();
    let t = m.on_timer(retry_at, "r1", "b", retry_at).unwrap();
    let again = sends(&t).remove(0);
    assert_eq!(again.extensions[ATTEMPT], "2");
    // It did what it did: now it is undone, and the run ends.
    let t = m.on_event(&done(&again), retry_at + 5).unwrap();
    let undo = sends(&t).remove(0);
    assert_eq!(sid_of(&undo), "b~undo");
    let t = m.on_event(&done(&undo), retry_at + 10).unwrap();
    let end = ended(&t).expect("ended");
    assert_eq!(end.steps["b"].state, StepState::Compensated);
}
