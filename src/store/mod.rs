//! DynamoDB adapters: each translates between items and core types, and SDK errors
//! into [`AwsError`](crate::aws::AwsError). No business rule lives here.

mod api_keys;
mod attributes;
mod idempotency;
mod rate_limits;
mod stream;
mod users;

pub use api_keys::ApiKeyStore;
pub use idempotency::{Claim, IdempotencyStore, LOCK_MS};
pub use rate_limits::RateLimitStore;
pub use stream::{StreamBatchResponse, StreamEvent, StreamItemFailure, StreamRecord};
pub use users::{
    EmailMatches, StoredUser, UserStore, WriteOutcome, EMAIL_INDEX, EMAIL_KEY, MAX_EMAIL_MATCHES,
};

use crate::aws::AwsError;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use std::collections::HashMap;
use std::fmt::Debug;

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

/// One item by partition key; `consistent` for reads that must see the latest write.
pub(crate) async fn get_by_key(
    client: &Client,
    table: &str,
    key: String,
    consistent: bool,
) -> Result<Option<Item>, AwsError> {
    let out = client
        .get_item()
        .table_name(table)
        .key(PARTITION_KEY, s(key))
        .consistent_read(consistent)
        .send()
        .await?;
    Ok(out.item)
}

/// A read of a key no item has: it opens the connection to DynamoDB, resolves the
/// credentials and the endpoint, and signs a request, so that the first real call of the
/// instance does none of that.
pub(crate) async fn open_connection(client: &Client, table: &str) -> Result<(), AwsError> {
    get_by_key(client, table, CONNECTION_PROBE_KEY.to_owned(), false).await?;
    Ok(())
}

/// No partition key of this service is this string: API key hashes are hex, user keys
/// hold the workspace and a separator.
const CONNECTION_PROBE_KEY: &str = "connection-probe";

/// The outcome of a conditional write: `true` if it was applied, `false` if its
/// condition did not hold; any other failure is an error.
pub(crate) fn condition_held<T, E, R>(result: Result<T, SdkError<E, R>>) -> Result<bool, AwsError>
where
    E: ProvideErrorMetadata + Debug,
    R: Debug,
{
    match result {
        Ok(_) => Ok(true),
        Err(err)
            if err.as_service_error().and_then(|e| e.code())
                == Some("ConditionalCheckFailedException") =>
        {
            Ok(false)
        }
        Err(err) => Err(err.into()),
    }
}

/// Partition key of per-workspace items: workspace ids never contain `#`.
pub(crate) fn workspace_key(workspace_id: &str, id: &str) -> String {
    format!("{workspace_id}#{id}")
}
