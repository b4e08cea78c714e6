//! The changes function's edge: a DynamoDB stream event of the users table in, change
//! events published, and the first record not done named in the answer, from which the
//! event source mapping retries.

use crate::app::ports::EventBus;
use crate::app::publish::Publish;
use crate::aws::eventbridge::EventBridgeBus;
use crate::config::Resources;
use aws_lambda_events::dynamodb::Event;
use aws_lambda_events::streams::DynamoDbEventResponse;
use std::time::Instant;

pub struct Changes<B> {
    publish: Publish<B>,
}

impl Changes<EventBridgeBus> {
    /// EventBridge has no call that is harmless with `events:PutEvents` alone, so the
    /// first batch opens the connection.
    pub fn on_aws(sdk: &aws_config::SdkConfig, resources: &Resources) -> Self {
        let client = aws_sdk_eventbridge::Client::new(sdk);
        Changes::new(Publish::new(EventBridgeBus::new(
            client,
            &resources.event_bus_name,
        )))
    }
}

impl<B: EventBus> Changes<B> {
    pub fn new(publish: Publish<B>) -> Self {
        Self { publish }
    }

    pub async fn handle(&self, event: Event) -> DynamoDbEventResponse {
        let started = Instant::now();
        let records = super::stream_changes(&event);
        let published = self.publish.publish(&records).await;
        tracing::info!(
            records = records.len(),
            events = published.events,
            failed = published.first_failure.is_some(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "stream batch"
        );
        super::stream_response(published.first_failure)
    }
}
