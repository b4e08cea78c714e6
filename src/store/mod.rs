//! DynamoDB adapters: each translates between items and core types, and SDK errors
//! into [`AwsError`](crate::aws::AwsError). No business rule lives here.

mod api_keys;
mod idempotency;
mod rate_limits;
mod users;

pub use api_keys::ApiKeyStore;
pub use idempotency::{Claim, IdempotencyStore, LOCK_MS};
pub use rate_limits::RateLimitStore;
pub use users::{StoredUser, UserStore, WriteOutcome, EMAIL_INDEX, EMAIL_KEY};

use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

/// The partition key attribute of every table (see template.yaml).
pub const PARTITION_KEY: &str = "pk";
/// The TTL attribute (epoch seconds) of the tables whose items expire.
pub const TTL_ATTRIBUTE: &str = "expires_at";

pub(crate) type Item = HashMap<String, AttributeValue>;

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(crate) fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

pub(crate) fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Option<T> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

/// Partition key of per-workspace items: workspace ids never contain `#`.
pub(crate) fn workspace_key(workspace_id: &str, id: &str) -> String {
    format!("{workspace_id}#{id}")
}
