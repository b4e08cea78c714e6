//! The consumer function's edge: an SQS event of accepted writes in, a partial batch
//! response out. An unreadable body is reported failed, never dropped: it reaches the
//! dead-letter queue after `maxReceiveCount` receives.

use crate::app::apply::{Applied, Apply};
use crate::app::ports::Users;
use crate::aws::dynamodb::UserStore;
use crate::aws::sqs::decode;
use crate::clock::now_millis;
use crate::config::Resources;
use crate::metrics::{self, BatchMetrics};
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use std::time::Instant;

pub struct Consumer<U> {
    apply: Apply<U>,
    metrics_namespace: String,
}

impl Consumer<UserStore> {
    /// Builds the users adapter and opens its connection during init (see
    /// `AwsApi::on_aws`).
    pub async fn on_aws(sdk: &aws_config::SdkConfig, resources: &Resources) -> Self {
        let users = UserStore::new(aws_sdk_dynamodb::Client::new(sdk), &resources.users_table)
            .writing(resources.users_item_format);
        crate::aws::open_connections(async { [users.open_connection().await] }).await;
        Consumer::new(Apply::new(users), &resources.metrics_namespace)
    }
}

impl<U: Users> Consumer<U> {
    pub fn new(apply: Apply<U>, metrics_namespace: &str) -> Self {
        Self {
            apply,
            metrics_namespace: metrics_namespace.to_owned(),
        }
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let started = Instant::now();
        let mut unreadable = Vec::new();
        let mut messages = Vec::with_capacity(event.records.len());
        for record in &event.records {
            let id = record.message_id.as_deref().unwrap_or_default();
            match record.body.as_deref().map(decode) {
                Some(Ok(decoded)) => messages.extend(decoded.into_iter().map(|m| (id, m))),
                Some(Err(err)) => {
                    tracing::error!(message_id = id, error = %err, "unprocessable message");
                    unreadable.push(id.to_owned());
                }
                None => {
                    tracing::error!(message_id = id, "message without a body");
                    unreadable.push(id.to_owned());
                }
            }
        }
        let count = messages.len();
        let now_ms = now_millis();
        let Applied {
            mut failed,
            users,
            rejected_traits,
            lag_ms,
        } = self.apply.apply(messages, now_ms).await;
        failed.extend(unreadable);
        tracing::info!(
            records = event.records.len(),
            messages = count,
            users,
            failed = failed.len(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "batch"
        );
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
        super::sqs_response(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::fakes::{unavailable, MemoryUsers};
    use crate::domain::ProfileField;
    use crate::lambda::samples::sample;

    fn consumer() -> (Consumer<MemoryUsers>, MemoryUsers) {
        let users = MemoryUsers::default();
        (
            Consumer::new(Apply::new(users.clone()), "VibeFollow/test"),
            users,
        )
    }

    fn failed(answer: &SqsBatchResponse) -> Vec<&str> {
        let ids = answer.batch_item_failures.iter();
        ids.map(|f| f.item_identifier.as_str()).collect()
    }

    #[tokio::test]
    async fn a_batch_is_applied_in_stamp_order_and_an_unreadable_body_reported() {
        let (consumer, users) = consumer();
        let answer = consumer.handle(sample("sqs-upserts.json")).await;
        assert_eq!(failed(&answer), ["0b9e1d5c-1a52-4bde-9a55-7c6b1a3e0003"]);
        let user = users.user("dev", "usr_42").expect("applied");
        // The second message was accepted earlier: the first one's plan wins.
        let plan = user.profile.profile.get(&ProfileField::Plan);
        assert_eq!(plan.map(String::as_str), Some("trial"));
    }

    #[tokio::test]
    async fn a_batch_the_table_refuses_comes_back_whole() {
        let (consumer, users) = consumer();
        users.faults.fail("users.get_many", unavailable(), 1);
        let answer = consumer.handle(sample("sqs-upserts.json")).await;
        let mut ids = failed(&answer);
        ids.sort_unstable();
        assert_eq!(
            ids,
            [
                "0b9e1d5c-1a52-4bde-9a55-7c6b1a3e0001",
                "0b9e1d5c-1a52-4bde-9a55-7c6b1a3e0002",
                "0b9e1d5c-1a52-4bde-9a55-7c6b1a3e0003"
            ]
        );
        assert!(users.user("dev", "usr_42").is_none());
    }
}
