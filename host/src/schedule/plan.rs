//! A schedule's decisions, apart from their effects: given the schedule,
//! what was stored of it, whether its last run still runs, and the time,
//! which tick (if any) starts a run, which are skipped or missed, and when
//! to look again. No I/O, no clock: tested by example and by property.
//!
//! **A tick is decided once**: `last_tick` only moves forward, and a
//! decision is for a tick after it; the tick's run is started with an
//! idempotency key that names the schedule and the tick, so a decision
//! made twice (a crash between the start and the write of the state, a
//! takeover) starts one run.

use serde::{Deserialize, Serialize};

use super::config::{CatchUp, Overlap, Schedule};
use crate::clock::rfc3339;

/// How late a tick may be decided and still count as on time (a busy or
/// slow host), ms: a later one was missed (no host drove the flows at the
/// time), and `catch_up` says what becomes of it.
pub const ON_TIME_MS: u64 = 60_000;

/// The most ticks counted one by one when many were missed (a cron
/// schedule; an interval's are counted by arithmetic).
const COUNT_AT_MOST: u64 = 100_000;

/// What is stored of a schedule (`schedule/NAME`), written by the host
/// that drives the flows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TickState {
    /// The last tick decided (started, skipped or missed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tick_ms: Option<u64>,
    /// When the schedule was first seen: its first tick is after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_ms: Option<u64>,
    /// The run the last started tick started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
    #[serde(default)]
    pub started: u64,
    /// Ticks skipped because the last run still ran (`overlap = "skip"`).
    #[serde(default)]
    pub skipped: u64,
    /// Ticks that passed with no host to drive them, not run.
    #[serde(default)]
    pub missed: u64,
    /// Why the last tick's run could not be started, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What an operator said of a schedule (`schedule-paused/NAME`), written
/// by the API of any host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pause {
    pub paused: bool,
    /// When it was paused or resumed (epoch ms).
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a schedule does now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Start a run for `tick`, with this idempotency key.
    Start { tick: u64, key: String },
    /// Skip `tick`: the last run still runs.
    Skip { tick: u64 },
    /// Nothing is due.
    Idle,
}

/// A decision, the state to store after it, and when to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub decision: Decision,
    pub state: TickState,
    /// The next tick, or `None` while paused.
    pub next: Option<u64>,
}

/// The idempotency key of the run of `schedule`'s `tick`.
pub fn tick_key(schedule: &str, tick: u64) -> String {
    format!("schedule:{schedule}:{}", rfc3339(tick))
}

/// Decide for `s` at `now`, with `state` as stored, `pause` as an operator
/// left it, and whether the run `state.last_run` names still runs.
pub fn plan(s: &Schedule, state: &TickState, pause: &Pause, now: u64, last_active: bool) -> Plan {
    let mut next_state = state.clone();
    if pause.paused {
        return Plan {
            decision: Decision::Idle,
            state: next_state,
            next: None,
        };
    }
    // From the last tick decided, or from when the schedule was first
    // seen or resumed (what passed before is not the schedule's).
    let since = match (state.last_tick_ms, state.seen_ms) {
        (Some(t), _) | (None, Some(t)) => t.max(pause.at_ms),
        (None, None) => {
            next_state.seen_ms = Some(now);
            now.max(pause.at_ms)
        }
    };
    let (Some(first), Some(latest)) = (s.when.next_after(since), s.when.latest_by(now)) else {
        return Plan {
            decision: Decision::Idle,
            state: next_state,
            next: s.when.next_after(since),
        };
    };
    if first > now || latest <= since {
        return Plan {
            decision: Decision::Idle,
            state: next_state,
            next: Some(first),
        };
    }
    // Ticks in (since, latest): passed over, whatever becomes of `latest`.
    next_state.missed += count_between(s, first, latest);
    next_state.last_tick_ms = Some(latest);
    let next = s.when.next_after(latest);
    let on_time = now - latest <= ON_TIME_MS;
    let decision = if !on_time && s.catch_up == CatchUp::None {
        next_state.missed += 1;
        Decision::Idle
    } else if s.overlap == Overlap::Skip && last_active {
        next_state.skipped += 1;
        Decision::Skip { tick: latest }
    } else {
        Decision::Start {
            tick: latest,
            key: tick_key(&s.name, latest),
        }
    };
    Plan {
        decision,
        state: next_state,
        next,
    }
}

