use super::{condition_held, get_by_key, get_n, get_s, n, s, Item, PARTITION_KEY};
use crate::auth::{key_id, ApiKeyRecord, Scope};
use crate::aws::AwsError;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

/// API keys by the SHA-256 of the key (`pk`).
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

    pub async fn get(&self, hash: &str) -> Result<Option<ApiKeyRecord>, AwsError> {
        let item = get_by_key(&self.client, &self.table, hash.to_owned(), false).await?;
        Ok(item.as_ref().and_then(record_from_item))
    }

    pub async fn open_connection(&self) -> Result<(), AwsError> {
        super::open_connection(&self.client, &self.table).await
    }

    pub async fn put(&self, hash: &str, record: &ApiKeyRecord) -> Result<(), AwsError> {
        let scopes = record
            .scopes
            .iter()
            .map(|scope| s(scope.as_str()))
            .collect();
        let request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PARTITION_KEY, s(hash))
            .item("key_id", s(&record.key_id))
            .item("workspace_id", s(&record.workspace_id))
            .item("scopes", AttributeValue::L(scopes))
            .item("created_at", n(record.created_at))
            .item("revoked", AttributeValue::Bool(record.revoked));
        let request = match record.rate_limit {
            Some(rate_limit) => request.item("rate_limit", n(rate_limit)),
            None => request,
        };
        request
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await?;
        Ok(())
    }

    /// All keys of a workspace. An admin operation on a small table: a filtered scan.
    pub async fn list(&self, workspace_id: &str) -> Result<Vec<ApiKeyRecord>, AwsError> {
        self.scan("workspace_id = :v", workspace_id).await
    }

    /// Marks a key revoked, by its key id; returns whether one was found.
    pub async fn revoke(&self, key_id_or_hash: &str) -> Result<bool, AwsError> {
        let hashes: Vec<String> = if key_id_or_hash.starts_with("key_") {
            self.scan_items("key_id = :v", key_id_or_hash)
                .await?
                .iter()
                .filter_map(|item| get_s(item, PARTITION_KEY).map(str::to_owned))
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
                .key(PARTITION_KEY, s(&hash))
                .update_expression("SET revoked = :t")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_values(":t", AttributeValue::Bool(true))
                .send()
                .await;
            found |= condition_held(result)?;
        }
        Ok(found)
    }

    async fn scan(&self, filter: &str, value: &str) -> Result<Vec<ApiKeyRecord>, AwsError> {
        Ok(self
            .scan_items(filter, value)
            .await?
            .iter()
            .filter_map(record_from_item)
            .collect())
    }

    async fn scan_items(&self, filter: &str, value: &str) -> Result<Vec<Item>, AwsError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression(filter)
                .expression_attribute_values(":v", s(value))
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
