//! Child flow steps by example: the parent's start of a child, the
//! child's end as the parent's reply, and a parent's failure, cancel,
//! timeout and compensation reaching its child. The orchestrator's part
//! between them (a control event through the broker) is played here by
//! handing the event to the same machine, as the driver does.

use super::*;
use crate::orchestrator::control::{self as ctl, Ask, Control};
use crate::orchestrator::run::Parent;

/// Parent flow `p`: `a`, then `k` (runs flow `c` with `a`'s output), then
/// `z` with `k`'s output. Child flow `c`: `x` (undone by `undo-x`), then
/// `y`, whose output is the run's.
fn flows() -> FlowSets {
    let mut k = fstep("k", "a", None, 1);
    k.action = FlowAction::Child { flow: "c".into() };
    k.output_kind = Some("y.done".into());
    k.timeout_ms = 10_000;
    let parent = Flow {
        name: "p".into(),
        path: "flows/p.toml".into(),
        input: "order.placed".into(),
        timeout_ms: 60_000,
        steps: vec![fstep("a", INPUT, None, 1), k, fstep("z", "k", None, 1)],
        output: Some("z".into()),
    };
    let mut x = fstep("x", INPUT, Some("undo-x"), 1);
    x.input_kind = "a.done".into();
    let child = Flow {
        name: "c".into(),
        path: "flows/c.toml".into(),
        input: "a.done".into(),
        timeout_ms: 5_000,
        steps: vec![x, fstep("y", "x", None, 1)],
        output: Some("y".into()),
    };
    FlowSets::one(1, vec![parent, child])
}

fn machine() -> Machine {
    Machine::new(flows(), SOURCE.into(), None, 1_000)
}

/// Start parent `r1`: its first transition.
fn start_parent(m: &mut Machine) -> Transition {
    let s = Start {
        id: "r1".into(),
        flow: "p".into(),
        input: json!({"order_id": "o1"}),
        key: None,
        trace: None,
        parent: None,
        deployment: None,
    };
    match m.start(s, T0) {
        Ok(Started::New(t)) => t,
        _ => panic!("new"),
    }
}

/// Start parent `r1` and complete `a`: the transition that starts `k`.
fn to_child(m: &mut Machine) -> Event {
    let t = start_parent(m);
    let a = sends(&t).remove(0);
    let out = Emitted {
        kind: "a.done".into(),
        subject: None,
        content_type: Some("application/json".into()),
        data: br#"{"lines": 2}"#.to_vec(),
        schema: None,
    };
    let reply = completed_reply(&a, "troupe://shop/step/a", &[out]);
    let t = m.on_event(&reply, T0 + 10).unwrap();
    let mut sent = sends(&t);
    assert_eq!(sent.len(), 1, "{sent:?}");
    sent.remove(0)
}

/// What the driver does with a child's start event: start the run it
/// names.
fn start_child(m: &mut Machine, e: &Event, now: u64) -> Transition {
    let Some(Control::Child(c)) = ctl::read(e) else {
        panic!("a child start: {e:?}")
    };
    let s = Start::child(protocol::run_of(e).to_string(), *c, None);
    match m.start(s, now).expect("a start") {
        Started::New(t) => t,
        Started::Existing(id) => panic!("{id} exists"),
    }
}

/// Run child `t`'s commands to the end (each completes, `y` with
/// `{"packed": 2}`); its final record.
fn finish_child(m: &mut Machine, t: Transition, now: u64) -> RunRecord {
    let mut queue = sends(&t);
    while let Some(cmd) = queue.pop() {
        let out = Emitted {
            kind: format!("{}.done", sid_of(&cmd)),
            subject: None,
            content_type: Some("application/json".into()),
            data: br#"{"packed": 2}"#.to_vec(),
            schema: None,
        };
        let t = m
            .on_event(&completed_reply(&cmd, "troupe://shop/step/x", &[out]), now)
            .unwrap();
        if let Some(end) = ended(&t) {
            return end.clone();
        }
        queue.extend(sends(&t));
    }
    panic!("the child did not end")
}