/// How many ticks lie in [`first`, `latest`) (at most [`COUNT_AT_MOST`]).
fn count_between(s: &Schedule, first: u64, latest: u64) -> u64 {
    match s.when {
        super::config::When::Every(ms) => (latest - first) / ms,
        super::config::When::Cron(..) => {
            let (mut n, mut t) = (0, first);
            while t < latest && n < COUNT_AT_MOST {
                n += 1;
                match s.when.next_after(t) {
                    Some(next) => t = next,
                    None => break,
                }
            }
            n
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::schedule::config::When;

    fn every(ms: u64, overlap: Overlap, catch_up: CatchUp) -> Schedule {
        Schedule {
            name: "audit".into(),
            flow: "f".into(),
            when: When::Every(ms),
            input: serde_json::json!({}),
            overlap,
            catch_up,
        }
    }

    const T0: u64 = 1_796_601_600_000;

    #[test]
    fn a_new_schedule_starts_from_now_and_ticks_on_time() {
        let s = every(10_000, Overlap::Skip, CatchUp::One);
        let p = plan(
            &s,
            &TickState::default(),
            &Pause::default(),
            T0 + 3_000,
            false,
        );
        assert_eq!(p.decision, Decision::Idle, "nothing before it was seen");
        assert_eq!(
            (p.state.seen_ms, p.state.last_tick_ms),
            (Some(T0 + 3_000), None)
        );
        assert_eq!(p.next, Some(T0 + 10_000));
        let p = plan(&s, &p.state, &Pause::default(), T0 + 10_002, false);
        assert_eq!(
            p.decision,
            Decision::Start {
                tick: T0 + 10_000,
                key: "schedule:audit:2026-12-07T00:00:10.000Z".into()
            }
        );
        assert_eq!(p.next, Some(T0 + 20_000));
        // Decided: the same time again decides nothing more.
        let again = plan(&s, &p.state, &Pause::default(), T0 + 10_002, false);
        assert_eq!(again.decision, Decision::Idle);
    }

    #[test]
    fn overlap_skip_skips_while_the_last_run_runs() {
        let s = every(10_000, Overlap::Skip, CatchUp::One);
        let state = TickState {
            last_tick_ms: Some(T0),
            last_run: Some("r1".into()),
            ..TickState::default()
        };
        let p = plan(&s, &state, &Pause::default(), T0 + 10_000, true);
        assert_eq!(p.decision, Decision::Skip { tick: T0 + 10_000 });
        assert_eq!(p.state.skipped, 1);
        let allow = every(10_000, Overlap::Allow, CatchUp::One);
        let p = plan(&allow, &state, &Pause::default(), T0 + 10_000, true);
        assert!(matches!(p.decision, Decision::Start { .. }));
    }

    #[test]
    fn ticks_missed_while_down_are_caught_up_once_or_not_at_all() {
        let state = TickState {
            last_tick_ms: Some(T0),
            ..TickState::default()
        };
        // Hourly; down from T0 until 10 minutes past the third hour: the
        // ticks of hours 1 and 2 passed, and that of hour 3 is late.
        let now = T0 + 3 * 3_600_000 + 600_000;
        let one = every(3_600_000, Overlap::Skip, CatchUp::One);
        let p = plan(&one, &state, &Pause::default(), now, false);
        let tick = T0 + 3 * 3_600_000;
        assert_eq!(
            p.decision,
            Decision::Start {
                tick,
                key: tick_key("audit", tick)
            }
        );
        assert_eq!((p.state.missed, p.state.last_tick_ms), (2, Some(tick)));
        let none = every(3_600_000, Overlap::Skip, CatchUp::None);
        let p = plan(&none, &state, &Pause::default(), now, false);
        assert_eq!(p.decision, Decision::Idle);
        assert_eq!((p.state.missed, p.next), (3, Some(tick + 3_600_000)));
        // Late by less than ON_TIME_MS is on time, whatever catch_up says.
        let p = plan(&none, &state, &Pause::default(), tick + ON_TIME_MS, false);
        assert!(matches!(p.decision, Decision::Start { .. }), "{p:?}");
    }

    #[test]
    fn a_paused_schedule_starts_nothing_and_resumes_from_its_resume() {
        let s = every(10_000, Overlap::Skip, CatchUp::One);
        let state = TickState {
            last_tick_ms: Some(T0),
            ..TickState::default()
        };
        let paused = Pause {
            paused: true,
            at_ms: T0 + 1_000,
            by: Some("ops".into()),
            reason: None,
        };
        let p = plan(&s, &state, &paused, T0 + 600_000, false);
        assert_eq!((p.decision, p.next), (Decision::Idle, None));
        let resumed = Pause {
            paused: false,
            at_ms: T0 + 600_000,
            by: Some("ops".into()),
            reason: None,
        };
        // The ticks of the pause are not caught up.
        let p = plan(&s, &state, &resumed, T0 + 600_001, false);
        assert_eq!(p.decision, Decision::Idle);
        assert_eq!(p.next, Some(T0 + 610_000));
        assert_eq!(p.state.missed, 0);
    }

    proptest! {
        /// Whatever the times it is asked at (a host that wakes late, early,
        /// twice, or is down for hours), each tick is started at most once,
        /// in order, and with `catch_up = "one"` and nothing running, the
        /// latest tick due is always started.
        #[test]
        fn each_tick_starts_at_most_once(
            ms in 1_000u64..60_000,
            steps in prop::collection::vec(0u64..400_000, 1..60),
            allow in any::<bool>(),
        ) {
            let s = every(ms, if allow { Overlap::Allow } else { Overlap::Skip }, CatchUp::One);
            let (mut state, mut now) = (TickState::default(), T0);
            let mut started: Vec<u64> = Vec::new();
            for step in steps {
                now += step;
                let p = plan(&s, &state, &Pause::default(), now, false);
                if let Decision::Start { tick, key } = &p.decision {
                    prop_assert!(started.last().is_none_or(|l| tick > l), "{:?} after {:?}", tick, started);
                    let since = state.last_tick_ms.or(state.seen_ms);
                prop_assert!(*tick <= now && since.is_some_and(|l| *tick > l));
                    prop_assert_eq!(tick % ms, 0);
                    prop_assert_eq!(key, &tick_key("audit", *tick));
                    started.push(*tick);
                }
                if let Some(latest) = s.when.latest_by(now)
                    && state.last_tick_ms.or(state.seen_ms).is_some_and(|l| latest > l)
                {
                    let started_latest = matches!(p.decision, Decision::Start { tick, .. } if tick == latest);
                    prop_assert!(started_latest, "{:?} at {}", p.decision, now);
                }
                prop_assert!(p.state.last_tick_ms >= state.last_tick_ms);
                prop_assert!(p.next.is_some_and(|n| n > now));
                state = p.state;
            }
        }
    }
}
