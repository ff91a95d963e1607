//! Sleep steps and for-each steps, by example.

use super::*;
use crate::flow::{Fan, FieldPath, Tolerance, Wake};

pub(super) fn sleep_step(id: &str, wake: Wake, after: &[&str]) -> FlowStep {
    let mut s = fstep(id, INPUT, None, 3);
    s.action = FlowAction::Sleep(wake);
    s.after = after.iter().map(|a| a.to_string()).collect();
    s.output_kind = None;
    s.input_kind = String::new();
    s
}

pub(super) fn for_each(id: &str, over: &str, max_parallel: u32, tolerate: Tolerance) -> FlowStep {
    let mut s = fstep(id, INPUT, Some("undo-d"), 2);
    let over = FieldPath::parse(over).unwrap();
    s.input = over.step.clone();
    s.fan = Some(Fan {
        over,
        max_parallel,
        tolerate,
        element_type: None,
        output: Some(format!("{id}.done")),
    });
    s.output_kind = None;
    s.input_kind = "line".into();
    s
}

fn machine_of(steps: Vec<FlowStep>) -> Machine {
    let f = Flow {
        name: "f".into(),
        path: "flows/f.toml".into(),
        input: "order.placed".into(),
        timeout_ms: 3_600_000,
        steps,
        output: None,
    };
    Machine::new(FlowSets::one(1, vec![f]), SOURCE.into(), None, 1_000)
}

fn start_with(m: &mut Machine, id: &str, input: Value) -> Transition {
    let s = Start {
        id: id.into(),
        flow: "f".into(),
        input,
        key: None,
        trace: None,
        parent: None,
        deployment: None,
    };
    match m.start(s, T0).expect("a start") {
        Started::New(t) => t,
        Started::Existing(_) => panic!("new"),
    }
}

fn arms(t: &Transition) -> Vec<(u64, String)> {
    t.actions
        .iter()
        .filter_map(|a| match a {
            Action::Arm { at, sid } => Some((*at, sid.clone())),
            _ => None,
        })
        .collect()
}

/// The reply of a command whose output is `data`.
fn done_with(command: &Event, data: Value) -> Event {
    let out = Emitted {
        kind: "x.done".into(),
        subject: None,
        content_type: Some("application/json".into()),
        data: serde_json::to_vec(&data).unwrap(),
        schema: None,
    };
    completed_reply(command, "troupe://shop/step/x", &[out])
}

#[test]
fn a_sleep_waits_its_time_then_the_run_goes_on() {
    let mut b = fstep("b", "a", None, 1);
    b.after = vec!["a".into(), "wait".into()];
    let mut m = machine_of(vec![
        fstep("a", INPUT, None, 1),
        sleep_step("wait", Wake::After(5_000), &["a"]),
        b,
    ]);
    let t = start_with(&mut m, "r1", json!({}));
    let a = sends(&t);
    let t = m.on_event(&done(&a[0]), T0 + 10).unwrap();
    assert!(sends(&t).is_empty(), "b waits for the sleep");
    assert!(t.checkpoint(), "the sleep's wake time is written");
    assert!(arms(&t).contains(&(T0 + 5_010, "wait".to_string())));
    let rec = &m.run("r1").unwrap().steps["wait"];
    assert_eq!(
        (rec.state, rec.deadline_ms),
        (StepState::Sleeping, Some(T0 + 5_010))
    );
    // A timer that is not its wake time does nothing.
    assert!(m.on_timer(T0 + 5_000, "r1", "wait", T0 + 5_000).is_none());
    let t = m.on_timer(T0 + 5_010, "r1", "wait", T0 + 5_010).unwrap();
    assert_eq!(sends(&t).iter().map(sid_of).collect::<Vec<_>>(), ["b"]);
    let rec = &m.run("r1").unwrap().steps["wait"];
    assert_eq!(
        (rec.state, rec.duration_ms),
        (StepState::Completed, Some(5_000))
    );
    let t = m.on_event(&done(&sends(&t)[0]), T0 + 5_020).unwrap();
    assert_eq!(ended(&t).unwrap().state, RunState::Completed);
}

