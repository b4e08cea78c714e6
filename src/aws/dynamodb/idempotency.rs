//! Idempotency-Key records: `pk` = workspace#key, with the body hash, the stamp of the
//! request that claimed it, its state and lock, and a TTL attribute.

use super::{
    condition, condition_held, get_n, get_s, n, s, workspace_key, Condition, Item, PARTITION_KEY,
    TTL_ATTRIBUTE,
};
use crate::app::ports::{IdempotencyKeys, PortError};
use crate::domain::idempotency::{judge, Claim, KeyRecord, LOCK_MS};
use crate::domain::Stamp;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;

const PENDING: &str = "pending";
const DONE: &str = "done";
/// The batch entries a completed request could not enqueue.
const UNSENT: &str = "unsent";

#[derive(Clone)]
pub struct IdempotencyStore {
    client: Client,
    table: String,
}

impl IdempotencyStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Takes over the lock of an abandoned record, if no other request did first.
    async fn take_over(
        &self,
        pk: &str,
        found: &KeyRecord,
        now_ms: i64,
    ) -> Result<Claim, PortError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, s(pk))
            .update_expression("SET lock_until = :lock")
            .condition_expression("#state = :pending AND lock_until = :old_lock")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":lock", n(now_ms + LOCK_MS))
            .expression_attribute_values(":pending", s(PENDING))
            .expression_attribute_values(":old_lock", n(found.lock_until))
            .send()
            .await;
        Ok(if condition_held(result)? {
            Claim::Abandoned(found.stamp.clone())
        } else {
            Claim::InFlight
        })
    }
}

impl IdempotencyKeys for IdempotencyStore {
    async fn claim(
        &self,
        workspace_id: &str,
        key: &str,
        body_hash: &str,
        stamp: &Stamp,
    ) -> Result<Claim, PortError> {
        let pk = workspace_key(workspace_id, key);
        let now_ms = stamp.accepted_at;
        let record = KeyRecord::claimed(body_hash, stamp);
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PARTITION_KEY, s(&pk))
            .item("body_hash", s(body_hash))
            .item("request_id", s(&stamp.request_id))
            .item("accepted_at", n(now_ms))
            .item("state", s(PENDING))
            .item("lock_until", n(record.lock_until))
            .item(TTL_ATTRIBUTE, n(record.expires_at))
            // TTL deletion lags; an expired record counts as absent.
            .condition_expression("attribute_not_exists(pk) OR expires_at < :now_s")
            .expression_attribute_values(":now_s", n(now_ms / 1000))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let found = match condition(result)? {
            Condition::Held => return Ok(Claim::Claimed),
            Condition::Failed(item) => item.as_ref().and_then(record_from_item),
        };
        // A record this adapter cannot read is treated as held by someone else.
        let Some(found) = found else {
            return Ok(Claim::InFlight);
        };
        match judge(&found, body_hash, now_ms) {
            Claim::Abandoned(_) => self.take_over(&pk, &found, now_ms).await,
            verdict => Ok(verdict),
        }
    }

    async fn complete(
        &self,
        workspace_id: &str,
        key: &str,
        request_id: &str,
        unsent: &[usize],
    ) -> Result<(), PortError> {
        let expression = if unsent.is_empty() {
            "SET #state = :done"
        } else {
            "SET #state = :done, #unsent = :unsent"
        };
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, s(workspace_key(workspace_id, key)))
            .update_expression(expression)
            .condition_expression("request_id = :rid")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":done", s(DONE))
            .expression_attribute_values(":rid", s(request_id));
        if !unsent.is_empty() {
            update = update
                .expression_attribute_names("#unsent", UNSENT)
                .expression_attribute_values(
                    ":unsent",
                    AttributeValue::L(unsent.iter().map(|&index| n(index)).collect()),
                );
        }
        update.send().await?;
        Ok(())
    }

    async fn reopen(
        &self,
        workspace_id: &str,
        key: &str,
        lock_until: i64,
    ) -> Result<(), PortError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, s(workspace_key(workspace_id, key)))
            .update_expression("SET lock_until = :expired")
            .condition_expression("lock_until = :ours")
            .expression_attribute_values(":expired", n(0))
            .expression_attribute_values(":ours", n(lock_until))
            .send()
            .await;
        // Not ours any more (another request took it over): nothing to give back.
        condition(result).map(|_| ())
    }

    async fn release(
        &self,
        workspace_id: &str,
        key: &str,
        request_id: &str,
    ) -> Result<(), PortError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, s(workspace_key(workspace_id, key)))
            .condition_expression("request_id = :rid")
            .expression_attribute_values(":rid", s(request_id))
            .send()
            .await;
        // Not ours any more (taken over), or gone already (the SDK's retry of a delete
        // that was applied): nothing to give back either way.
        condition(result).map(|_| ())
    }
}

/// A stored record; `None` for an item that lacks what the rule needs.
fn record_from_item(item: &Item) -> Option<KeyRecord> {
    let unsent = item
        .get(UNSENT)
        .and_then(|list| list.as_l().ok())
        .map(|list| {
            list.iter()
                .filter_map(|index| index.as_n().ok()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    Some(KeyRecord {
        body_hash: get_s(item, "body_hash")?.to_owned(),
        stamp: Stamp::new(get_n(item, "accepted_at")?, get_s(item, "request_id")?),
        done: get_s(item, "state") == Some(DONE),
        lock_until: get_n(item, "lock_until").unwrap_or_default(),
        unsent,
        expires_at: get_n(item, TTL_ATTRIBUTE).unwrap_or(i64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_read_into_records_and_incomplete_ones_are_none() {
        let item = Item::from([
            ("body_hash".into(), s("h")),
            ("state".into(), s(DONE)),
            ("lock_until".into(), n(9)),
            ("accepted_at".into(), n(5)),
            ("request_id".into(), s("r1")),
            (UNSENT.into(), AttributeValue::L(vec![n(3), n(17)])),
        ]);
        let record = record_from_item(&item).unwrap();
        assert!(record.done);
        assert_eq!(record.unsent, [3, 17]);
        assert_eq!(record.stamp.request_id, "r1");
        let mut incomplete = item.clone();
        incomplete.remove("request_id");
        assert!(record_from_item(&incomplete).is_none());
    }
}
