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

#[cfg(test)]
mod tests {
    #[test]
    fn times_read_back_to_the_millisecond() {
        let t = 1_796_130_256_949;
        assert_eq!(super::epoch_ms(&super::rfc3339(t)), Some(t));
        assert_eq!(super::epoch_ms("yesterday"), None);
    }
}
