//! The edges: each turns a Lambda event into a use-case call and its result into what
//! Lambda expects back, with one log line per request or batch.

pub mod audiences;
pub mod http;
pub mod sqs;
pub mod stream;

use crate::app::publish::StreamChange;
use crate::aws::dynamodb::{stream_image, ImageError};
use aws_lambda_events::dynamodb::Event as StreamEvent;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse};
use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};

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
