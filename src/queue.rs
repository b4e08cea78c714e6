//! SQS adapter: accepted upserts go to the upsert queue.

use crate::aws::{call_groups, AwsError};
use crate::upsert::UpsertMessage;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client;
use futures::future::join_all;

/// SendMessageBatch's limits: entries per call, and bytes of all bodies together.
const MAX_ENTRIES_PER_CALL: usize = 10;
const MAX_BYTES_PER_CALL: usize = 256 * 1024;
/// Entries SQS refused within a successful call are sent again this many times (the
/// SDK already retries a call that failed as a whole).
const ENTRY_RETRIES: usize = 2;

#[derive(Clone)]
pub struct UpsertQueue {
    client: Client,
    url: String,
}

/// Bodies that could not be enqueued: their indices, and why (for the log).
#[derive(Debug, Default)]
pub struct Unsent {
    pub bodies: Vec<usize>,
    pub error: Option<String>,
}

impl UpsertQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    /// Opens the connection to SQS (and resolves credentials and endpoint) with a read
    /// of the queue's ARN, so that the first upsert of the instance does not.
    pub async fn open_connection(&self) -> Result<(), AwsError> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await?;
        Ok(())
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

    /// Sends many bodies in as few SendMessageBatch calls as SQS allows, all calls at
    /// once; returns the bodies SQS did not store.
    pub async fn send_all(&self, bodies: &[&str]) -> Unsent {
        let sizes = bodies.iter().map(|body| body.len());
        let calls = call_groups(sizes, MAX_ENTRIES_PER_CALL, MAX_BYTES_PER_CALL)
            .into_iter()
            .map(|group| self.send_group(bodies, group));
        let mut unsent = Unsent::default();
        for (failed, error) in join_all(calls).await {
            unsent.bodies.extend(failed);
            unsent.error = unsent.error.or(error);
        }
        unsent.bodies.sort_unstable();
        unsent
    }

    /// One call, then again for the entries SQS refused within it.
    async fn send_group(
        &self,
        bodies: &[&str],
        mut pending: Vec<usize>,
    ) -> (Vec<usize>, Option<String>) {
        let mut error = None;
        for _ in 0..=ENTRY_RETRIES {
            let entries = pending.iter().map(|&index| {
                SendMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .message_body(bodies[index])
                    .build()
            });
            let entries = match entries.collect::<Result<Vec<_>, _>>() {
                Ok(entries) => entries,
                Err(err) => return (pending, Some(err.to_string())),
            };
            let sent = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await;
            match sent {
                Ok(out) => {
                    let refused: Vec<&str> = out.failed().iter().map(|f| f.id()).collect();
                    if let Some(first) = out.failed().first() {
                        error = Some(format!(
                            "{}: {}",
                            first.code(),
                            first.message().unwrap_or("")
                        ));
                    }
                    pending.retain(|index| refused.contains(&index.to_string().as_str()));
                }
                // The SDK retried it already; the whole group is unsent.
                Err(err) => return (pending, Some(AwsError::from(err).to_string())),
            }
            if pending.is_empty() {
                return (pending, None);
            }
        }
        (pending, error)
    }
}
