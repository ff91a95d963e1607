//! How long the broker keeps what it no longer needs: the `[retention]`
//! table of `troupe.toml`.
//!
//! Each backend prunes by it (the embedded broker in `embedded/prune.rs`);
//! what is never pruned, whatever the table says, is written in
//! `docs/operations.md` and checked by the backends: an event with a
//! pending delivery, a dead letter younger than `dead_letters`, an active
//! run and the events its recovery replays.

use std::time::Duration;

use serde::Deserialize;

/// The `[retention]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    /// Settled events (and so the traces they make) older than this, by
    /// the time they were stored.
    pub events: Duration,
    /// Ended runs' records, this long after they ended.
    pub runs: Duration,
    /// Dead letters, this long after they were dead-lettered.
    pub dead_letters: Duration,
    /// The second bound: past this many bytes of store, the oldest
    /// settled events and ended runs go whatever their age (dead letters
    /// within their age, pending deliveries and active runs stay).
    pub max_store: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            events: Duration::from_secs(24 * 3600),
            runs: Duration::from_secs(7 * 24 * 3600),
            dead_letters: Duration::from_secs(30 * 24 * 3600),
            max_store: 4 << 30,
        }
    }
}

/// The smallest `max_store`: less would prune what a busy minute writes.
pub const MIN_STORE: u64 = 16 << 20;

/// What `troupe.toml` says, before it is checked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionTable {
    events: Option<String>,
    runs: Option<String>,
    dead_letters: Option<String>,
    max_store: Option<String>,
}

impl RetentionTable {
    /// The retention it describes, defaults filled in; the error names
    /// the field.
    pub fn check(self) -> Result<Retention, String> {
        let d = Retention::default();
        let age = |name: &str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => match humantime::parse_duration(&s) {
                Ok(age) if age >= Duration::from_secs(1) => Ok(age),
                Ok(_) => Err(format!("[retention] {name} = {s:?}: at least 1s")),
                Err(e) => Err(format!(
                    "[retention] {name} = {s:?}: not a duration ({e}; e.g. \"90s\", \"12h\", \"7d\")"
                )),
            },
        };
        let max_store = match self.max_store {
            None => d.max_store,
            Some(s) => {
                let n =
                    parse_size(&s).map_err(|e| format!("[retention] max_store = {s:?}: {e}"))?;
                if n < MIN_STORE {
                    return Err(format!(
                        "[retention] max_store = {s:?}: at least {} MiB",
                        MIN_STORE >> 20
                    ));
                }
                n
            }
        };
        Ok(Retention {
            events: age("events", self.events, d.events)?,
            runs: age("runs", self.runs, d.runs)?,
            dead_letters: age("dead_letters", self.dead_letters, d.dead_letters)?,
            max_store,
        })
    }
}

/// A size such as `512MiB`, `4GiB`, `2GB` or `1000000` (bytes).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| "not a size (e.g. \"512MiB\", \"4GiB\")".to_string())?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        u => {
            return Err(format!(
                "unknown unit {u:?} (B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
            ));
        }
    };
    Ok((num * scale as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(toml: &str) -> Result<Retention, String> {
        toml::from_str::<RetentionTable>(toml)
            .map_err(|e| e.to_string())?
            .check()
    }

    #[test]
    fn defaults_fill_what_is_not_said() {
        let r = table("events = \"90s\"").unwrap();
        assert_eq!(r.events, Duration::from_secs(90));
        assert_eq!(r.runs, Retention::default().runs);
        assert_eq!(table("").unwrap(), Retention::default());
    }

    #[test]
    fn sizes_and_ages_are_read_with_units() {
        let r = table("runs = \"2h 30m\"\ndead_letters = \"30d\"\nmax_store = \"1.5GiB\"").unwrap();
        assert_eq!(r.runs, Duration::from_secs(9000));
        assert_eq!(r.dead_letters, Duration::from_secs(30 * 86400));
        assert_eq!(r.max_store, 3 << 29);
        assert_eq!(parse_size("20000000").unwrap(), 20_000_000);
        assert_eq!(parse_size("64 MB").unwrap(), 64_000_000);
    }

    #[test]
    fn bad_values_are_named() {
        let e = table("events = \"soon\"").unwrap_err();
        assert!(
            e.contains("[retention] events") && e.contains("not a duration"),
            "{e}"
        );
        let e = table("runs = \"10ms\"").unwrap_err();
        assert!(e.contains("at least 1s"), "{e}");
        let e = table("max_store = \"1MiB\"").unwrap_err();
        assert!(e.contains("at least 16 MiB"), "{e}");
        let e = table("max_store = \"4 parsecs\"").unwrap_err();
        assert!(e.contains("unknown unit"), "{e}");
        let e = table("event = \"1d\"").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }
}
