//! The changes function's edge: a DynamoDB stream event of the users table in, change
//! events published, and the first record not done named in the answer, from which the
//! event source mapping retries.

use super::ProducerBus;
use crate::app::ports::EventBus;
use crate::app::publish::Publish;
use crate::config::Resources;
use aws_lambda_events::dynamodb::Event;
use aws_lambda_events::streams::DynamoDbEventResponse;
use std::time::Instant;

pub struct ChangesFunction<B> {
    publish: Publish<B>,
}

impl ChangesFunction<ProducerBus> {
    /// EventBridge has no call that is harmless with `events:PutEvents` alone, so the
    /// first batch opens the connection.
    pub fn on_aws(sdk: &aws_config::SdkConfig, resources: &Resources) -> Self {
        ChangesFunction::new(Publish::new(super::producer_bus(sdk, resources)))
    }
}

impl<B: EventBus> ChangesFunction<B> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::fakes::{unavailable, MemoryBus};
    use crate::lambda::samples::sample;

    fn changes() -> (ChangesFunction<MemoryBus>, MemoryBus) {
        let bus = MemoryBus::default();
        (ChangesFunction::new(Publish::new(bus.clone())), bus)
    }

    fn first_failure(answer: &DynamoDbEventResponse) -> Vec<Option<&str>> {
        let failures = answer.batch_item_failures.iter();
        failures.map(|f| f.item_identifier.as_deref()).collect()
    }

    #[tokio::test]
    async fn a_stream_batch_publishes_its_changes_up_to_an_unreadable_record() {
        let (changes, bus) = changes();
        let answer = changes.handle(sample("dynamodb-stream.json")).await;
        // Records 100 and 200 published in order; 300 cannot be read: retried from it.
        assert_eq!(first_failure(&answer), [Some("300")]);
        let published = bus.accepted();
        assert!(!published.is_empty());
        assert!(published
            .iter()
            .all(|e| e.detail["external_user_id"] == "usr_42"));
    }

    #[tokio::test]
    async fn a_bus_that_fails_names_the_first_record_not_published() {
        let (changes, bus) = changes();
        bus.faults.fail("bus.put", unavailable(), 10);
        let answer = changes.handle(sample("dynamodb-stream.json")).await;
        assert_eq!(first_failure(&answer), [Some("100")]);
        assert!(bus.accepted().is_empty());
    }
}
