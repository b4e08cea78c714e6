//! API keys by the SHA-256 of the key (`pk`). The functions only read them; `vfctl`
//! creates, lists and revokes them through the same store.

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

    /// Stores a new key; a hash that exists already is an error, never overwritten.
    pub async fn put(&self, hash: &str, record: &ApiKeyRecord) -> Result<(), PortError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_from_record(hash, record)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await?;
        Ok(())
    }

    /// All keys of a workspace. An admin operation on a small table: a filtered scan.
    pub async fn list(&self, workspace_id: &str) -> Result<Vec<ApiKeyRecord>, PortError> {
        Ok(self
            .scan("workspace_id = :v", workspace_id)
            .await?
            .iter()
            .filter_map(record_from_item)
            .collect())
    }

    /// Marks a key revoked, by its key id or hash; returns whether one was found.
    pub async fn revoke(&self, key_id_or_hash: &str) -> Result<bool, PortError> {
        let hashes: Vec<String> = if key_id_or_hash.starts_with("key_") {
            self.scan("key_id = :v", key_id_or_hash)
                .await?
                .iter()
                .filter_map(|item| item.get(PARTITION_KEY)?.as_s().ok().cloned())
                .collect()
        } else {
            vec![key_id_or_hash.to_owned()]
        };
        let mut found = false;
        for hash in hashes {
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(PARTITION_KEY, AttributeValue::S(hash))
                .update_expression("SET revoked = :t")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_values(":t", AttributeValue::Bool(true))
                .send()
                .await;
            match result {
                Ok(_) => found = true,
                Err(err)
                    if err
                        .as_service_error()
                        .is_some_and(|e| e.is_conditional_check_failed_exception()) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(found)
    }

    async fn scan(&self, filter: &str, value: &str) -> Result<Vec<Item>, PortError> {
        let items = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression(filter)
            .expression_attribute_values(":v", AttributeValue::S(value.to_owned()))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await?;
        Ok(items)
    }
}

impl ApiKeys for ApiKeyStore {
    async fn get(&self, hash: &str) -> Result<Option<ApiKeyRecord>, PortError> {
        let item = get_by_key(&self.client, &self.table, hash.to_owned(), false).await?;
        Ok(item.as_ref().and_then(record_from_item))
    }
}

/// The item of a key with this hash.
fn item_from_record(hash: &str, record: &ApiKeyRecord) -> Item {
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
fn record_from_item(item: &Item) -> Option<ApiKeyRecord> {
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
