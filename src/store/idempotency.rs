use super::{
    condition_held, get_n, get_s, n, s, workspace_key, Item, PARTITION_KEY, TTL_ATTRIBUTE,
};
use crate::aws::AwsError;
use crate::upsert::Stamp;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;

/// How long a key is remembered (contract: 24 hours).
const RETENTION_SECS: i64 = 24 * 60 * 60;
/// How long an unfinished request holds its key. The api function's timeout is well
/// under this, so a live request never loses its lock.
pub const LOCK_MS: i64 = 30_000;
const PENDING: &str = "pending";
const DONE: &str = "done";
/// The batch entries a completed request could not enqueue.
const UNSENT: &str = "unsent";

/// What a conditional put of an Idempotency-Key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is ours: process the request.
    Claimed,
    /// Already accepted with this body: answer the same again, enqueue nothing. Holds
    /// the batch entries that could not be enqueued the first time (none for others).
    Replay(Vec<usize>),
    /// Another request with this key is still being processed.
    InFlight,
    /// Used before with a different body.
    Reused,
    /// A request with this key died after recording it; we took over its lock and
    /// must enqueue again with its original stamp, so that if it did enqueue before
    /// dying the second copy is a duplicate the merge ignores.
    Abandoned(Stamp),
}

/// Idempotency-Key records: `pk` = workspace#key, with the body hash, the stamp of
/// the request that claimed it, its state and lock, and a TTL attribute.
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

    pub async fn claim(
        &self,
        workspace_id: &str,
        key: &str,
        body_hash: &str,
        stamp: &Stamp,
    ) -> Result<Claim, AwsError> {
        let pk = workspace_key(workspace_id, key);
        let now_ms = stamp.accepted_at;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PARTITION_KEY, s(&pk))
            .item("body_hash", s(body_hash))
            .item("request_id", s(&stamp.request_id))
            .item("accepted_at", n(now_ms))
            .item("state", s(PENDING))
            .item("lock_until", n(now_ms + LOCK_MS))
            .item(TTL_ATTRIBUTE, n(now_ms / 1000 + RETENTION_SECS))
            // TTL deletion lags; an expired record counts as absent.
            .condition_expression("attribute_not_exists(pk) OR expires_at < :now_s")
            .expression_attribute_values(":now_s", n(now_ms / 1000))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let existing = match result {
            Ok(_) => return Ok(Claim::Claimed),
            Err(SdkError::ServiceError(failure))
                if failure.err().is_conditional_check_failed_exception() =>
            {
                match failure.into_err() {
                    PutItemError::ConditionalCheckFailedException(e) => e.item,
                    _ => None,
                }
            }
            Err(err) => return Err(err.into()),
        };
        let Some(existing) = existing else {
            return Ok(Claim::InFlight);
        };
        match judge(&existing, body_hash, now_ms) {
            Claim::Abandoned(original) => self.take_over(&pk, &existing, &original, now_ms).await,
            verdict => Ok(verdict),
        }
    }

    async fn take_over(
        &self,
        pk: &str,
        existing: &Item,
        original: &Stamp,
        now_ms: i64,
    ) -> Result<Claim, AwsError> {
        let old_lock = get_n::<i64>(existing, "lock_until").unwrap_or_default();
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
            .expression_attribute_values(":old_lock", n(old_lock))
            .send()
            .await;
        Ok(if condition_held(result)? {
            Claim::Abandoned(original.clone())
        } else {
            Claim::InFlight
        })
    }

    /// Records that the request holding the key enqueued its upsert, or, for a batch,
    /// every entry but the `unsent` ones, which a replay reports again.
    pub async fn complete(
        &self,
        workspace_id: &str,
        key: &str,
        request_id: &str,
        unsent: &[usize],
    ) -> Result<(), AwsError> {
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

    /// Gives back a lock this request took over from an abandoned one (`take_over`
    /// set it to `lock_until`) without enqueueing: the key is again as it was found,
    /// abandoned, so the client's retry takes it over at once instead of waiting 30 s.
    pub async fn reopen(
        &self,
        workspace_id: &str,
        key: &str,
        lock_until: i64,
    ) -> Result<(), AwsError> {
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
        condition_held(result).map(|_| ())
    }

    /// Forgets the key after a failed enqueue, so the client's retry is processed.
    pub async fn release(
        &self,
        workspace_id: &str,
        key: &str,
        request_id: &str,
    ) -> Result<(), AwsError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, s(workspace_key(workspace_id, key)))
            .condition_expression("request_id = :rid")
            .expression_attribute_values(":rid", s(request_id))
            .send()
            .await?;
        Ok(())
    }
}

/// The rule for a key that is already recorded (pure, so it can be tested alone).
fn judge(existing: &Item, body_hash: &str, now_ms: i64) -> Claim {
    if get_s(existing, "body_hash") != Some(body_hash) {
        return Claim::Reused;
    }
    if get_s(existing, "state") == Some(DONE) {
        let unsent = existing
            .get(UNSENT)
            .and_then(|list| list.as_l().ok())
            .map(|list| {
                list.iter()
                    .filter_map(|index| index.as_n().ok()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        return Claim::Replay(unsent);
    }
    if get_n::<i64>(existing, "lock_until").is_some_and(|lock| lock > now_ms) {
        return Claim::InFlight;
    }
    match (
        get_n(existing, "accepted_at"),
        get_s(existing, "request_id"),
    ) {
        (Some(accepted_at), Some(request_id)) => Claim::Abandoned(Stamp {
            accepted_at,
            request_id: request_id.to_owned(),
        }),
        _ => Claim::InFlight,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(hash: &str, state: &str, lock_until: i64) -> Item {
        Item::from([
            ("body_hash".into(), s(hash)),
            ("state".into(), s(state)),
            ("lock_until".into(), n(lock_until)),
            ("accepted_at".into(), n(5)),
            ("request_id".into(), s("r1")),
        ])
    }

    #[test]
    fn other_body_is_reused_whatever_the_state() {
        assert_eq!(judge(&record("h1", DONE, 0), "h2", 10), Claim::Reused);
        assert_eq!(judge(&record("h1", PENDING, 99), "h2", 10), Claim::Reused);
    }

    #[test]
    fn done_replays_and_live_pending_is_in_flight() {
        assert_eq!(judge(&record("h", DONE, 0), "h", 10), Claim::Replay(vec![]));
        let mut partly_sent = record("h", DONE, 0);
        partly_sent.insert(UNSENT.into(), AttributeValue::L(vec![n(3), n(17)]));
        assert_eq!(judge(&partly_sent, "h", 10), Claim::Replay(vec![3, 17]));
        assert_eq!(judge(&record("h", PENDING, 11), "h", 10), Claim::InFlight);
    }

    #[test]
    fn expired_pending_lock_is_abandoned_with_its_original_stamp() {
        let stamp = Stamp {
            accepted_at: 5,
            request_id: "r1".into(),
        };
        assert_eq!(
            judge(&record("h", PENDING, 10), "h", 10),
            Claim::Abandoned(stamp)
        );
    }
}
