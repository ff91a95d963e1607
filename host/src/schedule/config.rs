//! The `[schedules.NAME]` tables of `troupe.toml`, read and checked: which
//! flow, when (a cron pattern or an interval), with what input, and what
//! to do about overlaps and ticks missed while no host drove the flows.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::Deserialize;
use serde_json::Value;

/// A schedule's name: what the table, the API's path and the runs'
/// idempotency keys say.
pub fn is_schedule_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_lowercase())
        && s.len() <= 64
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

/// The shortest `every`.
pub const MIN_EVERY_MS: u64 = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScheduleTable {
    flow: String,
    cron: Option<String>,
    every: Option<String>,
    #[serde(default)]
    input: Option<toml::Value>,
    #[serde(default)]
    overlap: Overlap,
    #[serde(default)]
    catch_up: CatchUp,
}

/// A tick while the schedule's last run still runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Skip the tick (default).
    #[default]
    Skip,
    /// Start a run anyway.
    Allow,
}

/// Ticks that passed while no host drove the flows (a restart, an outage).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Start none of them.
    None,
    /// Start one run, for the latest (default).
    #[default]
    One,
}

/// When a schedule ticks.
#[derive(Debug, Clone)]
pub enum When {
    /// A cron pattern (5 fields, or 6 with seconds first), in UTC.
    Cron(Box<croner::Cron>, String),
    /// Every this many ms, counted from the Unix epoch (so every host,
    /// and every restart, agrees on the ticks).
    Every(u64),
}

impl When {
    /// The first tick strictly after `t` (epoch ms).
    pub fn next_after(&self, t: u64) -> Option<u64> {
        match self {
            When::Every(ms) => Some((t / ms + 1) * ms),
            When::Cron(cron, _) => {
                let at = chrono::DateTime::from_timestamp_millis(i64::try_from(t).ok()?)?;
                let next = cron.find_next_occurrence(&at, false).ok()?;
                u64::try_from(next.timestamp_millis()).ok()
            }
        }
    }

    /// The latest tick at or before `t`.
    pub fn latest_by(&self, t: u64) -> Option<u64> {
        match self {
            When::Every(ms) => Some(t / ms * ms),
            When::Cron(cron, _) => {
                let at = chrono::DateTime::from_timestamp_millis(i64::try_from(t).ok()?)?;
                let prev = cron.find_previous_occurrence(&at, true).ok()?;
                u64::try_from(prev.timestamp_millis()).ok()
            }
        }
    }

    /// As written: `cron "..."` or `every 10s`.
    pub fn describe(&self) -> String {
        match self {
            When::Cron(_, text) => format!("cron {text:?}"),
            When::Every(ms) => format!(
                "every {}",
                humantime::format_duration(std::time::Duration::from_millis(*ms))
            ),
        }
    }
}

/// One checked schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub flow: String,
    pub when: When,
    /// The input of each run (`{}` when the table gives none).
    pub input: Value,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
}

