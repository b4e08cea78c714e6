//! SQS adapter: accepted upserts go to the upsert queue.

use crate::aws::AwsError;
use crate::upsert::UpsertMessage;
use aws_sdk_sqs::Client;

#[derive(Clone)]
pub struct UpsertQueue {
    client: Client,
    url: String,
}

impl UpsertQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    /// Returns once SQS has durably stored the message: only then may we answer 202.
    pub async fn send(&self, message: &UpsertMessage) -> Result<(), AwsError> {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(message.to_json())
            .send()
            .await?;
        Ok(())
    }
}
