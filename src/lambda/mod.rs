//! The edges: each turns a Lambda event into a use-case call and its result into what
//! Lambda expects back, with one log line per request or batch.

pub mod audiences;
pub mod http;
pub mod sqs;
pub mod stream;
pub mod webhooks;

use crate::app::publish::StreamChange;
use crate::app::webhook_marks::WebhookMarks;
use crate::aws::dynamodb::WebhookStore;
use crate::aws::dynamodb::{stream_image, ImageError};
use crate::aws::eventbridge::EventBridgeBus;
use crate::config::Resources;
use aws_lambda_events::dynamodb::Event as StreamEvent;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse};
use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};

/// The bus both producers (changes, audiences) put on: EventBridge, each event of a
/// workspace with webhooks marked for the rule that feeds delivery.
pub type ProducerBus = WebhookMarks<EventBridgeBus, WebhookStore>;

fn producer_bus(sdk: &aws_config::SdkConfig, resources: &Resources) -> ProducerBus {
    WebhookMarks::new(
        EventBridgeBus::new(
            aws_sdk_eventbridge::Client::new(sdk),
            &resources.event_bus_name,
        ),
        WebhookStore::new(
            aws_sdk_dynamodb::Client::new(sdk),
            &resources.webhooks_table,
        ),
        std::sync::Arc::new(crate::clock::now_millis),
    )
}

/// A queue's name: the last part of its URL or ARN.
fn queue_name(url_or_arn: &str) -> &str {
    url_or_arn.rsplit(['/', ':']).next().unwrap_or_default()
}

/// A users-stream event's records as the use cases read them: each one's position and
/// its images.
fn stream_changes(event: &StreamEvent) -> Vec<StreamChange<'_, ImageError>> {
    event
        .records
        .iter()
        .map(|record| StreamChange {
            position: record.change.sequence_number.as_deref().unwrap_or_default(),
            images: stream_image(&record.change),
        })
        .collect()
}

/// A stream batch's answer: the first record not done, from which the event source
/// mapping delivers the batch again.
fn stream_response(first_failure: Option<&str>) -> DynamoDbEventResponse {
    let mut response = DynamoDbEventResponse::default();
    response.batch_item_failures = first_failure
        .map(|position| {
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = Some(position.to_owned());
            failure
        })
        .into_iter()
        .collect();
    response
}

/// A queue batch's answer: the messages not done, which come back.
fn sqs_response(failed: impl IntoIterator<Item = String>) -> SqsBatchResponse {
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

/// What the edges' tests share: the sample events of `events/` (each edge's tests are
/// fed them as Lambda would), and the resources of a stack.
#[cfg(test)]
pub(crate) mod samples {
    use crate::config::Resources;

    /// `events/<name>`, as `T` (an event type, or a JSON value).
    pub fn sample<T: serde::de::DeserializeOwned>(name: &str) -> T {
        let path = format!("{}/events/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// `events/<name>` as its raw text.
    pub fn sample_text(name: &str) -> String {
        let path = format!("{}/events/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    pub fn resources() -> Resources {
        let queue =
            |name: &str| format!("http://127.0.0.1:4566/123456789012/vibefollow-local-{name}");
        Resources {
            users_table: "users".into(),
            users_item_format: Default::default(),
            idempotency_table: "idempotency".into(),
            api_keys_table: "api-keys".into(),
            rate_limits_table: "rate-limits".into(),
            upsert_queue_url: queue("upserts"),
            default_rate_limit: 100,
            rate_limit_shard_rate: 400.0,
            event_bus_name: "bus".into(),
            audiences_table: "audiences".into(),
            audience_members_table: "audience-members".into(),
            audience_build_queue_url: queue("audience-builds"),
            audience_retry_queue_url: queue("audience-retries"),
            audience_time_queue_url: queue("audience-time"),
            audience_stream_failure_queue_url: queue("audience-stream-failures"),
            audience_tick_seconds: 60,
            due_settle_rate: 400.0,
            webhooks_table: "webhooks".into(),
            webhook_wake_queue_url: queue("webhook-wakes"),
            webhook_reach: crate::domain::webhook::Reach::Public,
            webhook_time_factor: 1.0,
            metrics_namespace: "VibeFollow/test".into(),
        }
    }

    /// Every file of `events/` is some edge test's input here, so that a sample that
    /// drifts from what the code reads fails under plain `cargo test`.
    #[test]
    fn every_sample_event_feeds_an_edge_test() {
        let root = env!("CARGO_MANIFEST_DIR");
        let edges: String = [
            "mod.rs",
            "sqs.rs",
            "stream.rs",
            "audiences.rs",
            "webhooks_tests.rs",
            "http/mod.rs",
        ]
        .iter()
        .map(|file| std::fs::read_to_string(format!("{root}/src/lambda/{file}")).unwrap())
        .collect();
        let samples = std::fs::read_dir(format!("{root}/events")).unwrap();
        for sample in samples {
            let name = sample.unwrap().file_name().into_string().unwrap();
            assert!(
                edges.contains(&format!("\"{name}\"")),
                "events/{name} feeds no edge test"
            );
        }
    }
}
