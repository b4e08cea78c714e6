//! The audiences function's edge. Six event sources, one function: the users table's
//! stream (live changes: a partial batch response names the first record not settled),
//! the build queue (one task per message), the retry queue (users parked when their
//! evaluation failed, one per message), the schedule (a tick, which sends a time task
//! per partition of the users due), the time queue (one such task per invocation) and
//! the stream's failure destination (stream positions whose users are parked). One log
//! line per invocation.

use super::queue_name;
use super::ProducerBus;
use crate::app::evaluate::{Evaluate, STREAM_BATCH_WAIT_MS, WORKSPACE_SHARE_MS};
use crate::app::ports::{
    Audiences, BuildQueue, EventBus, Memberships, ParkedUsers, StreamReplay, TimeTask, TimeTasks,
    Users, WorkspaceUsers,
};
use crate::aws::dynamodb::{AudienceStore, UserStore};
use crate::aws::sqs::{decode_build, decode_parked, decode_time, AudienceQueues, SqsQueue};
use crate::aws::streams::{decode_failure, StreamReader};
use crate::clock::now_millis;
use crate::config::Resources;
use aws_lambda_events::dynamodb::Event as StreamEvent;
use aws_lambda_events::sqs::SqsEvent;
use serde_json::Value;
use std::time::{Duration, Instant};

/// A time task stops waiting this long before its invocation's deadline.
const TICK_DEADLINE_MARGIN_MS: i64 = 5_000;

/// Why an invocation failed (a function error: Lambda's `Errors` metric counts it).
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    /// An event of no source this function has, or that its source's type cannot
    /// read: the source retries it whole, then hands it to its failure destination.
    #[error("unreadable event")]
    Unreadable,
    /// A tick whose time tasks were not sent, or a time task that did not settle every
    /// user due (they stay due for the next tick's).
    #[error("tick incomplete")]
    Tick,
}

pub struct AudiencesFunction<S, U, B, E, R> {
    evaluate: Evaluate<S, U, B, E>,
    /// The users stream, read again for the positions its failure destination names.
    replay: R,
    /// The retry queue's name: its records are parked users…
    retry_queue: String,
    /// …the time queue's, time tasks…
    time_queue: String,
    /// …the stream failure queue's, stream positions; every other queue's are build
    /// tasks.
    failure_queue: String,
    /// A tick's time tasks settle what falls due before the next tick.
    tick_ms: i64,
    /// Users a second a time task settles (`DUE_SETTLE_RATE`).
    due_settle_rate: f64,
}

impl AudiencesFunction<AudienceStore, UserStore, AudienceQueues, ProducerBus, StreamReader> {
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
            retries: SqsQueue::new(sqs.clone(), &resources.audience_retry_queue_url),
            time: SqsQueue::new(sqs, &resources.audience_time_queue_url),
        };
        let bus = super::producer_bus(sdk, resources);
        let replay = StreamReader::new(aws_sdk_dynamodbstreams::Client::new(sdk));
        AudiencesFunction::new(Evaluate::new(store, users, queues, bus), replay, resources)
    }
}

