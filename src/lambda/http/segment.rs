//! Segment's routes (`POST /v1/identify`, `POST /v1/batch`) at the edge: a library's
//! key, from a header or the body's `writeKey`, then its messages as a batch of upserts
//! whose refusals are listed as dropped.

use super::answers::Success;
use super::{Api, ApiError, Route, Trace};
use crate::app::accept::{Accepted, Checked, Write};
use crate::app::ports::{
    ApiKeys, Audiences, BuildQueue, Counters, IdempotencyKeys, Memberships, PortError, UpsertQueue,
    Users,
};
use crate::contract::{
    body_write_key, checked_body, decoded_body, parse_segment_batch, parse_segment_identify,
    ErrorCode, SEGMENT_BATCH_BODY, SEGMENT_IDENTIFY_BODY,
};
use crate::domain::auth::{is_key_shaped, write_key, ApiKeyRecord, CredentialError};
use lambda_http::http::{header, HeaderMap};

impl<K, I, Q, C, U, S, B> Api<K, I, Q, C, U, S, B>
where
    K: ApiKeys,
    I: IdempotencyKeys,
    Q: UpsertQueue,
    C: Counters,
    U: Users,
    S: Audiences + Memberships,
    B: BuildQueue,
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
        let key = self.authenticate_segment(headers, body, trace).await?;
        let (caller, stamp) = self.admit(&key, route, request_id, trace)?;
        let now_ms = stamp.accepted_at;
        let content_type = super::header(headers, header::CONTENT_TYPE);
        let (limit, parse): (_, fn(&[u8], i64) -> _) = match route {
            Route::SegmentIdentify => (&SEGMENT_IDENTIFY_BODY, parse_segment_identify),
            _ => (&SEGMENT_BATCH_BODY, parse_segment_batch),
        };
        let parsed = decoded_body(
            super::header(headers, header::CONTENT_ENCODING),
            body,
            limit,
        )
        .and_then(|body| checked_body(content_type, &body, limit, |b| parse(b, now_ms)));
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
    /// `writeKey` member of the body.
    async fn authenticate_segment(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        trace: &mut Trace,
    ) -> Result<ApiKeyRecord, ApiError> {
        let key = match super::header(headers, header::AUTHORIZATION) {
            Some(authorization) => write_key(Some(authorization))?,
            None => body_write_key(super::header(headers, header::CONTENT_ENCODING), body)
                .filter(|key| is_key_shaped(key))
                .ok_or(CredentialError::Missing)?,
        };
        self.key_record(&key, trace).await
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::auth::Scope;
    use crate::lambda::http::tests::{answer, post, request, world};
    use lambda_http::http::StatusCode;

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
}
