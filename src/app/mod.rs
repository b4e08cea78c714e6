//! The use cases, as plain code over the ports: accept a write (single, batch, erase),
//! read users, apply accepted writes (the consumer), publish change events. Their order
//! and failure handling are unit-tested over the in-memory ports of `fakes`.

pub mod accept;
pub mod apply;
pub mod curate;
pub mod deliveries;
pub mod evaluate;
#[cfg(test)]
pub(crate) mod fakes;
mod idempotent;
pub mod ports;
pub mod publish;
pub mod rate_limit;
pub mod read;
mod rule_cache;
pub mod webhook_marks;
pub mod webhooks;

use crate::contract::RequestError;
use futures::future::BoxFuture;
use ports::PortError;
use std::sync::Arc;
use std::time::Duration;

/// How a use case waits (a retry's backoff, a call held for company): the runtime's
/// timer in the functions, a test's own clock where a test needs one.
pub type Timer = Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>;

/// Tokio's timer.
pub fn runtime_timer() -> Timer {
    Arc::new(|wait| Box::pin(tokio::time::sleep(wait)))
}

/// Why a use case did not do what was asked. `lambda::http::answers` maps each to the
/// contract's envelope.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("rate limited")]
    RateLimited { rate: u32, retry_after_secs: u64 },
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("idempotency key in use")]
    IdempotencyKeyInUse,
    #[error("idempotency key reused")]
    IdempotencyKeyReused,
    #[error("no such audience")]
    AudienceNotFound,
    #[error("too many audiences")]
    TooManyAudiences,
    #[error("no such webhook")]
    WebhookNotFound,
    #[error("too many webhooks")]
    TooManyWebhooks,
    /// A replay asked of a disabled endpoint.
    #[error("webhook disabled")]
    WebhookDisabled,
    /// `"include": ["profile"]` asked by a key that may not read profiles.
    #[error("profile needs users:read_pii")]
    ProfileNeedsPiiScope,
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Who is asking: a key's workspace and the rate it may send at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub workspace_id: String,
    /// Requests per second.
    pub rate: u32,
}

/// Indices of items, in order, grouped for batch calls that take at most `max_items`
/// items and `max_bytes` bytes each (an item over `max_bytes` goes alone).
pub fn call_groups(
    sizes: impl IntoIterator<Item = usize>,
    max_items: usize,
    max_bytes: usize,
) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0;
    for (index, size) in sizes.into_iter().enumerate() {
        let full = groups
            .last()
            .is_none_or(|group| group.len() == max_items || bytes + size > max_bytes);
        if full {
            groups.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(group) = groups.last_mut() {
            group.push(index);
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::call_groups;

    #[test]
    fn groups_hold_the_most_items_and_bytes_a_call_takes() {
        let sizes = |groups: Vec<Vec<usize>>| groups.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(sizes(call_groups(vec![100; 25], 10, 1000)), [10, 10, 5]);
        assert_eq!(sizes(call_groups(vec![300; 9], 10, 1000)), [3, 3, 3]);
        assert_eq!(sizes(call_groups(vec![10, 5000, 10], 10, 1000)), [1, 1, 1]);
        assert!(call_groups(Vec::new(), 10, 1000).is_empty());
    }
}