#[test]
fn a_sleep_until_a_time_reads_it_from_the_run_and_refuses_what_is_not_one() {
    let until = || Wake::Until(FieldPath::parse("input.at").unwrap());
    let mut m = machine_of(vec![sleep_step("wait", until(), &[])]);
    let t = start_with(&mut m, "r1", json!({"at": rfc3339(T0 + 2_000)}));
    assert_eq!(arms(&t).iter().filter(|a| a.1 == "wait").count(), 1);
    assert!(arms(&t).contains(&(T0 + 2_000, "wait".to_string())));
    // A time that has passed: no sleep at all.
    let t = start_with(&mut m, "r2", json!({"at": rfc3339(T0 - 1)}));
    assert_eq!(ended(&t).unwrap().state, RunState::Completed);
    // Not a time: the step fails, and says why, without a retry.
    let t = start_with(&mut m, "r3", json!({"at": "tomorrow"}));
    let run = ended(&t).unwrap();
    assert_eq!(run.state, RunState::Failed);
    assert!(
        run.error
            .as_deref()
            .unwrap()
            .contains("\"tomorrow\", not an RFC 3339 time"),
        "{run:?}"
    );
    assert_eq!(run.steps["wait"].attempts, 1);
    let t = start_with(&mut m, "r4", json!({}));
    assert!(
        ended(&t)
            .unwrap()
            .error
            .as_deref()
            .unwrap()
            .contains("`input.at` is missing")
    );
}

#[test]
fn a_cancel_ends_a_sleeping_run_and_undoes_what_completed() {
    let mut m = machine_of(vec![
        fstep("a", INPUT, Some("undo-a"), 1),
        sleep_step("wait", Wake::After(50_000), &["a"]),
    ]);
    let t = start_with(&mut m, "r1", json!({}));
    m.on_event(&done(&sends(&t)[0]), T0 + 10).unwrap();
    let ask = ctl::Ask {
        by: "ops".into(),
        reason: None,
    };
    let t = m
        .on_event(&ctl::event("r1", SOURCE, &Control::Cancel(ask)), T0 + 20)
        .unwrap();
    assert_eq!(sends(&t).iter().map(sid_of).collect::<Vec<_>>(), ["a~undo"]);
    assert_eq!(
        m.run("r1").unwrap().steps["wait"].state,
        StepState::Cancelled
    );
    // Its wake time no longer acts.
    assert!(!m.live(T0 + 50_010, "r1", "wait"));
}

