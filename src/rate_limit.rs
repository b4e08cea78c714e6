//! Per-workspace rate limit, shared across api instances through DynamoDB.
//!
//! Rule: in any two consecutive one-second windows a workspace gets at most twice its
//! rate, so it sustains `rate`/s and bursts to `2 × rate` in a second (contract:
//! "default 100/s, bursts up to twice that"). Each instance leases tokens from the
//! shared counter in chunks of a tenth of the rate and spends them locally, so most
//! requests make no rate-limit call at all; only the request that finds the local
//! chunk empty waits for a lease.

use crate::aws::AwsError;
use crate::store::RateLimitStore;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allowed,
    Limited { retry_after_secs: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Allowance {
    window: i64,
    tokens: u32,
    used_in_previous_window: u64,
}

pub struct RateLimiter {
    store: RateLimitStore,
    allowances: Mutex<HashMap<String, Allowance>>,
}

/// Tokens one lease asks for: a tenth of the rate, at least one.
pub fn lease_size(rate: u32) -> u32 {
    (rate / 10).max(1)
}

/// The most tokens the window may already have handed out for a lease of `tokens`.
fn max_used_before(rate: u32, used_in_previous_window: u64, tokens: u32) -> i64 {
    2 * i64::from(rate) - i64::from(tokens) - used_in_previous_window as i64
}

impl RateLimiter {
    pub fn new(store: RateLimitStore) -> Self {
        Self {
            store,
            allowances: Mutex::new(HashMap::new()),
        }
    }

    pub async fn check(
        &self,
        workspace_id: &str,
        rate: u32,
        now_ms: i64,
    ) -> Result<RateDecision, AwsError> {
        let window = now_ms.div_euclid(1000);
        let known_previous = match self.take_local(workspace_id, window) {
            Ok(()) => return Ok(RateDecision::Allowed),
            Err(previous) => previous,
        };
        let used_in_previous_window = match known_previous {
            Some(used) => used,
            None => self.store.used(workspace_id, window - 1).await?,
        };
        let lease = lease_size(rate);
        // The full lease first; when it no longer fits, a single token may still.
        for tokens in if lease > 1 { vec![lease, 1] } else { vec![1] } {
            let max_before = max_used_before(rate, used_in_previous_window, tokens);
            if self
                .store
                .lease(workspace_id, window, tokens, max_before)
                .await?
            {
                self.grant(
                    workspace_id,
                    Allowance {
                        window,
                        tokens: tokens - 1,
                        used_in_previous_window,
                    },
                );
                return Ok(RateDecision::Allowed);
            }
        }
        self.grant(
            workspace_id,
            Allowance {
                window,
                tokens: 0,
                used_in_previous_window,
            },
        );
        Ok(RateDecision::Limited {
            retry_after_secs: 1,
        })
    }

    /// Spends a local token; otherwise tells what is known of the previous window.
    fn take_local(&self, workspace_id: &str, window: i64) -> Result<(), Option<u64>> {
        let mut allowances = self
            .allowances
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match allowances.get_mut(workspace_id) {
            Some(a) if a.window == window && a.tokens > 0 => {
                a.tokens -= 1;
                Ok(())
            }
            Some(a) if a.window == window => Err(Some(a.used_in_previous_window)),
            _ => Err(None),
        }
    }

    fn grant(&self, workspace_id: &str, allowance: Allowance) {
        let mut allowances = self
            .allowances
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        allowances.insert(workspace_id.to_owned(), allowance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_a_tenth_of_the_rate() {
        assert_eq!(lease_size(100), 10);
        assert_eq!(lease_size(5), 1);
    }

    #[test]
    fn two_windows_together_never_exceed_twice_the_rate() {
        // After an idle second the whole burst is available…
        assert_eq!(max_used_before(100, 0, 10), 190);
        // …after a full burst, nothing is until the window rolls over again.
        assert!(max_used_before(100, 200, 1) < 0);
        // Steady state at the rate leaves the rate for the next second.
        assert_eq!(max_used_before(100, 100, 1), 99);
    }
}
