//! The audiences function's edge. Four event sources, one function: the users table's
//! stream (live changes: a partial batch response names the first record not settled),
//! the build queue (one task per message), the retry queue (users parked when their
//! evaluation failed, one per message) and the schedule (a tick). One log line per
//! invocation.

use crate::app::evaluate::Evaluate;
use crate::app::ports::{
    Audiences, BuildQueue, BuildTask, EventBus, Memberships, ParkedUsers, Users, WorkspaceUsers,
};
use crate::aws::dynamodb::{AudienceStore, UserStore};
use crate::aws::eventbridge::EventBridgeBus;
use crate::aws::sqs::{decode_parked, AudienceQueues, SqsQueue};
use crate::clock::now_millis;
use crate::config::Resources;
use aws_lambda_events::dynamodb::Event as StreamEvent;
use aws_lambda_events::sqs::SqsEvent;
use serde_json::Value;
use std::time::{Duration, Instant};

/// A tick settles what falls due before the next one (the schedule runs every
/// minute)…
const TICK_HORIZON_MS: i64 = 55_000;
/// …and stops waiting this long before the invocation's deadline.
const TICK_DEADLINE_MARGIN_MS: i64 = 5_000;

/// Why an invocation failed (a function error: Lambda's `Errors` metric counts it).
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    /// An event of no source this function has, or that its source's type cannot
    /// read: the source retries it whole, then hands it to its failure destination.
    #[error("unreadable event")]
    Unreadable,
    /// A tick that did not settle every user due (they stay due for the next).
    #[error("tick incomplete")]
    Tick,
}

pub struct AudiencesFunction<S, U, B, E> {
    evaluate: Evaluate<S, U, B, E>,
    /// The retry queue's name: its records are parked users, every other queue's are
    /// build tasks.
    retry_queue: String,
}

/// A queue's name: the last part of its URL or ARN.
fn queue_name(url_or_arn: &str) -> &str {
    url_or_arn.rsplit(['/', ':']).next().unwrap_or_default()
}

impl AudiencesFunction<AudienceStore, UserStore, AudienceQueues, EventBridgeBus> {
    pub fn on_aws(sdk: &aws_config::SdkConfig, resources: &Resources) -> Self {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let store = AudienceStore::new(
            dynamodb.clone(),
            &resources.audiences_table,
            &resources.audience_members_table,
        );
        let users = UserStore::new(dynamodb, &resources.users_table);
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let queues = AudienceQueues {
            builds: SqsQueue::new(sqs.clone(), &resources.audience_build_queue_url),
            retries: SqsQueue::new(sqs, &resources.audience_retry_queue_url),
        };
        let bus = EventBridgeBus::new(
            aws_sdk_eventbridge::Client::new(sdk),
            &resources.event_bus_name,
        );
        AudiencesFunction::new(
            Evaluate::new(store, users, queues, bus),
            &resources.audience_retry_queue_url,
        )
    }
}