#[test]
fn for_each_sends_at_most_max_parallel_and_outputs_in_the_inputs_order() {
    let mut m = machine_of(vec![for_each("d", "input.lines", 2, Tolerance::Count(1))]);
    let t = start_with(&mut m, "r1", json!({"lines": ["l0", "l1", "l2", "l3"]}));
    assert!(t.checkpoint());
    let first = sends(&t);
    assert_eq!(
        first.iter().map(sid_of).collect::<Vec<_>>(),
        ["d[0]", "d[1]"]
    );
    assert_eq!(first[0].data, br#""l0""#);
    assert_eq!(first[0].kind, "line");
    assert_eq!(first[0].extensions[crate::event::TARGET], "s-d");
    // The second answers first: the third goes out.
    let t = m
        .on_event(&done_with(&first[1], json!({"n": 1})), T0 + 5)
        .unwrap();
    let third = sends(&t);
    assert_eq!(third.iter().map(sid_of).collect::<Vec<_>>(), ["d[2]"]);
    assert_eq!(third[0].data, br#""l2""#);
    // The first fails for good (rejected): tolerated, the fourth goes out.
    let t = m
        .on_event(
            &failed(&first[0], FailureClass::Rejected, "bad line"),
            T0 + 6,
        )
        .unwrap();
    let fourth = sends(&t);
    assert_eq!(fourth.iter().map(sid_of).collect::<Vec<_>>(), ["d[3]"]);
    m.on_event(&done_with(&fourth[0], json!({"n": 3})), T0 + 7)
        .unwrap();
    let t = m
        .on_event(&done_with(&third[0], json!({"n": 2})), T0 + 8)
        .unwrap();
    let run = ended(&t).expect("the run ends");
    assert_eq!(run.state, RunState::Completed);
    let d = &run.steps["d"];
    assert_eq!(
        d.output.as_ref().unwrap().get(),
        r#"[null,{"n":1},{"n":2},{"n":3}]"#
    );
    assert_eq!(
        d.elements,
        Some(crate::orchestrator::run::Elements {
            total: 4,
            sent: 4,
            settled: 4,
            failed: 1
        })
    );
    assert!(
        d.errors.iter().any(|e| e.contains("element 0: bad line")),
        "{d:?}"
    );
    assert_eq!(run.steps["d[0]"].state, StepState::Failed);
}

#[test]
fn for_each_past_its_tolerance_fails_and_undoes_each_completed_element() {
    let mut m = machine_of(vec![for_each("d", "input.lines", 3, Tolerance::Count(0))]);
    let t = start_with(&mut m, "r1", json!({"lines": [10, 11, 12, 13]}));
    let sent = sends(&t);
    assert_eq!(sent.len(), 3);
    let t = m.on_event(&done_with(&sent[2], json!(2)), T0 + 1).unwrap();
    let fourth = sends(&t);
    assert_eq!(fourth.iter().map(sid_of).collect::<Vec<_>>(), ["d[3]"]);
    m.on_event(&done_with(&sent[0], json!(0)), T0 + 2).unwrap();
    let t = m
        .on_event(&failed(&sent[1], FailureClass::Rejected, "no"), T0 + 3)
        .unwrap();
    let run = m.run("r1").unwrap();
    assert_eq!(run.state, RunState::Compensating);
    assert_eq!(run.steps["d"].state, StepState::Failed);
    assert!(
        run.error.as_deref().unwrap().contains("element 1 failed"),
        "{run:?}"
    );
    // The latest completion is undone first, with its own output.
    let undo = sends(&t);
    assert_eq!(undo.iter().map(sid_of).collect::<Vec<_>>(), ["d[0]~undo"]);
    assert_eq!(undo[0].data, b"0");
    assert_eq!(undo[0].extensions[crate::event::TARGET], "undo-d");
    let t = m.on_event(&done(&undo[0]), T0 + 4).unwrap();
    let undo = sends(&t);
    assert_eq!(undo.iter().map(sid_of).collect::<Vec<_>>(), ["d[2]~undo"]);
    assert_eq!(undo[0].data, b"2");
    let t = m.on_event(&done(&undo[0]), T0 + 5).unwrap();
    assert!(ended(&t).is_none(), "the fourth element is still in flight");
    // It completes late: undone too, and then the run ends.
    let t = m
        .on_event(&done_with(&fourth[0], json!(3)), T0 + 6)
        .unwrap();
    let undo = sends(&t);
    assert_eq!(undo.iter().map(sid_of).collect::<Vec<_>>(), ["d[3]~undo"]);
    let t = m.on_event(&done(&undo[0]), T0 + 7).unwrap();
    assert_eq!(ended(&t).unwrap().state, RunState::Compensated);
}

#[test]
fn for_each_over_nothing_completes_and_over_no_array_fails() {
    let mut m = machine_of(vec![for_each("d", "input.lines", 2, Tolerance::Count(0))]);
    let t = start_with(&mut m, "r1", json!({"lines": []}));
    let run = ended(&t).unwrap();
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(run.steps["d"].output.as_ref().unwrap().get(), "[]");
    let t = start_with(&mut m, "r2", json!({"lines": "l0"}));
    let run = ended(&t).unwrap();
    assert_eq!(run.state, RunState::Failed);
    assert!(
        run.error.as_deref().unwrap().contains("not an array"),
        "{run:?}"
    );
    // More elements than a step takes: failed before any is sent.
    let many = vec![0; super::super::fan::MAX_ELEMENTS + 1];
    let t = start_with(&mut m, "r3", json!({ "lines": many }));
    assert!(sends(&t).is_empty());
    let run = ended(&t).unwrap();
    assert_eq!(run.steps["d"].state, StepState::Failed);
    assert!(
        run.error
            .as_deref()
            .unwrap()
            .contains("100001 elements, more than"),
        "{:?}",
        run.error
    );
    assert_eq!(run.steps.len(), 1, "no element record");
}

#[test]
fn elements_in_flight_are_sent_again_with_the_same_ids_after_a_restart() {
    let steps = || vec![for_each("d", "input.lines", 2, Tolerance::Count(0))];
    let mut m = machine_of(steps());
    let t = start_with(&mut m, "r1", json!({"lines": [1, 2, 3]}));
    assert!(t.checkpoint());
    // As written at the start (through JSON, as stored).
    let stored: RunRecord =
        serde_json::from_slice(&serde_json::to_vec(m.run("r1").unwrap()).unwrap()).unwrap();
    let first = sends(&t);
    let reply = done_with(&first[0], json!(1));
    let t = m.on_event(&reply, T0 + 5).unwrap();
    assert!(!t.checkpoint(), "the reply explains it");
    let third = sends(&t);
    // SIGKILL: the record written, and the reply in the log.
    let mut again = machine_of(steps());
    again.load(stored);
    assert_eq!(again.replay("r1", &[reply]), 1);
    let t = again.recover(T0 + 1_000).pop().unwrap();
    let mut resent: Vec<(String, String)> = sends(&t)
        .iter()
        .map(|e| (sid_of(e).to_string(), e.id.clone()))
        .collect();
    resent.sort();
    assert_eq!(
        resent,
        [
            ("d[1]".to_string(), first[1].id.clone()),
            ("d[2]".to_string(), third[0].id.clone())
        ]
    );
}

fn park_token(t: &Transition) -> Option<u64> {
    t.actions.iter().find_map(|a| match a {
        Action::Park { token } => Some(*token),
        _ => None,
    })
}

#[test]
fn a_run_that_only_sleeps_is_let_go_of_once_durable_and_read_back_before_it_wakes() {
    let mut m = machine_of(vec![
        fstep("a", INPUT, None, 1),
        sleep_step("wait", Wake::After(60_000), &["a"]),
        {
            let mut b = fstep("b", "a", None, 1);
            b.after = vec!["a".into(), "wait".into()];
            b
        },
    ]);
    let t = start_with(&mut m, "r1", json!({}));
    assert!(park_token(&t).is_none(), "a command is out");
    let t = m.on_event(&done(&sends(&t)[0]), T0 + 10).unwrap();
    let token = park_token(&t).expect("asleep for a minute: parked");
    assert!(t.checkpoint(), "with its record");
    let stored: RunRecord =
        serde_json::from_slice(&serde_json::to_vec(m.run("r1").unwrap()).unwrap()).unwrap();
    // Durable: let go of, all but its read-back time.
    assert!(m.evict("r1", token));
    assert!(m.run("r1").is_none() && m.is_parked("r1"));
    assert_eq!((m.active(), m.parked()), (0, 1));
    let read_back = T0 + 10 + 60_000 - park::PARK_LEAD_MS;
    assert_eq!(m.read_back_at("r1"), Some(read_back));
    assert!(m.live(read_back, "r1", ""));
    assert!(
        !m.live(T0 + 60_010, "r1", "wait"),
        "its other timers wait for the read-back"
    );
    assert!(m.on_timer(read_back, "r1", "", read_back).is_none());
    // Still pinned to its deployment while parked.
    assert_eq!(m.pins().into_iter().collect::<Vec<_>>(), [1]);
    // Read back: its timers again, and it wakes on time.
    let t = m.unpark(stored).expect("parked");
    assert!(arms(&t).contains(&(T0 + 60_010, "wait".to_string())));
    assert!(m.unpark(m.run("r1").unwrap().clone()).is_none(), "once");
    let t = m.on_timer(T0 + 60_010, "r1", "wait", T0 + 60_010).unwrap();
    assert_eq!(sends(&t).iter().map(sid_of).collect::<Vec<_>>(), ["b"]);
    assert!(park_token(&t).is_none());
}

#[test]
fn a_park_that_a_later_change_overtook_lets_nothing_go() {
    let mut m = machine_of(vec![
        fstep("a", INPUT, Some("undo-a"), 1),
        sleep_step("wait", Wake::After(60_000), &["a"]),
    ]);
    let t = start_with(&mut m, "r1", json!({}));
    let t = m.on_event(&done(&sends(&t)[0]), T0 + 10).unwrap();
    let token = park_token(&t).unwrap();
    // A cancel comes before the park's commit is durable.
    let ask = ctl::Ask {
        by: "ops".into(),
        reason: None,
    };
    m.on_event(&ctl::event("r1", SOURCE, &Control::Cancel(ask)), T0 + 20)
        .unwrap();
    assert!(
        !m.evict("r1", token),
        "the record it parked is not the run's any more"
    );
    assert_eq!(m.run("r1").unwrap().state, RunState::Compensating);
    // A sleep too short is not parked at all.
    let mut m = machine_of(vec![sleep_step("wait", Wake::After(1_000), &[])]);
    let t = start_with(&mut m, "r2", json!({}));
    assert!(park_token(&t).is_none());
}

#[test]
fn a_run_stored_asleep_is_parked_as_it_is_loaded() {
    let steps = || vec![sleep_step("wait", Wake::After(60_000), &[])];
    let mut m = machine_of(steps());
    start_with(&mut m, "r1", json!({}));
    let stored = m.run("r1").unwrap().clone();
    let mut again = machine_of(steps());
    again.load(stored.clone());
    assert!(!again.park_loaded("r1", T0 + 59_000), "it wakes too soon");
    let mut again = machine_of(steps());
    again.load(stored);
    assert!(again.park_loaded("r1", T0 + 1_000));
    assert_eq!(again.read_backs(), [("r1".to_string(), T0 + 60_000 - 500)]);
    assert!(again.recover(T0 + 1_000).is_empty(), "nothing to resume");
}
