//! Applying accepted writes to the users table (the consumer).
//!
//! Messages are grouped by user. One BatchGetItem reads every user of the batch; each
//! user is then merged and written once with an optimistic version check (re-read and
//! retried on conflict), so concurrent consumers never lose a field. A batch of 10
//! messages costs 1 read + 1 write per distinct user: 11 calls for 10 users, 2 for one.
//! Failures are per record (partial batch response): a transient error fails only
//! the records of the user it touched.
//!
//! A record may carry many upserts (a batch request's, packed): it fails if any of
//! its upserts fails, and its retry re-applies the others, which changes nothing.
//! Users are read and written `USERS_PER_ROUND` at a time, so the profiles held in
//! memory stay bounded however many upserts the records carry.

use super::ports::{PortError, StoredUser, Users, WriteOutcome};
use crate::domain::UpsertMessage;
use futures::stream::{self, StreamExt};
use std::collections::{BTreeMap, BTreeSet};

const MAX_WRITE_ATTEMPTS: usize = 5;
/// Users read in one BatchGetItem (its limit) and then written.
const USERS_PER_ROUND: usize = 100;
/// User writes in flight at once: each is a connection to DynamoDB.
const CONCURRENT_WRITES: usize = 16;

pub struct Apply<U> {
    users: U,
}

/// What applying a batch did.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    /// Records that must be delivered again (a message of theirs was not applied).
    pub failed: BTreeSet<String>,
    /// Distinct users the messages touched.
    pub users: usize,
    /// Traits these messages had refused (a redelivery adds none).
    pub rejected_traits: usize,
    /// `now_ms − accepted_at` of each message applied.
    pub lag_ms: Vec<i64>,
}

/// The messages of one batch for one user, in stamp order, with their records' ids.
#[derive(Clone, Copy)]
struct UserBatch<'a> {
    workspace_id: &'a str,
    external_user_id: &'a str,
    messages: &'a [(&'a str, UpsertMessage)],
}

impl<U: Users> Apply<U> {
    pub fn new(users: U) -> Self {
        Self { users }
    }

    /// Applies the messages of a batch's records (`(record id, message)`, any order);
    /// `now_ms` measures their lag.
    pub async fn apply(&self, messages: Vec<(&str, UpsertMessage)>, now_ms: i64) -> Applied {
        let mut failed: BTreeSet<String> = BTreeSet::new();
        let mut by_user: BTreeMap<(String, String), Vec<(&str, UpsertMessage)>> = BTreeMap::new();
        for (id, message) in messages {
            let key = (
                message.workspace_id.clone(),
                message.external_user_id.clone(),
            );
            by_user.entry(key).or_default().push((id, message));
        }
        // In stamp order, so that a batch decides budget refusals as in-order delivery
        // would.
        for messages in by_user.values_mut() {
            messages.sort_by(|a, b| a.1.stamp.cmp(&b.1.stamp));
        }
        let batches: Vec<UserBatch> = by_user
            .iter()
            .map(|((workspace_id, external_user_id), messages)| UserBatch {
                workspace_id,
                external_user_id,
                messages,
            })
            .collect();
        let mut rejected_traits = 0;
        for round in batches.chunks(USERS_PER_ROUND) {
            let results = self.apply_round(round).await;
            for (batch, result) in round.iter().zip(results) {
                match result {
                    Ok(rejected) => rejected_traits += rejected,
                    // Not worth retrying as a whole (DynamoDB refused the write): apply
                    // what can be applied, one message at a time, and fail only the rest.
                    Err(PortError::Refused(err)) if batch.messages.len() > 1 => {
                        tracing::warn!(error = %err, messages = batch.messages.len(), "user write refused; applying its messages one by one");
                        let (failures, rejected) = self.apply_one_by_one(batch).await;
                        failed.extend(failures);
                        rejected_traits += rejected;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, messages = batch.messages.len(), "user write failed; messages will be retried");
                        failed.extend(batch.messages.iter().map(|(id, _)| (*id).to_owned()));
                    }
                }
            }
        }
        let lag_ms = by_user
            .values()
            .flatten()
            .filter(|(id, _)| !failed.contains(*id))
            .map(|(_, message)| now_ms - message.stamp.accepted_at)
            .collect();
        Applied {
            failed,
            users: by_user.len(),
            rejected_traits,
            lag_ms,
        }
    }

    /// Reads the users of `round` in one call, then applies each, a few at a time.
    async fn apply_round(&self, round: &[UserBatch<'_>]) -> Vec<Result<usize, PortError>> {
        let keys: Vec<(&str, &str)> = round
            .iter()
            .map(|b| (b.workspace_id, b.external_user_id))
            .collect();
        let mut current = match self.users.get_many(&keys).await {
            Ok(current) => current,
            // A failed read fails every user of the round, to be retried.
            Err(err) => {
                let unavailable = PortError::Unavailable(err.into_code());
                return round.iter().map(|_| Err(unavailable.clone())).collect();
            }
        };
        let applies = round.iter().map(|batch| {
            let key = (
                batch.workspace_id.to_owned(),
                batch.external_user_id.to_owned(),
            );
            self.apply_user(batch, Some(current.remove(&key)))
        });
        stream::iter(applies)
            .buffered(CONCURRENT_WRITES)
            .collect()
            .await
    }

    /// The ids of the messages of `batch` that fail even when applied alone, and the
    /// traits the others had refused.
    async fn apply_one_by_one(&self, batch: &UserBatch<'_>) -> (Vec<String>, usize) {
        let mut failed = Vec::new();
        let mut rejected = 0;
        for one in batch.messages.chunks(1) {
            let alone = UserBatch {
                messages: one,
                ..*batch
            };
            match self.apply_user(&alone, None).await {
                Ok(refused) => rejected += refused,
                Err(err) => {
                    tracing::error!(message_id = one[0].0, error = %err, "message cannot be applied");
                    failed.push(one[0].0.to_owned());
                }
            }
        }
        (failed, rejected)
    }

    /// Merges a user's messages into its item and writes it once, with the item as read
    /// for the whole batch (`prefetched`); if another consumer wrote the user in
    /// between, re-reads it alone and tries again.
    /// Returns how many traits of these messages the profile refused.
    async fn apply_user(
        &self,
        batch: &UserBatch<'_>,
        mut prefetched: Option<Option<StoredUser>>,
    ) -> Result<usize, PortError> {
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let current = match prefetched.take() {
                Some(current) => current,
                None => {
                    self.users
                        .get(batch.workspace_id, batch.external_user_id)
                        .await?
                }
            };
            let mut user = current.unwrap_or_else(|| StoredUser::new(batch.external_user_id));
            let listed_before = user.profile.rejected.clone();
            let mut changed = false;
            for (_, message) in batch.messages {
                changed |= user.profile.apply_message(message);
            }
            // Refusals these messages added (a redelivery adds none).
            let refused = user
                .profile
                .rejected
                .iter()
                .filter(|r| !listed_before.contains(r))
                .count();
            if !changed {
                return Ok(refused);
            }
            if self.users.put(batch.workspace_id, &user).await? == WriteOutcome::Written {
                return Ok(refused);
            }
        }
        Err(PortError::Unavailable(
            "user item kept changing under concurrent writers".into(),
        ))
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
