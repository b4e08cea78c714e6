//! `vfctl keys`: API keys in the stack's keys table, written in the item format the
//! api function reads (`vibefollow_users::aws::dynamodb::api_keys`). Only the SHA-256 of
//! a key is stored; the key itself is printed once, at creation.

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use vibefollow_users::app::ports::PortError;
use vibefollow_users::aws::dynamodb::api_keys::{item_from_record, record_from_item};
use vibefollow_users::aws::dynamodb::{Item, PARTITION_KEY};
use vibefollow_users::domain::auth::ApiKeyRecord;

pub struct KeyTable {
    client: Client,
    table: String,
}

impl KeyTable {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
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
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression(filter)
                .expression_attribute_values(":v", AttributeValue::S(value.to_owned()))
                .set_exclusive_start_key(start)
                .send()
                .await?;
            items.extend(out.items().iter().cloned());
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(items);
            }
        }
    }
}