impl<S, U, B, E> AudiencesFunction<S, U, B, E>
where
    S: Audiences + Memberships + Sync,
    U: Users + WorkspaceUsers + Sync,
    B: BuildQueue + ParkedUsers,
    E: EventBus + Sync,
{
    pub fn new(evaluate: Evaluate<S, U, B, E>, retry_queue_url: &str) -> Self {
        Self {
            evaluate,
            retry_queue: queue_name(retry_queue_url).to_owned(),
        }
    }

    /// Handles one invocation; `deadline_ms` is Lambda's for it (epoch ms).
    pub async fn handle(&self, event: Value, deadline_ms: i64) -> Result<Value, InvocationError> {
        let started = Instant::now();
        let source = event
            .pointer("/Records/0/eventSource")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let unreadable = |err: serde_json::Error| {
            tracing::error!(error = %err, "unreadable event");
            InvocationError::Unreadable
        };
        Ok(match source {
            "aws:dynamodb" => {
                self.changes(serde_json::from_value(event).map_err(unreadable)?, started)
                    .await
            }
            "aws:sqs" => {
                let retries = event
                    .pointer("/Records/0/eventSourceARN")
                    .and_then(Value::as_str)
                    .is_some_and(|arn| queue_name(arn) == self.retry_queue);
                let event = serde_json::from_value(event).map_err(unreadable)?;
                if retries {
                    self.retries(event, started).await
                } else {
                    self.builds(event, started).await
                }
            }
            _ if event["detail-type"] == "Scheduled Event" => {
                self.tick(deadline_ms, started).await?
            }
            _ => return Err(InvocationError::Unreadable),
        })
    }

    async fn changes(&self, event: StreamEvent, started: Instant) -> Value {
        let records = super::stream_changes(&event);
        let settled = self.evaluate.changes(&records, now_millis).await;
        tracing::info!(
            source = "stream",
            records = records.len(),
            users = settled.users,
            events = settled.events,
            parked = settled.parked,
            failed = settled.first_failure.is_some(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "audiences"
        );
        serde_json::to_value(super::stream_response(settled.first_failure)).unwrap_or(Value::Null)
    }

    /// Build tasks (the queue delivers one at a time); a task not done is reported
    /// failed and comes back, and after its receives goes to the dead-letter queue.
    async fn builds(&self, event: SqsEvent, started: Instant) -> Value {
        let mut failed = Vec::new();
        let (mut users, mut events, mut parked) = (0, 0, 0);
        for record in &event.records {
            let id = record.message_id.clone().unwrap_or_default();
            let task: Option<BuildTask> = record
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str(b).ok());
            let Some(task) = task else {
                tracing::error!(message_id = %id, "unreadable build task");
                failed.push(id);
                continue;
            };
            match self.evaluate.build(&task, now_millis).await {
                Ok(built) => {
                    users += built.users;
                    events += built.events;
                    parked += built.parked;
                }
                Err(err) => {
                    tracing::warn!(message_id = %id, error = %err, "build task not done");
                    failed.push(id);
                }
            }
        }
        tracing::info!(
            source = "builds",
            records = event.records.len(),
            users,
            events,
            parked,
            failed = failed.len(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "audiences"
        );
        serde_json::to_value(super::sqs_response(failed)).unwrap_or(Value::Null)
    }

    /// Parked users, settled again; one not settled is reported failed and comes back
    /// after the queue's visibility timeout, and after its receives rests in the parked
    /// queue (`AudienceParkedAlarm`).
    async fn retries(&self, event: SqsEvent, started: Instant) -> Value {
        let mut failed = Vec::new();
        let mut users = Vec::new();
        for record in &event.records {
            let id = record.message_id.clone().unwrap_or_default();
            match record.body.as_deref().and_then(decode_parked) {
                Some(user) => users.push((id, user)),
                None => {
                    tracing::error!(message_id = %id, "unreadable parked user");
                    failed.push(id);
                }
            }
        }
        let keys: Vec<_> = users.iter().map(|(_, user)| user.clone()).collect();
        let outcomes = self.evaluate.retry(&keys, now_millis).await;
        let mut events = 0;
        for ((id, _), outcome) in users.into_iter().zip(outcomes) {
            match outcome {
                Ok(put) => events += put,
                Err(err) => {
                    tracing::warn!(message_id = %id, error = %err, "parked user not settled");
                    failed.push(id);
                }
            }
        }
        tracing::info!(
            source = "retries",
            records = event.records.len(),
            events,
            failed = failed.len(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "audiences"
        );
        serde_json::to_value(super::sqs_response(failed)).unwrap_or(Value::Null)
    }

    /// The schedule's tick: users due before the next tick are settled at their
    /// moment (waiting for it), so time moves them within seconds, not a minute.
    async fn tick(&self, deadline_ms: i64, started: Instant) -> Result<Value, InvocationError> {
        let now = now_millis();
        let until = (now + TICK_HORIZON_MS).min(deadline_ms - TICK_DEADLINE_MARGIN_MS);
        let wait_until = |at: i64| async move {
            let wait = at.saturating_sub(now_millis()).max(0);
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        };
        let outcome = self
            .evaluate
            .tick(until.max(now), now_millis, wait_until)
            .await;
        let (users, events, error) = match &outcome {
            Ok((users, events)) => (*users, *events, None),
            Err(err) => (0, 0, Some(err.to_string())),
        };
        tracing::info!(
            source = "schedule",
            users,
            events,
            error = error.as_deref(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "audiences"
        );
        outcome
            .map(|_| Value::Null)
            .map_err(|_| InvocationError::Tick)
    }
}
