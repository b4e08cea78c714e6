use super::{condition_held, get_by_key, get_n, n, s, workspace_key, PARTITION_KEY, TTL_ATTRIBUTE};
use crate::aws::AwsError;
use aws_sdk_dynamodb::Client;

/// Counters live a little past the window that reads them as "previous".
const COUNTER_TTL_SECS: i64 = 120;

/// Per-workspace, per-second request counters shared by every api instance:
/// `pk` = workspace#epoch-second, `used` = tokens handed out in that second.
#[derive(Clone)]
pub struct RateLimitStore {
    client: Client,
    table: String,
}

impl RateLimitStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Tokens already handed out in `window`.
    pub async fn used(&self, workspace_id: &str, window: i64) -> Result<u64, AwsError> {
        let key = workspace_key(workspace_id, &window.to_string());
        let item = get_by_key(&self.client, &self.table, key, true).await?;
        Ok(item.and_then(|item| get_n(&item, "used")).unwrap_or(0))
    }

    /// Takes `tokens` in `window` if no more than `max_used_before` are taken yet.
    pub async fn lease(
        &self,
        workspace_id: &str,
        window: i64,
        tokens: u32,
        max_used_before: i64,
    ) -> Result<bool, AwsError> {
        if max_used_before < 0 {
            return Ok(false);
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(
                PARTITION_KEY,
                s(workspace_key(workspace_id, &window.to_string())),
            )
            .update_expression("ADD used :tokens SET #ttl = :expires")
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .condition_expression("attribute_not_exists(used) OR used <= :max")
            .expression_attribute_values(":tokens", n(tokens))
            .expression_attribute_values(":expires", n(window + COUNTER_TTL_SECS))
            .expression_attribute_values(":max", n(max_used_before))
            .send()
            .await;
        condition_held(result)
    }
}