#[test]
fn a_child_run_starts_with_the_steps_input_and_its_output_is_the_steps() {
    let mut m = machine();
    let start = to_child(&mut m);
    let Some(Control::Child(c)) = ctl::read(&start) else {
        panic!("a child start")
    };
    assert_eq!(c.flow, "c");
    assert_eq!(c.input, json!({"lines": 2}), "the step's input");
    assert_eq!(c.deployment, Some(1), "the parent's deployment");
    let link = Parent {
        run: "r1".into(),
        step: "k".into(),
        attempt: 1,
        command: start.id.clone(),
    };
    assert_eq!(c.parent, link);
    // The child's id is its start's, and the parent's status links it.
    assert_eq!(protocol::run_of(&start), start.id);
    let k = &m.run("r1").unwrap().steps["k"];
    assert_eq!(k.child.as_deref(), Some(start.id.as_str()));
    assert_eq!(k.state, StepState::Dispatched);

    let t = start_child(&mut m, &start, T0 + 20);
    assert_eq!(m.run(&start.id).unwrap().parent.as_ref(), Some(&link));
    // A copy of the start (sent again after a crash) starts nothing new.
    let copy = Start {
        id: start.id.clone(),
        flow: "c".into(),
        input: json!({}),
        key: None,
        trace: None,
        parent: Some(link.clone()),
        deployment: Some(1),
    };
    assert!(matches!(
        m.start(copy, T0 + 21),
        Ok(Started::Existing(id)) if id == start.id
    ));
    let end = finish_child(&mut m, t, T0 + 30);
    assert_eq!(end.state, RunState::Completed);
    // Its end answers the parent: the output of `y`.
    let reply = m.end_reply(&end).expect("a reply");
    assert_eq!(protocol::run_of(&reply), "r1");
    assert_eq!(reply.causation_id(), Some(start.id.as_str()));
    assert_eq!(m.end_reply(&end).unwrap().id, reply.id, "one id per end");
    let t = m.on_event(&reply, T0 + 40).unwrap();
    let k = &m.run("r1").unwrap().steps["k"];
    assert_eq!(k.state, StepState::Completed);
    assert_eq!(k.output_type.as_deref(), Some("y.done"));
    assert_eq!(k.output.as_ref().unwrap().get(), r#"{"packed": 2}"#);
    // `z` takes it.
    let z = sends(&t).remove(0);
    assert_eq!(sid_of(&z), "z");
    assert_eq!(z.data, br#"{"packed": 2}"#);
    let t = m.on_event(&done(&z), T0 + 50).unwrap();
    assert_eq!(ended(&t).unwrap().state, RunState::Completed);
}

#[test]
fn a_parent_compensated_has_its_completed_child_undo_its_own_steps() {
    let mut m = machine();
    let start = to_child(&mut m);
    let t = start_child(&mut m, &start, T0 + 20);
    let child = finish_child(&mut m, t, T0 + 30);
    let t = m.on_event(&m.end_reply(&child).unwrap(), T0 + 40).unwrap();
    let z = sends(&t).remove(0);
    // `z` fails for good: `k` (its child completed) is undone.
    let t = m
        .on_event(&failed(&z, FailureClass::Rejected, "no"), T0 + 50)
        .unwrap();
    let undo = sends(&t).remove(0);
    let Some(Control::Compensate(link)) = ctl::read(&undo) else {
        panic!("a compensation of the child: {undo:?}")
    };
    assert_eq!(protocol::run_of(&undo), start.id, "to the child");
    assert_eq!(link.step, "k~undo");
    // The child is reopened and undoes `x`.
    let t = m.compensate(child.clone(), link.clone(), T0 + 60).unwrap();
    assert!(t.actions.iter().any(|a| matches!(a, Action::Reopen)));
    let child_now = m.run(&start.id).unwrap();
    assert_eq!(child_now.state, RunState::Compensating);
    assert!(child_now.error.as_deref().unwrap().contains("r1"));
    let undo_x = sends(&t).remove(0);
    assert_eq!(sid_of(&undo_x), "x~undo");
    let t = m.on_event(&done(&undo_x), T0 + 70).unwrap();
    let undone = ended(&t).unwrap().clone();
    assert_eq!(undone.state, RunState::Compensated);
    assert_eq!(undone.steps["x"].state, StepState::Compensated);
    // Its end answers the compensation; a copy of the compensation
    // finds it done and answers the same.
    let reply = m.end_reply(&undone).unwrap();
    assert_eq!(reply.causation_id(), Some(undo.id.as_str()));
    match m.compensate(undone.clone(), link, T0 + 75) {
        Err(Some(again)) => assert_eq!(again.id, reply.id, "the same answer"),
        other => panic!("answered again: {other:?}"),
    }
    let t = m.on_event(&reply, T0 + 80).unwrap();
    let end = ended(&t).expect("the parent ended");
    assert_eq!(end.steps["k"].state, StepState::Compensated);
    assert_eq!(end.state, RunState::Compensated);
}

#[test]
fn a_cancelled_parent_cancels_its_running_child_and_ends_when_it_has() {
    let mut m = machine();
    let start = to_child(&mut m);
    let t = start_child(&mut m, &start, T0 + 20);
    let x = sends(&t).remove(0);
    let t = m.on_event(&done(&x), T0 + 25).unwrap();
    assert_eq!(sid_of(&sends(&t)[0]), "y", "the child is half way");
    let ask = Ask {
        by: "ops".into(),
        reason: None,
    };
    let t = m
        .on_event(&ctl::event("r1", SOURCE, &Control::Cancel(ask)), T0 + 30)
        .unwrap();
    let cancel = sends(&t).remove(0);
    assert_eq!(protocol::run_of(&cancel), start.id);
    assert!(matches!(ctl::read(&cancel), Some(Control::Cancel(_))));
    assert_eq!(
        m.run("r1").unwrap().steps["k"].state,
        StepState::Dispatched,
        "the parent waits for its child to be undone"
    );
    // The child takes the cancel: `x` is undone, `y` superseded.
    let t = m.on_event(&cancel, T0 + 35).unwrap();
    let undo_x = sends(&t).remove(0);
    assert_eq!(sid_of(&undo_x), "x~undo");
    let t = m.on_event(&done(&undo_x), T0 + 40).unwrap();
    let child = ended(&t).unwrap().clone();
    assert_eq!(child.state, RunState::Cancelled);
    let t = m.on_event(&m.end_reply(&child).unwrap(), T0 + 45).unwrap();
    let end = ended(&t).expect("the parent ended");
    assert_eq!(end.state, RunState::Cancelled);
    assert_eq!(end.steps["k"].state, StepState::Failed);
    assert!(
        end.steps["k"].errors[0].contains("ended cancelled"),
        "{:?}",
        end.steps["k"]
    );
}

#[test]
fn a_child_step_that_times_out_cancels_its_child_and_a_child_that_timed_out_fails_it() {
    let mut m = machine();
    let start = to_child(&mut m);
    let k_deadline = m.run("r1").unwrap().steps["k"].deadline_ms.unwrap();
    let t = m.on_timer(k_deadline, "r1", "k", k_deadline).unwrap();
    let sent = sends(&t);
    let cancel = sent
        .iter()
        .find(|e| protocol::run_of(e) == start.id)
        .expect("the child is cancelled");
    assert!(matches!(ctl::read(cancel), Some(Control::Cancel(_))));
    let end = ended(&t).expect("the run failed");
    assert_eq!(
        end.steps["k"].state,
        StepState::TimedOut,
        "tried once by default"
    );
    assert_eq!(end.state, RunState::Failed);

    // A child that timed out: its parent's step fails with `timeout`.
    let mut m = machine();
    let start = to_child(&mut m);
    start_child(&mut m, &start, T0 + 20);
    let deadline = m.run(&start.id).unwrap().deadline_ms;
    let t = m.on_timer(deadline, &start.id, "", deadline).unwrap();
    let child = ended(&t).unwrap().clone();
    assert_eq!(child.state, RunState::TimedOut);
    let reply = m.end_reply(&child).unwrap();
    let Some(protocol::Reply::Failed(f)) = protocol::read_reply(&reply) else {
        panic!("a failure")
    };
    assert_eq!(f.class, FailureClass::Timeout);
    let t = m.on_event(&reply, deadline + 5).unwrap();
    assert_eq!(ended(&t).unwrap().state, RunState::Failed);
}

#[test]
fn a_failed_parent_cancels_its_running_child() {
    // `k` and a sibling `b` in parallel: `b` fails while the child runs.
    let mut sets = flows();
    let mut p = (**sets.flow(None, "p").unwrap()).clone();
    p.steps.insert(1, fstep("b", INPUT, None, 1));
    let c = (**sets.flow(None, "c").unwrap()).clone();
    sets = FlowSets::one(1, vec![p, c]);
    let mut m = Machine::new(sets, SOURCE.into(), None, 1_000);
    let first = sends(&start_parent(&mut m));
    let a = first.iter().find(|e| sid_of(e) == "a").unwrap();
    let b = first.iter().find(|e| sid_of(e) == "b").unwrap();
    let t = m.on_event(&done(a), T0 + 5).unwrap();
    let child = sends(&t).remove(0);
    let t = m
        .on_event(&failed(b, FailureClass::Rejected, "no"), T0 + 10)
        .unwrap();
    let cancel = sends(&t)
        .into_iter()
        .find(|e| protocol::run_of(e) == child.id)
        .expect("the child is cancelled");
    let Some(Control::Cancel(ask)) = ctl::read(&cancel) else {
        panic!("a cancel")
    };
    assert_eq!(ask.by, "run r1");
    assert!(ask.reason.unwrap().contains("step b failed"));
}

#[test]
fn a_child_whose_flow_is_not_loaded_is_not_said_to_be_undone() {
    let mut m = machine();
    let start = to_child(&mut m);
    let t = start_child(&mut m, &start, T0 + 20);
    let child = finish_child(&mut m, t, T0 + 30);
    // A machine without flow `c` (the child's deployment is gone).
    let p = (**flows().flow(None, "p").unwrap()).clone();
    let mut other = Machine::new(FlowSets::one(1, vec![p]), SOURCE.into(), None, 1_000);
    let link = Parent {
        run: "r1".into(),
        step: "k~undo".into(),
        attempt: 1,
        command: "undo-1".into(),
    };
    let Err(Some(reply)) = other.compensate(child, link, T0 + 40) else {
        panic!("answered at once")
    };
    let Some(protocol::Reply::Failed(f)) = protocol::read_reply(&reply) else {
        panic!("a failure, not a completion: {reply:?}")
    };
    assert!(f.message.contains("cannot be undone"), "{f}");
}
