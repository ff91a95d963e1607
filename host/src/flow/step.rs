//! One `[steps.ID]` table of a flow file read into a [`FlowStep`]: what it
//! does (a command, a hybrid step, a signal, a sleep, a for-each), what it
//! depends on, its condition, bounds, retries and compensation. What needs
//! the other steps (types, references, cycles) is checked after, in
//! `mod.rs`.

use std::collections::HashMap;

use super::condition::parse_condition;
use super::file::{AwaitFile, CompensateFile, StepFile};
use super::{
    Action, Compensation, DEFAULT_QUEUE_TIMEOUT_MS, DEFAULT_STEP_TIMEOUT_MS, FlowStep, INPUT, Wake,
    child, fan, line_of, signal, sleep,
};
use crate::contract::StepContract;
use crate::retry::RetryPolicy;

/// Step `id` (table `s`, at `line` of `text`), checked on its own; an
/// error is (line, message). `signals` is the signal names awaited so far.
pub(super) fn read(
    id: &str,
    s: &StepFile,
    line: usize,
    text: &str,
    contracts: &HashMap<String, &StepContract>,
    signals: &mut HashMap<String, String>,
) -> Result<FlowStep, (usize, String)> {
    if id == INPUT {
        return Err((
            line,
            "`input` is reserved for the run's input; name the step otherwise".into(),
        ));
    }
    if id.contains(['[', ']', '~', '.']) || id.is_empty() {
        return Err((
            line,
            format!(
                "step {id:?}: a step's id has no `[`, `]`, `~` or `.` (a status names \
                     for-each elements `ID[i]` and compensations `ID~undo`; a path, \
                     `ID.field`)"
            ),
        ));
    }
    let sleeps = s.sleep_ms.is_some() || s.until.is_some();
    let action = match (&s.step, &s.publish, &s.wait_for) {
        _ if sleeps => sleep::action(id, s).map_err(|m| (line, m))?,
        _ if s.flow.is_some() => {
            let callee = s.flow.as_ref().expect("matched").get_ref();
            child::action(id, s, callee).map_err(|m| (line, m))?
        }
        (Some(spanned), None, None) => {
            let step = spanned.get_ref();
            if !contracts.contains_key(step) {
                let mut known: Vec<&str> = contracts.keys().map(String::as_str).collect();
                known.sort();
                return Err((
                    line_of(text, spanned.span().start),
                    format!(
                        "step {id:?}: the app has no step {step:?} (it has: {})",
                        known.join(", ")
                    ),
                ));
            }
            Action::Command { step: step.clone() }
        }
        (None, Some(kind), Some(AwaitFile::Kind(done))) => Action::Hybrid {
            kind: kind.clone(),
            done: done.clone(),
            failed: s.fail_on.clone(),
        },
        (None, None, Some(AwaitFile::Signal(sig))) => {
            signal::signal_step(id, s, sig, signals).map_err(|m| (line, m))?
        }
        _ => {
            return Err((
                line,
                format!(
                    "step {id:?}: give either `step` (a command), `publish` and `await` \
                         (a hybrid step), `await = {{ signal = \"NAME\" }}` (a signal \
                         step), `sleep_ms` or `until` (a sleep step), or `flow` (a child flow \
                         step)"
                ),
            ));
        }
    };
    let queue_timeout_ms = match (&action, s.queue_timeout_ms) {
        (Action::Command { .. }, None) => DEFAULT_QUEUE_TIMEOUT_MS,
        (Action::Command { .. }, Some(0)) => {
            return Err((
                line,
                format!("step {id:?}: `queue_timeout_ms` must be at least 1"),
            ));
        }
        (Action::Command { .. }, Some(q)) => q,
        (_, None) => 0,
        (_, Some(_)) => {
            return Err((
                line,
                format!(
                    "step {id:?}: `queue_timeout_ms` is for commands; a hybrid or \
                         signal step sends none (its `timeout_ms` runs until what it awaits)"
                ),
            ));
        }
    };
    let signal_timeout = match &s.wait_for {
        Some(AwaitFile::Signal(sig)) => sig.timeout_ms,
        _ => None,
    };
    for (field, ms) in [
        ("timeout_ms", s.timeout_ms.or(signal_timeout)),
        ("queue_timeout_ms", s.queue_timeout_ms),
    ] {
        super::within_max(field, ms).map_err(|m| (line, format!("step {id:?}: {m}")))?;
    }
    if signal_timeout.is_some() && s.timeout_ms.is_some() {
        return Err((
            line,
            format!("step {id:?}: give `timeout_ms` once (in `await`, or beside it)"),
        ));
    }
    let fan = fan::parse(id, s, &action).map_err(|m| (line, m))?;
    // A for-each step's input is where its array is, a sleep's
    // until where its time is: if that was skipped, so is it.
    let input = match (&fan, &action) {
        (Some(f), _) => f.over.step.clone(),
        (_, Action::Sleep(Wake::Until(p))) => p.step.clone(),
        _ => s.input.clone().unwrap_or_else(|| INPUT.to_string()),
    };
    let mut after = s.after.clone();
    if input != INPUT {
        after.push(input.clone());
    }
    let when = match &s.when {
        Some(w) => {
            let at = line_of(text, w.span().start);
            let c = parse_condition(w.get_ref())
                .map_err(|m| (at, format!("step {id:?}: `when`: {m}")))?;
            after.push(c.step.clone());
            Some((c, at))
        }
        None => None,
    };
    after.sort();
    after.dedup();
    let compensate = s.compensate.as_ref().map(|c| match c {
        CompensateFile::Step(step) => Compensation {
            step: step.clone(),
            input: id.to_string(),
        },
        CompensateFile::Full { step, input } => Compensation {
            step: step.clone(),
            input: input.clone().unwrap_or_else(|| id.to_string()),
        },
    });
    // A signal step that timed out has nothing to try again; a child
    // run retried itself what it could.
    let once = matches!(action, Action::Signal { .. } | Action::Child { .. });
    // A child step's timeout is its child flow's, unless given (see
    // `child::wire`).
    let default_timeout = match action {
        Action::Child { .. } => 0,
        _ => DEFAULT_STEP_TIMEOUT_MS,
    };
    Ok(FlowStep {
        id: id.to_string(),
        action,
        input,
        after,
        when_line: when.as_ref().map_or(line, |(_, at)| *at),
        when: when.map(|(c, _)| c),
        timeout_ms: s.timeout_ms.or(signal_timeout).unwrap_or(default_timeout),
        queue_timeout_ms,
        retry: s.retry.clone().unwrap_or(RetryPolicy {
            max_attempts: if once { 1 } else { 3 },
            backoff_ms: 100,
            max_backoff_ms: 5_000,
        }),
        compensate,
        fan,
        output_kind: None,
        input_kind: String::new(),
        line,
    })
}
