//! DynamoDB adapters: items ⇄ domain types, SDK errors → port errors, a failed
//! condition as a type. No business rule lives here.
//!
//! Items are mapped by hand, not with serde_dynamo (which only turns the stream's
//! images into the SDK's items, `stream.rs`): every read here is lenient on purpose —
//! an attribute missing or of another type reads as absent and the item still reads (a
//! hand edit, an older layout, or a newer one during a deploy never stops a function),
//! which derived deserializers would refuse whole; numbers are written and read as their
//! exact text (`attributes.rs`), never through a double.

mod api_keys;
mod attributes;
mod audiences;
mod counters;
mod delivery_log;
mod idempotency;
mod lanes;
mod stream;
mod users;
mod webhooks;

pub use api_keys::ApiKeyStore;
pub use audiences::{AudienceStore, DUE_INDEX};
pub use counters::RateLimitStore;
pub use idempotency::IdempotencyStore;
pub use lanes::LaneStore;
pub use stream::{stream_image, ImageError};
pub use users::{
    FormatCount, ProfileFormat, UserStore, EMAIL_INDEX, EMAIL_KEY, UNSHARDED_USERS_INDEX,
    WORKSPACE_USERS_INDEX,
};
pub use webhooks::WebhookStore;

use crate::app::ports::PortError;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use std::collections::HashMap;

/// The partition key attribute of every table (see template.yaml).
pub const PARTITION_KEY: &str = "pk";
/// The TTL attribute (epoch seconds) of the tables whose items expire.
pub const TTL_ATTRIBUTE: &str = "expires_at";

pub type Item = HashMap<String, AttributeValue>;

/// BatchGetItem's limit on keys per call.
pub(crate) const MAX_BATCH_GET: usize = 100;

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
) -> Result<Option<Item>, PortError> {
    let out = client
        .get_item()
        .table_name(table)
        .key(PARTITION_KEY, s(key))
        .consistent_read(consistent)
        .send()
        .await?;
    Ok(out.item)
}

/// Items by key, strongly consistent, at most [`MAX_BATCH_GET`] keys: BatchGetItem leaves keys
/// unprocessed when throttled, so those are asked again, up to `keys.len()` times.
pub(crate) async fn batch_get_consistent(
    client: &Client,
    table: &str,
    keys: Vec<Item>,
) -> Result<Vec<Item>, PortError> {
    let attempts = keys.len();
    let mut found = Vec::with_capacity(keys.len());
    let mut wanted = keys;
    for _ in 0..attempts {
        let request = KeysAndAttributes::builder()
            .set_keys(Some(wanted))
            .consistent_read(true)
            .build()
            .map_err(|_| PortError::Refused("request not built".into()))?;
        let out = client
            .batch_get_item()
            .request_items(table, request)
            .send()
            .await?;
        found.extend(
            out.responses
                .into_iter()
                .flatten()
                .flat_map(|(_, items)| items),
        );
        match out.unprocessed_keys.and_then(|mut left| left.remove(table)) {
            Some(left) if !left.keys.is_empty() => wanted = left.keys,
            _ => return Ok(found),
        }
    }
    Err(PortError::Unavailable("keys left unprocessed".into()))
}

/// A read of a key no item has: it opens the connection to DynamoDB, resolves the
/// credentials and the endpoint, and signs a request, so that the first real call of the
/// instance does none of that.
pub(crate) async fn open_connection(client: &Client, table: &str) -> Result<(), PortError> {
    get_by_key(client, table, CONNECTION_PROBE_KEY.to_owned(), false).await?;
    Ok(())
}

/// No partition key of this service is this string: API key hashes are hex, user keys
/// hold the workspace and a separator.
const CONNECTION_PROBE_KEY: &str = "connection-probe";

/// What a conditional write did.
pub(crate) enum Condition {
    Held,
    /// The condition did not hold; the item as found, when the call asked for it
    /// (`ReturnValuesOnConditionCheckFailure`).
    Failed(Option<Item>),
}

/// The operations whose condition can fail, each with its own error type.
pub(crate) trait ConditionalError: aws_sdk_dynamodb::error::ProvideErrorMetadata {
    /// The item as found if this error is a failed condition, else the error itself.
    fn failed_condition(self) -> Result<Option<Item>, Self>
    where
        Self: Sized;
}

macro_rules! conditional_error {
    ($($error:ident),*) => {$(
        impl ConditionalError for $error {
            fn failed_condition(self) -> Result<Option<Item>, Self> {
                match self {
                    $error::ConditionalCheckFailedException(failed) => Ok(failed.item),
                    other => Err(other),
                }
            }
        }
    )*};
}
conditional_error!(PutItemError, UpdateItemError, DeleteItemError);

