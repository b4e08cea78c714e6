//! DynamoDB Streams, read again by position: the records a failure destination names
//! (Lambda's on-failure message for a stream batch holds positions, never records)
//! turned back into the users they wrote. It owns the stream's quirks: sequence numbers
//! are decimal strings of any length, a shard is read through iterators, and a page can
//! come back empty before the records are there.

use crate::app::ports::{PortError, StreamRange, StreamReplay, UserKey};
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use aws_sdk_dynamodbstreams::Client;
use std::cmp::Ordering;
use std::collections::BTreeSet;

/// Records asked for per page (GetRecords takes at most 1,000).
const PAGE: i32 = 1_000;
/// Pages read at most for one range: a failed batch is at most 10,000 records.
const MOST_PAGES: usize = 20;
/// Empty pages in a row after which the range is taken as read to its end.
const EMPTY_PAGES: usize = 3;

pub struct StreamReader {
    client: Client,
}

impl StreamReader {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

/// A stream record's position, compared as the number it is.
fn compare_sequence(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// The range a failure destination's message names, or `None` if it names none.
pub fn decode_failure(body: &str) -> Option<StreamRange> {
    let message: serde_json::Value = serde_json::from_str(body).ok()?;
    let info = message.get("DDBStreamBatchInfo")?;
    let text = |name: &str| info.get(name)?.as_str().map(str::to_owned);
    Some(StreamRange {
        stream_arn: text("streamArn")?,
        shard_id: text("shardId")?,
        first: text("startSequenceNumber")?,
        last: text("endSequenceNumber")?,
    })
}

/// The user a users-table record's keys name: `pk` is `<workspace>#<user>` (workspace
/// ids never hold `#`).
fn user_of(
    keys: &std::collections::HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>,
) -> Option<UserKey> {
    let pk = keys.get("pk")?.as_s().ok()?;
    let (workspace_id, user_id) = pk.split_once('#')?;
    Some((workspace_id.to_owned(), user_id.to_owned()))
}

impl StreamReplay for StreamReader {
    async fn users_in(&self, range: &StreamRange) -> Result<Vec<UserKey>, PortError> {
        let mut iterator = self
            .client
            .get_shard_iterator()
            .stream_arn(&range.stream_arn)
            .shard_id(&range.shard_id)
            .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
            .sequence_number(&range.first)
            .send()
            .await?
            .shard_iterator;
        let mut users = BTreeSet::new();
        let mut empty = 0;
        for _ in 0..MOST_PAGES {
            let Some(at) = iterator.take() else {
                // The shard is closed and read to its end.
                return Ok(users.into_iter().collect());
            };
            let page = self
                .client
                .get_records()
                .shard_iterator(at)
                .limit(PAGE)
                .send()
                .await?;
            empty = if page.records().is_empty() {
                empty + 1
            } else {
                0
            };
            for record in page.records() {
                let Some(change) = record.dynamodb() else {
                    continue;
                };
                let past_end = change
                    .sequence_number()
                    .is_some_and(|at| compare_sequence(at, &range.last) == Ordering::Greater);
                if past_end {
                    return Ok(users.into_iter().collect());
                }
                users.extend(change.keys().and_then(user_of));
            }
            if empty == EMPTY_PAGES {
                return Ok(users.into_iter().collect());
            }
            iterator = page.next_shard_iterator;
        }
        Err(PortError::Unavailable(
            "stream range not read to its end".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        assert_eq!(compare_sequence("900", "1000"), Ordering::Less);
        assert_eq!(compare_sequence("1000", "1000"), Ordering::Equal);
        assert_eq!(compare_sequence("1001", "999"), Ordering::Greater);
    }

    #[test]
    fn a_failure_destination_message_names_its_range_and_nothing_else_does() {
        let body = r#"{"requestContext":{"requestId":"r","functionArn":"arn:aws:lambda:us-east-1:1:function:audiences","condition":"RecordAgeExceeded","approximateInvokeCount":1},
            "version":"1.0","timestamp":"2026-12-06T01:00:00.000Z",
            "DDBStreamBatchInfo":{"shardId":"shardId-1","startSequenceNumber":"100","endSequenceNumber":"200",
            "approximateArrivalOfFirstRecord":"2026-12-06T00:00:00Z","approximateArrivalOfLastRecord":"2026-12-06T00:00:01Z",
            "batchSize":3,"streamArn":"arn:aws:dynamodb:us-east-1:1:table/users/stream/2026"}}"#;
        assert_eq!(
            decode_failure(body),
            Some(StreamRange {
                stream_arn: "arn:aws:dynamodb:us-east-1:1:table/users/stream/2026".into(),
                shard_id: "shardId-1".into(),
                first: "100".into(),
                last: "200".into(),
            })
        );
        for other in [
            "",
            "{}",
            r#"{"DDBStreamBatchInfo":{"shardId":"s"}}"#,
            r#"{"workspace_id":"w"}"#,
        ] {
            assert_eq!(decode_failure(other), None, "{other}");
        }
    }
}
