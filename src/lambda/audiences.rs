//! The audiences function's edge. Three event sources, one function: the users
//! table's stream (live changes: a partial batch response names the first record not
//! settled), the build queue (one task per message), and the schedule (a tick). One log
//! line per invocation.

use crate::app::evaluate::Evaluate;
use crate::app::ports::{
    Audiences, BuildQueue, BuildTask, EventBus, Memberships, Users, WorkspaceUsers,
};
use crate::aws::dynamodb::{AudienceStore, UserStore};
use crate::aws::eventbridge::EventBridgeBus;
use crate::aws::sqs::SqsQueue;
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
}

impl AudiencesFunction<AudienceStore, UserStore, SqsQueue, EventBridgeBus> {
    pub fn on_aws(sdk: &aws_config::SdkConfig, resources: &Resources) -> Self {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let store = AudienceStore::new(
            dynamodb.clone(),
            &resources.audiences_table,
            &resources.audience_members_table,
        );
        let users = UserStore::new(dynamodb, &resources.users_table);
        let builds = SqsQueue::new(
            aws_sdk_sqs::Client::new(sdk),
            &resources.audience_build_queue_url,
        );
        let bus = EventBridgeBus::new(
            aws_sdk_eventbridge::Client::new(sdk),
            &resources.event_bus_name,
        );
        AudiencesFunction {
            evaluate: Evaluate::new(store, users, builds, bus),
        }
    }
}

impl<S, U, B, E> AudiencesFunction<S, U, B, E>
where
    S: Audiences + Memberships + Sync,
    U: Users + WorkspaceUsers + Sync,
    B: BuildQueue,
    E: EventBus + Sync,
{
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
                self.builds(serde_json::from_value(event).map_err(unreadable)?, started)
                    .await
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
        let (mut users, mut events) = (0, 0);
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
