//! Segment's routes (`POST /v1/identify`, `POST /v1/batch`) at the edge: a library's
//! key, from a header or the body's `writeKey`, then its messages as a batch of upserts
//! whose refusals are listed as dropped.

use super::answers::Success;
use super::{Api, ApiError, Route, Trace};
use crate::app::accept::{Accepted, Checked, Write};
use crate::app::ports::{
    ApiKeys, Audiences, BuildQueue, Counters, DeliveryLog, IdempotencyKeys, Memberships, PortError,
    ReplayTasks, UpsertQueue, Users, Webhooks,
};
use crate::contract::{
    body_write_key, checked_body, decoded_body, decoded_within, parse_segment_batch,
    parse_segment_identify, unauthenticated_body, ErrorCode, SEGMENT_BATCH_BODY,
    SEGMENT_IDENTIFY_BODY,
};
use crate::domain::auth::{is_key_shaped, write_key, ApiKeyRecord, CredentialError};
use lambda_http::http::{header, HeaderMap};
use std::borrow::Cow;

/// A body as read for its `writeKey` (inflated, when gzipped); `None` when the key came
/// in a header.
type ReadForKey<'b> = Option<Cow<'b, [u8]>>;

impl<K, I, Q, C, U, S, B, W> Api<K, I, Q, C, U, S, B, W>
where
    K: ApiKeys,
    I: IdempotencyKeys,
    Q: UpsertQueue,
    C: Counters,
    U: Users,
    S: Audiences + Memberships,
    B: BuildQueue + ReplayTasks,
    W: Webhooks + DeliveryLog,
{
    /// Segment's routes: a library's key, then the messages as a batch of upserts (no
    /// Idempotency-Key: a library's retry applies the same values again, which changes
    /// nothing).
    pub(super) async fn segment(
        &self,
        route: &Route,
        headers: &HeaderMap,
        body: &[u8],
        request_id: &str,
        trace: &mut Trace,
    ) -> Result<Success, ApiError> {
        let (key, read) = self.authenticate_segment(headers, body, trace).await?;
        let (caller, stamp) = self.admit(&key, route, request_id, trace)?;
        let now_ms = stamp.accepted_at;
        let content_type = super::header(headers, header::CONTENT_TYPE);
        let (limit, parse): (_, fn(&[u8], i64) -> _) = match route {
            Route::SegmentIdentify => (&SEGMENT_IDENTIFY_BODY, parse_segment_identify),
            _ => (&SEGMENT_BATCH_BODY, parse_segment_batch),
        };
        let decoded = match read {
            // Inflated already, to find its key: not again.
            Some(read) => decoded_within(read, limit),
            None => decoded_body(
                super::header(headers, header::CONTENT_ENCODING),
                body,
                limit,
            ),
        };
        let parsed =
            decoded.and_then(|body| checked_body(content_type, &body, limit, |b| parse(b, now_ms)));
        let (checked, message_ids) = match parsed {
            Ok(messages) => {
                trace.users = Some(messages.message_ids.len());
                let checked = Checked {
                    write: Write::Batch(messages.batch),
                    idempotency_key: None,
                };
                (Ok(checked), messages.message_ids)
            }
            Err(refused) => (Err(refused), Vec::new()),
        };
        let Accepted::Batch { rejected, .. } = self.accept.accept(&caller, checked, stamp).await?
        else {
            unreachable!("a batch is answered as a batch")
        };
        // What could not be enqueued is sent again by the library's retry of the whole
        // request (it cannot resend one message).
        if rejected
            .iter()
            .any(|r| r.errors[0].code == ErrorCode::Unavailable)
        {
            return Err(PortError::Unavailable("messages not enqueued".into()).into());
        }
        Ok(Success::Segment {
            dropped: rejected,
            message_ids,
        })
    }

    /// A Segment library's key: HTTP Basic (the key as user name), a Bearer key, or a
    /// `writeKey` member of the body; and the body as read for that member, for the
    /// route to read as it is.
    async fn authenticate_segment<'b>(
        &self,
        headers: &HeaderMap,
        body: &'b [u8],
        trace: &mut Trace,
    ) -> Result<(ApiKeyRecord, ReadForKey<'b>), ApiError> {
        let (key, read) = match super::header(headers, header::AUTHORIZATION) {
            Some(authorization) => (write_key(Some(authorization))?, None),
            None => {
                let encoding = super::header(headers, header::CONTENT_ENCODING);
                let read = unauthenticated_body(encoding, body);
                let key = read
                    .as_deref()
                    .and_then(body_write_key)
                    .filter(|key| is_key_shaped(key))
                    .ok_or(CredentialError::Missing)?;
                (key, read)
            }
        };
        Ok((self.key_record(&key, trace).await?, read))
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::auth::Scope;
    use crate::lambda::http::tests::{answer, post, request, sent_to, world, SAMPLE_KEY};
    use base64::Engine;
    use lambda_http::http::StatusCode;
    use serde_json::json;

    #[tokio::test]
    async fn segments_hostile_batches_are_answered_in_bounds() {
        let w = world(&[Scope::SegmentWrite]);
        // Not messages at all: 200, the first 100 listed, the rest counted.
        let ones = format!("{{\"batch\":[{}1]}}", "1,".repeat(14_999));
        let (status, body, _) = answer(&w.api, post("/v1/batch", ones)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["dropped"].as_array().map(Vec::len), Some(100));
        assert_eq!(body["dropped_truncated"], 14_900);
        // More than 500 KB holds: refused whole, the code at the top as well.
        let flood = format!("{{\"batch\":[{}1]}}", "1,".repeat(200_000));
        let (status, body, _) = answer(&w.api, post("/v1/batch", flood)).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("too_many"))
        );
        // A segment:write key serves Segment's routes only.
        let (status, _, _) = answer(&w.api, request("apigw-post-user.json", |_| {})).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(w.queue.messages().is_empty());
    }

    #[tokio::test]
    async fn a_key_in_a_gzipped_body_is_read_within_500_kb_and_its_body_inflated_once() {
        let w = world(&[Scope::SegmentWrite]);
        // No key in the headers, the body gzipped (API Gateway hands it in base64).
        let anonymous = |path: &str, body: String| {
            use std::io::Write;
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            encoder.write_all(body.as_bytes()).unwrap();
            let gzipped = encoder.finish().unwrap();
            sent_to(path, |event| {
                let headers = event["headers"].as_object_mut().unwrap();
                headers.remove("authorization");
                headers.insert("content-encoding".into(), json!("gzip"));
                let encoded = base64::engine::general_purpose::STANDARD.encode(gzipped);
                event["body"] = json!(encoded);
                event["isBase64Encoded"] = json!(true);
            })
        };
        let batch = format!(
            r#"{{"writeKey":"{SAMPLE_KEY}","batch":[{{"type":"identify","userId":"u1"}}]}}"#
        );
        let (status, _, _) = answer(&w.api, anonymous("/v1/batch", batch)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(w.queue.messages().len(), 1);
        // Read for its key within 500 KB, then held to one message's 32 KB.
        let identify = format!(
            r#"{{"writeKey":"{SAMPLE_KEY}","userId":"u2","traits":{{"pad":"{}"}}}}"#,
            "x".repeat(40_000)
        );
        let (status, body, _) = answer(&w.api, anonymous("/v1/identify", identify)).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                Some("a message is over 32 KB")
            )
        );
        // One that inflates past 500 KB is not read for a key.
        let bomb = format!(
            r#"{{"batch":[],"pad":"{}","writeKey":"{SAMPLE_KEY}"}}"#,
            "x".repeat(520_000)
        );
        let (status, _, _) = answer(&w.api, anonymous("/v1/batch", bomb)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(w.queue.messages().len(), 1);
    }
}