impl<S, U, B, E, R> AudiencesFunction<S, U, B, E, R>
where
    R: StreamReplay + Sync,
    S: Audiences + Memberships + Sync,
    U: Users + WorkspaceUsers + Sync,
    B: BuildQueue + ParkedUsers + TimeTasks,
    E: EventBus + Sync,
{
    pub fn new(evaluate: Evaluate<S, U, B, E>, replay: R, resources: &Resources) -> Self {
        Self {
            evaluate,
            replay,
            failure_queue: queue_name(&resources.audience_stream_failure_queue_url).to_owned(),
            retry_queue: queue_name(&resources.audience_retry_queue_url).to_owned(),
            time_queue: queue_name(&resources.audience_time_queue_url).to_owned(),
            tick_ms: i64::try_from(resources.audience_tick_seconds.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            due_settle_rate: resources.due_settle_rate,
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
            let error = crate::telemetry::json_fault(&err);
            tracing::error!(error, "unreadable event");
            InvocationError::Unreadable
        };
        Ok(match source {
            "aws:dynamodb" => {
                self.changes(serde_json::from_value(event).map_err(unreadable)?, started)
                    .await
            }
            "aws:sqs" => {
                let queue = event
                    .pointer("/Records/0/eventSourceARN")
                    .and_then(Value::as_str)
                    .map(queue_name)
                    .unwrap_or_default()
                    .to_owned();
                let event = serde_json::from_value(event).map_err(unreadable)?;
                if queue == self.retry_queue {
                    self.retries(event, started).await
                } else if queue == self.time_queue {
                    self.time_tasks(event, deadline_ms, started).await?
                } else if queue == self.failure_queue {
                    self.recoveries(event, started).await
                } else {
                    self.builds(event, started).await
                }
            }
            _ if event["detail-type"] == "Scheduled Event" => self.tick(started).await?,
            _ => return Err(InvocationError::Unreadable),
        })
    }

    async fn changes(&self, event: StreamEvent, started: Instant) -> Value {
        let records = super::stream_changes(&event);
        let due = tokio::time::sleep(Duration::from_millis(STREAM_BATCH_WAIT_MS));
        let share = || tokio::time::sleep(Duration::from_millis(WORKSPACE_SHARE_MS));
        let settled = self
            .evaluate
            .changes(&records, now_millis, due, share)
            .await;
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
            let task = record.body.as_deref().and_then(decode_build);
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

    /// Stream batches the failure destination names (records that kept failing, or
    /// aged out): their users read again from the stream and parked, to be settled from
    /// a fresh read. A message not done comes back, and after its receives rests in the
    /// failure queue's dead-letter queue (`AudienceStreamFailureAlarm`).
    async fn recoveries(&self, event: SqsEvent, started: Instant) -> Value {
        let mut failed = Vec::new();
        let mut users = 0;
        for record in &event.records {
            let id = record.message_id.clone().unwrap_or_default();
            let Some(range) = record.body.as_deref().and_then(decode_failure) else {
                tracing::error!(message_id = %id, "unreadable stream failure");
                failed.push(id);
                continue;
            };
            match self.evaluate.recover(&self.replay, &range).await {
                Ok(parked) => users += parked,
                Err(err) => {
                    tracing::warn!(message_id = %id, error = %err, "stream failure not recovered");
                    failed.push(id);
                }
            }
        }
        tracing::info!(
            source = "stream failures",
            records = event.records.len(),
            parked = users,
            failed = failed.len(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "audiences"
        );
        serde_json::to_value(super::sqs_response(failed)).unwrap_or(Value::Null)
    }

    /// The schedule's tick: a time task per partition with users due before the next
    /// tick.
    async fn tick(&self, started: Instant) -> Result<Value, InvocationError> {
        let sent = self.evaluate.tick(now_millis() + self.tick_ms).await;
        tracing::info!(
            source = "schedule",
            tasks = sent.as_ref().ok(),
            error = sent.as_ref().err().map(ToString::to_string),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "audiences"
        );
        sent.map(|_| Value::Null).map_err(|_| InvocationError::Tick)
    }

    /// Time tasks (the queue delivers one at a time): the users of a partition due
    /// before the task's end are settled at their moment (waiting for it), so time
    /// moves them within seconds, not a minute. A task not done fails the invocation:
    /// its users stay due, and the next tick's task settles them.
    async fn time_tasks(
        &self,
        event: SqsEvent,
        deadline_ms: i64,
        started: Instant,
    ) -> Result<Value, InvocationError> {
        let (mut users, mut events, mut failed) = (0, 0, 0);
        for record in &event.records {
            let Some(task) = record.body.as_deref().and_then(decode_time) else {
                tracing::error!(message_id = ?record.message_id, "unreadable time task");
                failed += 1;
                continue;
            };
            let now = now_millis();
            let task = TimeTask {
                until_ms: task
                    .until_ms
                    .min(deadline_ms - TICK_DEADLINE_MARGIN_MS)
                    .max(now),
                ..task
            };
            let wait_until = |at: i64| async move {
                let wait = at.saturating_sub(now_millis()).max(0);
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            };
            match self
                .evaluate
                .settle_due(&task, self.due_settle_rate, now_millis, wait_until)
                .await
            {
                Ok((settled, put)) => {
                    users += settled;
                    events += put;
                }
                Err(err) => {
                    tracing::warn!(shard = task.shard, error = %err, "time task not done");
                    failed += 1;
                }
            }
        }
        tracing::info!(
            source = "time",
            records = event.records.len(),
            users,
            events,
            failed,
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "audiences"
        );
        if failed > 0 {
            return Err(InvocationError::Tick);
        }
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    //! The edge over in-memory ports, fed the literal sample events of `events/`: each
    //! source reaches its use case, and each answer is what its source expects.

    use super::*;
    use crate::app::fakes::{unavailable, MemoryAudiences, MemoryBuilds, MemoryBus, MemoryUsers};
    use crate::app::ports::{PortError, StreamRange, UserKey};
    use crate::lambda::samples::{resources, sample};
    use serde_json::json;

    /// A stream read again: the users of any range, or a failure.
    struct Replay(Result<Vec<UserKey>, PortError>);

    impl StreamReplay for Replay {
        async fn users_in(&self, _: &StreamRange) -> Result<Vec<UserKey>, PortError> {
            self.0.clone()
        }
    }

    type Function =
        AudiencesFunction<MemoryAudiences, MemoryUsers, MemoryBuilds, MemoryBus, Replay>;

    fn function(replay: Replay) -> (Function, MemoryAudiences, MemoryBuilds) {
        let (store, builds) = (MemoryAudiences::default(), MemoryBuilds::default());
        let evaluate = Evaluate::new(
            store.clone(),
            MemoryUsers::default(),
            builds.clone(),
            MemoryBus::default(),
        );
        (
            AudiencesFunction::new(evaluate, replay, &resources()),
            store,
            builds,
        )
    }

    const DEADLINE: i64 = i64::MAX;

    #[tokio::test]
    async fn a_tick_sends_time_tasks_that_reach_the_next_tick() {
        let (function, store, builds) = function(Replay(Ok(Vec::new())));
        // No partition read: each gets its task (the task reads it again).
        let shards = MemoryAudiences::DUE_SHARDS as usize;
        store.faults.fail("memberships.due", unavailable(), shards);
        let before = now_millis();
        let answer = function
            .handle(sample("schedule-tick.json"), DEADLINE)
            .await;
        assert_eq!(answer.unwrap(), Value::Null);
        let tasks = builds.take_time();
        assert_eq!(tasks.len(), shards);
        // Up to the next tick: the schedule's minute.
        assert!(tasks.iter().all(|t| t.until_ms >= before + 60_000));
    }

    #[tokio::test]
    async fn a_time_task_reads_its_partition_and_fails_the_invocation_when_it_cannot() {
        let (function, store, _) = function(Replay(Ok(Vec::new())));
        let answer = function
            .handle(sample("sqs-audience-time.json"), DEADLINE)
            .await;
        assert_eq!(answer.unwrap(), Value::Null);
        assert_eq!(store.journal.calls(), ["memberships.due"]);
        store.faults.fail("memberships.due", unavailable(), 1);
        let answer = function
            .handle(sample("sqs-audience-time.json"), DEADLINE)
            .await;
        assert!(matches!(answer, Err(InvocationError::Tick)));
    }

    #[tokio::test]
    async fn parked_users_are_settled_again_and_an_unreadable_one_reported() {
        let (function, _, _) = function(Replay(Ok(Vec::new())));
        let answer = function
            .handle(sample("sqs-audience-retries.json"), DEADLINE)
            .await;
        assert_eq!(
            answer.unwrap(),
            json!({"batchItemFailures": [{"itemIdentifier": "6f1c2a8e-7b1d-4c0e-9a55-2d9f7a1e0202"}]})
        );
    }

    #[tokio::test]
    async fn a_stream_failure_parks_the_users_of_its_records_or_comes_back() {
        let user = ("dev".to_owned(), "usr_42".to_owned());
        let (function, _, builds) = function(Replay(Ok(vec![user.clone()])));
        let answer = function
            .handle(sample("sqs-audience-stream-failure.json"), DEADLINE)
            .await;
        assert_eq!(answer.unwrap(), json!({"batchItemFailures": []}));
        assert_eq!(builds.take_parked(), [user]);
        let (function, _, builds) = function_failing_replay();
        let answer = function
            .handle(sample("sqs-audience-stream-failure.json"), DEADLINE)
            .await;
        assert_eq!(
            answer.unwrap(),
            json!({"batchItemFailures": [{"itemIdentifier": "6f1c2a8e-7b1d-4c0e-9a55-2d9f7a1e0301"}]})
        );
        assert!(builds.take_parked().is_empty());
    }

    fn function_failing_replay() -> (Function, MemoryAudiences, MemoryBuilds) {
        function(Replay(Err(PortError::Refused(
            "TrimmedDataAccessException".into(),
        ))))
    }

    #[tokio::test]
    async fn a_stream_batch_reports_its_unreadable_record_and_settles_the_rest() {
        let (function, store, _) = function(Replay(Ok(Vec::new())));
        let answer = function
            .handle(sample("dynamodb-stream.json"), DEADLINE)
            .await;
        assert_eq!(
            answer.unwrap(),
            json!({"batchItemFailures": [{"itemIdentifier": "300"}]})
        );
        // The readable records' workspace was looked at (no audiences: nothing more).
        assert!(store
            .journal
            .calls()
            .contains(&"audiences.revision".to_owned()));
    }

    #[tokio::test]
    async fn an_event_of_no_source_of_this_function_is_refused() {
        let (function, _, _) = function(Replay(Ok(Vec::new())));
        let answer = function.handle(json!({"hello": "world"}), DEADLINE).await;
        assert!(matches!(answer, Err(InvocationError::Unreadable)));
    }
}
