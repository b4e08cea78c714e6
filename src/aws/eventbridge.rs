//! EventBridge adapter: change events go to the stack's bus.

use crate::app::ports::{EventBus, PortError};
use crate::domain::change::ChangeEvent;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use aws_sdk_eventbridge::Client;

#[derive(Clone)]
pub struct EventBridgeBus {
    client: Client,
    name: String,
}

impl EventBridgeBus {
    pub fn new(client: Client, name: impl Into<String>) -> Self {
        Self {
            client,
            name: name.into(),
        }
    }
}

impl EventBus for EventBridgeBus {
    /// PutEvents' limits: entries per call, and bytes per call (EventBridge counts each
    /// entry's source, detail type, detail and bus name; a margin covers the rest).
    const MAX_ENTRIES_PER_CALL: usize = 10;
    const MAX_BYTES_PER_CALL: usize = 240 * 1024;

    fn entry_size(event: &ChangeEvent) -> usize {
        event.source.len() + event.detail_type.len() + event.detail.to_string().len()
    }

    async fn put(&self, events: &[&ChangeEvent]) -> Result<Vec<usize>, PortError> {
        let entries = events
            .iter()
            .map(|event| {
                PutEventsRequestEntry::builder()
                    .event_bus_name(&self.name)
                    .source(event.source)
                    .detail_type(event.detail_type)
                    .detail(event.detail.to_string())
                    .build()
            })
            .collect();
        let out = self
            .client
            .put_events()
            .set_entries(Some(entries))
            .send()
            .await?;
        Ok(out
            .entries()
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.error_code().is_some())
            .map(|(index, _)| index)
            .collect())
    }
}
