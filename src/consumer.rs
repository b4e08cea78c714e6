//! The consumer function: applies a batch of accepted upserts to the users table.
//!
//! Messages are grouped by user. One BatchGetItem reads every user of the batch; each
//! user is then merged and written once with an optimistic version check (re-read and
//! retried on conflict), so concurrent consumers never lose a field. A batch of 10
//! messages costs 1 read + 1 write per distinct user: 11 calls for 10 users, 2 for one.
//! Failures are per message (partial batch response): a transient error fails only
//! the messages of the user it touched; an unreadable message is always reported
//! failed, never dropped, and reaches the DLQ after `maxReceiveCount` receives.
//!
//! A record may carry many upserts (a batch request's, packed): it fails if any of
//! its upserts fails, and its retry re-applies the others, which changes nothing.
//! Users are read and written `USERS_PER_ROUND` at a time, so the profiles held in
//! memory stay bounded however many upserts the records carry.

use crate::aws::AwsError;
use crate::metrics::{self, BatchMetrics};
use crate::store::{StoredUser, UserStore, WriteOutcome};
use crate::upsert::{UpsertMessage, UserProfile};
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use futures::stream::{self, StreamExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

const MAX_WRITE_ATTEMPTS: usize = 5;
/// Users read in one BatchGetItem (its limit) and then written.
const USERS_PER_ROUND: usize = 100;
/// User writes in flight at once: each is a connection to DynamoDB.
const CONCURRENT_WRITES: usize = 16;

pub struct Consumer {
    users: UserStore,
    metrics_namespace: String,
}

/// The messages of one batch for one user.
#[derive(Clone, Copy)]
struct UserBatch<'a> {
    workspace_id: &'a str,
    external_user_id: &'a str,
    messages: &'a [(&'a str, UpsertMessage)],
}

impl Consumer {
    pub fn new(users: UserStore, metrics_namespace: impl Into<String>) -> Self {
        Self {
            users,
            metrics_namespace: metrics_namespace.into(),
        }
    }

    /// Opens the connection to DynamoDB during init (see `App::open_connections`).
    pub async fn open_connections(&self) {
        crate::aws::open_connections(async { [self.users.open_connection().await] }).await;
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let started = Instant::now();
        let mut failed: BTreeSet<String> = BTreeSet::new();
        let mut parsed = Vec::with_capacity(event.records.len());
        for record in &event.records {
            let id = record.message_id.as_deref().unwrap_or_default();
            match record.body.as_deref().map(UpsertMessage::all_from_json) {
                Some(Ok(messages)) => parsed.extend(messages.into_iter().map(|m| (id, m))),
                Some(Err(err)) => {
                    tracing::error!(message_id = id, error = %err, "unprocessable message");
                    failed.insert(id.to_owned());
                }
                None => {
                    tracing::error!(message_id = id, "message without a body");
                    failed.insert(id.to_owned());
                }
            }
        }
        let messages = parsed.len();
        let mut by_user: BTreeMap<(String, String), Vec<(&str, UpsertMessage)>> = BTreeMap::new();
        for (id, message) in parsed {
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
        let users = batches.len();
        let mut rejected_traits = 0;
        for round in batches.chunks(USERS_PER_ROUND) {
            let results = self.apply_round(round).await;
            for (batch, result) in round.iter().zip(results) {
                match result {
                    Ok(rejected) => rejected_traits += rejected,
                    // Not worth retrying as a whole (DynamoDB refused the write): apply
                    // what can be applied, one message at a time, and fail only the rest.
                    Err(AwsError::Internal(err)) if batch.messages.len() > 1 => {
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
        tracing::info!(
            records = event.records.len(),
            messages,
            users,
            failed = failed.len(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "batch"
        );
        let now_ms = crate::clock::now_millis();
        let lag_ms = by_user
            .values()
            .flatten()
            .filter(|(id, _)| !failed.contains(*id))
            .map(|(_, message)| now_ms - message.stamp.accepted_at)
            .collect();
        metrics::emit(&metrics::batch_line(
            &self.metrics_namespace,
            now_ms,
            &BatchMetrics {
                applied: event.records.len().saturating_sub(failed.len()),
                failed: failed.len(),
                rejected_traits,
                lag_ms,
            },
        ));
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = failed
            .into_iter()
            .map(|id| {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                failure
            })
            .collect();
        response
    }

    /// Reads the users of `round` in one call, then applies each, a few at a time.
    async fn apply_round(&self, round: &[UserBatch<'_>]) -> Vec<Result<usize, AwsError>> {
        let keys: Vec<(&str, &str)> = round
            .iter()
            .map(|b| (b.workspace_id, b.external_user_id))
            .collect();
        let mut current: HashMap<(String, String), StoredUser> =
            match self.users.get_many(&keys).await {
                Ok(current) => current,
                Err(err) => {
                    return round
                        .iter()
                        .map(|_| Err(AwsError::Unavailable(err.to_string())))
                        .collect()
                }
            };
        let applies = round.iter().map(|batch| {
            let key = (
                batch.workspace_id.to_owned(),
                batch.external_user_id.to_owned(),
            );
            self.apply(batch, Some(current.remove(&key)))
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
            match self.apply(&alone, None).await {
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
    async fn apply(
        &self,
        batch: &UserBatch<'_>,
        mut prefetched: Option<Option<StoredUser>>,
    ) -> Result<usize, AwsError> {
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let current = match prefetched.take() {
                Some(current) => current,
                None => {
                    self.users
                        .get(batch.workspace_id, batch.external_user_id)
                        .await?
                }
            };
            let mut user = current.unwrap_or_else(|| StoredUser {
                external_user_id: batch.external_user_id.to_owned(),
                profile: UserProfile::default(),
                version: 0,
            });
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
        Err(AwsError::Unavailable(
            "user item kept changing under concurrent writers".into(),
        ))
    }
}
