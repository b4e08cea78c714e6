//! API keys by the SHA-256 of the key (`pk`). The functions only read them; `vfctl`
//! writes them with [`item_from_record`].

use super::{get_by_key, get_n, get_s, n, s, Item, PARTITION_KEY};
use crate::app::ports::{ApiKeys, PortError};
use crate::domain::auth::{key_id, ApiKeyRecord, Scope};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

#[derive(Clone)]
pub struct ApiKeyStore {
    client: Client,
    table: String,
}

impl ApiKeyStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub async fn open_connection(&self) -> Result<(), PortError> {
        super::open_connection(&self.client, &self.table).await
    }
}

impl ApiKeys for ApiKeyStore {
    async fn get(&self, hash: &str) -> Result<Option<ApiKeyRecord>, PortError> {
        let item = get_by_key(&self.client, &self.table, hash.to_owned(), false).await?;
        Ok(item.as_ref().and_then(record_from_item))
    }
}

/// The item of a key with this hash.
pub fn item_from_record(hash: &str, record: &ApiKeyRecord) -> Item {
    let scopes = record
        .scopes
        .iter()
        .map(|scope| s(scope.as_str()))
        .collect();
    let mut item = Item::from([
        (PARTITION_KEY.to_owned(), s(hash)),
        ("key_id".to_owned(), s(&record.key_id)),
        ("workspace_id".to_owned(), s(&record.workspace_id)),
        ("scopes".to_owned(), AttributeValue::L(scopes)),
        ("created_at".to_owned(), n(record.created_at)),
        ("revoked".to_owned(), AttributeValue::Bool(record.revoked)),
    ]);
    if let Some(rate_limit) = record.rate_limit {
        item.insert("rate_limit".to_owned(), n(rate_limit));
    }
    item
}

/// The key an item holds; `None` for an item that is not a key.
pub fn record_from_item(item: &Item) -> Option<ApiKeyRecord> {
    let hash = get_s(item, PARTITION_KEY)?;
    let scopes = item
        .get("scopes")?
        .as_l()
        .ok()?
        .iter()
        .filter_map(|v| v.as_s().ok()?.parse::<Scope>().ok())
        .collect();
    Some(ApiKeyRecord {
        key_id: get_s(item, "key_id").map_or_else(|| key_id(hash), str::to_owned),
        workspace_id: get_s(item, "workspace_id")?.to_owned(),
        scopes,
        rate_limit: get_n(item, "rate_limit"),
        created_at: get_n(item, "created_at").unwrap_or_default(),
        revoked: item
            .get("revoked")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
    })
}