/// The outcome of a conditional write: held, or failed (with the item if asked for);
/// any other failure is an error.
pub(crate) fn condition<T, E: ConditionalError>(
    result: Result<T, SdkError<E, HttpResponse>>,
) -> Result<Condition, PortError> {
    match result {
        Ok(_) => Ok(Condition::Held),
        Err(SdkError::ServiceError(failure)) => {
            let status = failure.raw().status().as_u16();
            match failure.into_err().failed_condition() {
                Ok(item) => Ok(Condition::Failed(item)),
                Err(other) => Err(crate::aws::service_error(&other, status)),
            }
        }
        Err(err) => Err(err.into()),
    }
}

/// Whether a conditional write was applied.
pub(crate) fn condition_held<T, E: ConditionalError>(
    result: Result<T, SdkError<E, HttpResponse>>,
) -> Result<bool, PortError> {
    Ok(matches!(condition(result)?, Condition::Held))
}

/// A request the SDK's builder made, or why not (a required field missing: a bug).
pub(crate) fn built<T>(
    result: Result<T, aws_sdk_dynamodb::error::BuildError>,
) -> Result<T, PortError> {
    result.map_err(|_| PortError::Refused("request not built".into()))
}

/// Runs a transaction; `false` when a condition failed or another transaction
/// held an item (both mean: read again).
pub(crate) async fn transact(
    client: &Client,
    items: Vec<TransactWriteItem>,
) -> Result<bool, PortError> {
    Ok(transact_once(client, items).await? == Transacted::Done)
}

/// What a transaction did that DynamoDB did not refuse as an error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Transacted {
    Done,
    /// The conditions that failed, by the index of their item.
    ConditionFailed(Vec<usize>),
    /// Another transaction held one of its items: nothing failed, try again.
    Conflict,
}

/// Runs a transaction, telling a failed condition (and whose) from a conflict with
/// another. (The SDK gives each call a `ClientRequestToken` its own retries reuse, so a
/// retry of a transaction whose answer was lost succeeds again rather than failing on
/// its own writes.)
pub(crate) async fn transact_once(
    client: &Client,
    items: Vec<TransactWriteItem>,
) -> Result<Transacted, PortError> {
    let result = client
        .transact_write_items()
        .set_transact_items(Some(items))
        .send()
        .await;
    let failure = match result {
        Ok(_) => return Ok(Transacted::Done),
        Err(SdkError::ServiceError(failure)) => failure,
        Err(err) => return Err(err.into()),
    };
    let status = failure.raw().status().as_u16();
    let canceled = match failure.into_err() {
        TransactWriteItemsError::TransactionCanceledException(canceled) => canceled,
        other => return Err(crate::aws::service_error(&other, status)),
    };
    let codes: Vec<&str> = canceled
        .cancellation_reasons()
        .iter()
        .map(|reason| reason.code().unwrap_or("None"))
        .collect();
    let refusal = codes.iter().find(|code| {
        !matches!(
            **code,
            "None" | "ConditionalCheckFailed" | "TransactionConflict"
        )
    });
    match refusal {
        // Throttled: worth retrying, as any throttled call.
        Some(code @ (&"ThrottlingError" | &"ProvisionedThroughputExceeded")) => {
            Err(PortError::Unavailable((*code).to_owned()))
        }
        Some(code) => Err(PortError::Refused((*code).to_owned())),
        None => {
            let failed: Vec<usize> = codes
                .iter()
                .enumerate()
                .filter(|(_, code)| **code == "ConditionalCheckFailed")
                .map(|(index, _)| index)
                .collect();
            Ok(if failed.is_empty() {
                Transacted::Conflict
            } else {
                Transacted::ConditionFailed(failed)
            })
        }
    }
}

/// Partition key of per-workspace items: workspace ids never contain `#`.
pub(crate) fn workspace_key(workspace_id: &str, id: &str) -> String {
    format!("{workspace_id}#{id}")
}

/// Which of `shards` a user's items go to: stable across builds and machines (not
/// `DefaultHasher`'s random keys), FNV-1a.
fn user_shard(workspace_id: &str, external_user_id: &str, shards: u64) -> u64 {
    stable_shard(
        workspace_id
            .bytes()
            .chain([b'#'])
            .chain(external_user_id.bytes()),
        shards,
    )
}

/// Which of `shards` a key (its bytes) goes to, the same on every machine.
pub(crate) fn stable_shard(key: impl Iterator<Item = u8>, shards: u64) -> u64 {
    super::stable_hash(key) % shards
}
