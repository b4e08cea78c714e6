//! The rate limiter's shared counters: one item per workspace, or per shard of one
//! (`<workspace>#<shard>`, shards past the first).

use super::{
    condition, condition_held, get_by_key, get_n, n, s, Condition, Item, PARTITION_KEY,
    TTL_ATTRIBUTE,
};
use crate::app::ports::{Counter, Counters, PortError};
use crate::domain::rate_limit::Bounds;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;
use aws_sdk_dynamodb::Client;

/// A counter outlives the window that reads it as "previous"; an expired one counts
/// as an idle workspace.
const COUNTER_TTL_SECS: i64 = 120;

/// One counter per workspace or shard (`pk` = its key): `window` (epoch second), `used`
/// (tokens handed out in it), `previous` (in the window before) and `pair` (their sum,
/// kept so that one condition expression can check the two-second limit).
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

    /// A counter as stored (consistent read): a workspace's is its id.
    pub async fn counter(&self, key: &str) -> Result<Option<Counter>, PortError> {
        let item = get_by_key(&self.client, &self.table, key.to_owned(), true).await?;
        Ok(item.as_ref().and_then(counter_from_item))
    }
}

impl Counters for RateLimitStore {
    async fn take(
        &self,
        key: &str,
        window: i64,
        tokens: u64,
        bounds: Bounds,
    ) -> Result<Result<(), Option<Counter>>, PortError> {
        let max_used = bounds.second.checked_sub(tokens);
        let max_pair = bounds.pair.checked_sub(tokens);
        let (Some(max_used), Some(max_pair)) = (max_used, max_pair) else {
            return Ok(Err(self.counter(key).await?));
        };
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, s(key))
            .update_expression("ADD used :tokens, pair :tokens")
            .condition_expression("#window = :window AND used <= :max_used AND pair <= :max_pair")
            .expression_attribute_names("#window", "window")
            .expression_attribute_values(":tokens", n(tokens))
            .expression_attribute_values(":window", n(window))
            .expression_attribute_values(":max_used", n(max_used))
            .expression_attribute_values(":max_pair", n(max_pair))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        Ok(match condition(result)? {
            Condition::Held => Ok(()),
            Condition::Failed(found) => Err(found.as_ref().and_then(counter_from_item)),
        })
    }

    async fn start_window(
        &self,
        key: &str,
        found: Option<Counter>,
        window: i64,
        tokens: u64,
    ) -> Result<bool, PortError> {
        let previous = found
            .filter(|c| c.window == window - 1)
            .map_or(0, |c| c.used);
        let request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PARTITION_KEY, s(key))
            .item("window", n(window))
            .item("used", n(tokens))
            .item("previous", n(previous))
            .item("pair", n(previous + tokens))
            .item(TTL_ATTRIBUTE, n(window + COUNTER_TTL_SECS));
        // Only from the state that was read, tokens included: a lease taken in the old
        // window since then must not vanish from the two-second sum.
        let request = match found {
            None => request.condition_expression("attribute_not_exists(pk)"),
            Some(counter) => request
                .condition_expression("#window = :found AND used = :found_used")
                .expression_attribute_names("#window", "window")
                .expression_attribute_values(":found", n(counter.window))
                .expression_attribute_values(":found_used", n(counter.used)),
        };
        condition_held(request.send().await)
    }
}

fn counter_from_item(item: &Item) -> Option<Counter> {
    Some(Counter {
        window: get_n(item, "window")?,
        used: get_n(item, "used")?,
        previous: get_n(item, "previous").unwrap_or(0),
    })
}
