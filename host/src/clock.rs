//! Wall-clock time as the host records it: epoch milliseconds, and RFC 3339
//! text with milliseconds (run records, timers, dead-letter times). The
//! orchestrator's machine never reads the clock; its driver does, here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in epoch ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Epoch ms as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Epoch ms of an RFC 3339 time, if it is one.
pub fn epoch_ms(time: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(time)
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// A point in time as an operator writes one (`--since 1h`, `since=...`):
/// an RFC 3339 time, or a duration before `now`: a number of 1 to 6
/// digits and a unit, `ms`, `s`, `m`, `h`, `d` or `w` (`90s`, `15m`, `2d`;
/// [`WHEN_PATTERN`] says the same for the OpenAPI document). Epoch ms.
pub fn parse_when(text: &str, now: u64) -> Result<u64, String> {
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(text, rfc3339) {
        return Ok(u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0));
    }
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let unit_ms = match &text[digits..] {
        "ms" => Some(1),
        "s" => Some(1_000),
        "m" => Some(60_000),
        "h" => Some(3_600_000),
        "d" => Some(86_400_000),
        "w" => Some(604_800_000),
        _ => None,
    };
    match (text[..digits].parse::<u64>(), unit_ms) {
        (Ok(n), Some(unit)) if (1..=6).contains(&digits) => Ok(now.saturating_sub(n * unit)),
        _ => Err(format!(
            "{:?} is neither an RFC 3339 time (2026-12-07T03:00:00Z) nor a duration before now \
             (90s, 15m, 1h, 2d: 1 to 6 digits and ms, s, m, h, d or w)",
            crate::text::clean(text, 80)
        )),
    }
}

/// What [`parse_when`] takes as a duration, as a regular expression.
pub const WHEN_PATTERN: &str = "^[0-9]{1,6}(ms|s|m|h|d|w)$";

#[cfg(test)]
mod tests {
    #[test]
    fn a_when_is_a_time_or_a_duration_before_now() {
        let now = 1_796_130_256_949;
        assert_eq!(super::parse_when("1h", now), Ok(now - 3_600_000));
        assert_eq!(
            super::parse_when(&super::rfc3339(now - 5), now),
            Ok(now - 5)
        );
        assert!(
            super::parse_when("soon", now)
                .unwrap_err()
                .contains("neither")
        );
    }

    #[test]
    fn times_read_back_to_the_millisecond() {
        let t = 1_796_130_256_949;
        assert_eq!(super::epoch_ms(&super::rfc3339(t)), Some(t));
        assert_eq!(super::epoch_ms("yesterday"), None);
    }
}