/// Check the `[schedules]` tables (the flows and the inputs are checked
/// against the app's flows and contracts later, by `troupe check` and at
/// start: see `check_against`).
pub(crate) fn check(tables: BTreeMap<String, ScheduleTable>) -> Result<Vec<Schedule>, String> {
    tables
        .into_iter()
        .map(|(name, t)| {
            let bad = |m: String| format!("[schedules.{name}] {m}");
            if !is_schedule_name(&name) {
                return Err(bad(
                    "a schedule's name is 1 to 64 lowercase letters, digits, `-` and `_`, \
                     starting with a letter"
                        .into(),
                ));
            }
            let when = match (&t.cron, &t.every) {
                (Some(c), None) => {
                    let when = croner::Cron::from_str(c)
                        .map(|cron| When::Cron(Box::new(cron), c.clone()))
                        .map_err(|e| bad(format!("cron {c:?}: {e}")))?;
                    // A pattern no date matches (30 February) would never tick.
                    if when.next_after(crate::clock::now_ms()).is_none() {
                        return Err(bad(format!(
                            "cron {c:?} matches no time: it would never tick"
                        )));
                    }
                    when
                }
                (None, Some(e)) => {
                    let ms = humantime::parse_duration(e)
                        .map_err(|err| {
                            bad(format!("every {e:?}: {err} (say \"30s\", \"5m\", \"1h\")"))
                        })?
                        .as_millis();
                    let ms =
                        u64::try_from(ms).map_err(|_| bad(format!("every {e:?} is too long")))?;
                    if ms < MIN_EVERY_MS {
                        return Err(bad(format!(
                            "every {e:?}: a schedule ticks at most once a second"
                        )));
                    }
                    When::Every(ms)
                }
                _ => return Err(bad("give `cron` or `every` (one of them)".into())),
            };
            let input = match t.input {
                None => Value::Object(Default::default()),
                Some(v) => serde_json::to_value(v).map_err(|e| bad(format!("input: {e}")))?,
            };
            Ok(Schedule {
                name,
                flow: t.flow,
                when,
                input,
                overlap: t.overlap,
                catch_up: t.catch_up,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Schedule, String> {
        let tables: BTreeMap<String, ScheduleTable> =
            toml::from_str::<BTreeMap<String, BTreeMap<String, ScheduleTable>>>(text)
                .map_err(|e| e.to_string())?
                .remove("schedules")
                .unwrap_or_default();
        check(tables).map(|mut v| v.remove(0))
    }

    #[test]
    fn a_schedule_ticks_by_cron_or_by_interval() {
        let s = one("[schedules.nightly]\nflow = \"f\"\ncron = \"30 2 * * *\"\n").unwrap();
        // 2026-12-07T00:00:00Z -> 02:30 that day.
        let midnight = 1_796_601_600_000;
        assert_eq!(s.when.next_after(midnight), Some(midnight + 9_000_000));
        assert_eq!(
            s.when.latest_by(midnight + 9_000_000),
            Some(midnight + 9_000_000)
        );
        assert_eq!((s.overlap, s.catch_up), (Overlap::Skip, CatchUp::One));
        assert_eq!(s.input, serde_json::json!({}));
        let s = one(
            "[schedules.audit]\nflow = \"f\"\nevery = \"10s\"\ninput = { below = 3 }\n\
             overlap = \"allow\"\ncatch_up = \"none\"\n",
        )
        .unwrap();
        assert_eq!(s.when.next_after(25_000), Some(30_000));
        assert_eq!(s.when.next_after(30_000), Some(40_000));
        assert_eq!(s.when.latest_by(39_999), Some(30_000));
        assert_eq!(s.input, serde_json::json!({"below": 3}));
        assert_eq!(s.when.describe(), "every 10s");
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        let e = one("[schedules.x]\nflow = \"f\"\ncron = \"61 * * * *\"\n").unwrap_err();
        assert!(e.contains("[schedules.x] cron \"61 * * * *\""), "{e}");
        let t = std::time::Instant::now();
        let e = one("[schedules.x]\nflow = \"f\"\ncron = \"0 0 30 2 *\"\n").unwrap_err();
        assert!(e.contains("matches no time"), "{e}");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            t.elapsed()
        );
        let e = one("[schedules.x]\nflow = \"f\"\n").unwrap_err();
        assert!(e.contains("give `cron` or `every`"), "{e}");
        let e = one("[schedules.x]\nflow = \"f\"\nevery = \"100ms\"\n").unwrap_err();
        assert!(e.contains("at most once a second"), "{e}");
        let e = one("[schedules.x]\nflow = \"f\"\nevery = \"soon\"\n").unwrap_err();
        assert!(e.contains("every \"soon\""), "{e}");
        let e = one("[schedules.X]\nflow = \"f\"\nevery = \"1s\"\n").unwrap_err();
        assert!(e.contains("a schedule's name"), "{e}");
        let e =
            one("[schedules.x]\nflow = \"f\"\nevery = \"1s\"\noverlap = \"queue\"\n").unwrap_err();
        assert!(e.contains("queue"), "{e}");
    }
}
