//! How often, and after how long, a failed message is tried again: the
//! policy a step's consumer group redelivers by (`[steps.NAME] retry`) and
//! a flow step retries by (`retry` in a flow file). Its own module, below
//! the configuration, the brokers and the flows that use it.

use std::time::Duration;

use serde::Deserialize;

/// Redelivery of a failed message: attempts in all, with exponential
/// backoff from `backoff_ms`, capped at `max_backoff_ms`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            backoff_ms: 100,
            max_backoff_ms: 30_000,
        }
    }
}

impl RetryPolicy {
    /// The wait before delivery number `attempt + 1`, after `attempt`
    /// deliveries failed.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(20);
        Duration::from_millis(
            self.backoff_ms
                .saturating_mul(factor)
                .min(self.max_backoff_ms),
        )
    }
}
