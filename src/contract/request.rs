//! The checks of a request that need no I/O, in the contract's order after the rate
//! limit: content type, size, JSON and schema, Idempotency-Key. Headers arrive as raw
//! bytes: the edge that read them is HTTP's, this is the contract's.

use super::{
    parse_email, validate_idempotency_key, BodyError, ErrorCode, FieldError, MAX_BATCH_BODY_BYTES,
    MAX_BODY_BYTES,
};
use std::borrow::Cow;

/// Why the checks refused a request. Each maps to one status and `code` in the one
/// place answers are made.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// The body is over the route's limit, which the message names.
    #[error("payload too large")]
    PayloadTooLarge(&'static str),
    #[error("invalid body")]
    Body(#[from] BodyError),
    #[error("invalid query")]
    Query(FieldError),
    #[error("invalid Idempotency-Key")]
    InvalidIdempotencyKey(FieldError),
    /// No such user, or an id no user can have.
    #[error("user not found")]
    UserNotFound,
    /// An audience id that is not 1–64 of `[A-Za-z0-9_-]`, to define.
    #[error("invalid audience id")]
    InvalidAudienceId,
    /// A webhook id that is not 1–64 of `[A-Za-z0-9_-]`, to subscribe.
    #[error("invalid webhook id")]
    InvalidWebhookId,
}

/// A route's body: the media types it takes, its limit (checked on the raw bytes), and
/// what its 413 says.
pub struct BodyLimit {
    media_types: &'static [&'static str],
    bytes: usize,
    refusal: &'static str,
}

const JSON: &[&str] = &["application/json"];
/// Segment's routes also take the label RudderStack's Node library puts on its gzipped
/// JSON (axios names a binary body so); the body is read as JSON all the same.
const SEGMENT_MEDIA_TYPES: &[&str] = &["application/json", "application/x-www-form-urlencoded"];

pub const UPSERT_BODY: BodyLimit = BodyLimit {
    media_types: JSON,
    bytes: MAX_BODY_BYTES,
    refusal: "body is over 32 KiB (32,768 bytes)",
};
pub const BATCH_BODY: BodyLimit = BodyLimit {
    media_types: JSON,
    bytes: MAX_BATCH_BODY_BYTES,
    refusal: "body is over 512 KiB (524,288 bytes)",
};
/// Segment's limits: one message per identify, 500 KB per batch.
pub const SEGMENT_IDENTIFY_BODY: BodyLimit = BodyLimit {
    media_types: SEGMENT_MEDIA_TYPES,
    bytes: super::MAX_SEGMENT_MESSAGE_BYTES,
    refusal: "a message is over 32 KB",
};
pub const SEGMENT_BATCH_BODY: BodyLimit = BodyLimit {
    media_types: SEGMENT_MEDIA_TYPES,
    bytes: super::MAX_SEGMENT_BATCH_BYTES,
    refusal: "a batch is over 500 KB (512,000 bytes)",
};

/// Content type, size, then JSON and schema (`parse`).
pub fn checked_body<T>(
    content_type: Option<&[u8]>,
    body: &[u8],
    limit: &BodyLimit,
    parse: impl FnOnce(&[u8]) -> Result<T, BodyError>,
) -> Result<T, RequestError> {
    if !is_media_type(content_type, limit.media_types) {
        return Err(RequestError::UnsupportedMediaType);
    }
    if body.len() > limit.bytes {
        return Err(RequestError::PayloadTooLarge(limit.refusal));
    }
    Ok(parse(body)?)
}

/// The `Idempotency-Key` header, if sent and well formed.
pub fn idempotency_key(header: Option<&[u8]>) -> Result<Option<String>, RequestError> {
    header
        .map(|raw| validate_idempotency_key(raw).map(str::to_owned))
        .transpose()
        .map_err(RequestError::InvalidIdempotencyKey)
}

/// The body as sent (borrowed), or inflated when `Content-Encoding: gzip` (owned: a
/// Segment library may compress), refused past the route's limit when inflated (never
/// inflated past it).
pub fn decoded_body<'a>(
    content_encoding: Option<&[u8]>,
    body: &'a [u8],
    limit: &BodyLimit,
) -> Result<Cow<'a, [u8]>, RequestError> {
    use std::io::Read;
    let gzipped = content_encoding.is_some_and(|e| e.trim_ascii().eq_ignore_ascii_case(b"gzip"));
    if !gzipped {
        return Ok(Cow::Borrowed(body));
    }
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(limit.bytes as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(|_| BodyError::InvalidJson("body is not valid gzip".into()))?;
    if inflated.len() > limit.bytes {
        return Err(RequestError::PayloadTooLarge(limit.refusal));
    }
    Ok(Cow::Owned(inflated))
}

/// A body `decoded_body` gave under a larger limit, as it gives it under `limit`,
/// without inflating it again: a gzip that inflated whole inflates to the same bytes
/// under any limit, so what it inflated is refused past `limit`; a body as sent passes.
pub fn decoded_within<'a>(
    decoded: Cow<'a, [u8]>,
    limit: &BodyLimit,
) -> Result<Cow<'a, [u8]>, RequestError> {
    match decoded {
        Cow::Owned(inflated) if inflated.len() > limit.bytes => {
            Err(RequestError::PayloadTooLarge(limit.refusal))
        }
        decoded => Ok(decoded),
    }
}

/// One of `media_types`, parameters such as `charset` allowed.
fn is_media_type(header: Option<&[u8]>, media_types: &[&str]) -> bool {
    header
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| {
            let media = media.trim();
            media_types.iter().any(|m| media.eq_ignore_ascii_case(m))
        })
}

/// The `email` query parameter of a lookup, trimmed and checked.
pub fn email_query(raw: Option<&str>) -> Result<String, RequestError> {
    let raw = raw.unwrap_or_default();
    if raw.trim().is_empty() {
        return Err(RequestError::Query(FieldError::new(
            ErrorCode::Required,
            "email",
            "query parameter email is required",
        )));
    }
    parse_email(raw).map(str::to_owned).ok_or_else(|| {
        RequestError::Query(FieldError::new(
            ErrorCode::InvalidEmail,
            "email",
            "email is not a valid address",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::parse_upsert;

    #[test]
    fn content_type_then_size_then_schema() {
        let body = br#"{"external_user_id":"u"}"#;
        let check = |content_type: Option<&[u8]>, body: &[u8]| {
            checked_body(content_type, body, &UPSERT_BODY, |b| parse_upsert(b, 0)).map(|_| ())
        };
        assert_eq!(
            check(Some(b"application/json; charset=utf-8"), body),
            Ok(())
        );
        assert_eq!(check(Some(b"Application/JSON"), body), Ok(()));
        assert_eq!(
            check(Some(b"text/plain"), &[b'x'; 40_000]),
            Err(RequestError::UnsupportedMediaType)
        );
        assert_eq!(check(None, body), Err(RequestError::UnsupportedMediaType));
        let form = Some(b"application/x-www-form-urlencoded".as_slice());
        assert_eq!(check(form, body), Err(RequestError::UnsupportedMediaType));
        let segment = |content_type| {
            checked_body(content_type, b"{}", &SEGMENT_BATCH_BODY, |_| Ok(())).map(|_| ())
        };
        assert_eq!(
            segment(form),
            Ok(()),
            "RudderStack's Node library labels its gzip so"
        );
        assert_eq!(
            segment(Some(b"text/plain")),
            Err(RequestError::UnsupportedMediaType)
        );
        assert!(matches!(
            check(Some(b"application/json"), &[b'x'; 40_000]),
            Err(RequestError::PayloadTooLarge(_))
        ));
        assert!(matches!(
            check(Some(b"application/json"), b"{"),
            Err(RequestError::Body(BodyError::InvalidJson(_)))
        ));
    }

    #[test]
    fn a_gzipped_body_is_inflated_within_the_limit() {
        use std::io::Write;
        let gzip = |bytes: &[u8]| {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(bytes).unwrap();
            encoder.finish().unwrap()
        };
        let body = br#"{"batch":[]}"#;
        let sent = gzip(body);
        assert_eq!(
            decoded_body(Some(b"gzip"), &sent, &UPSERT_BODY)
                .unwrap()
                .as_ref(),
            body
        );
        assert_eq!(
            decoded_body(None, body, &UPSERT_BODY).unwrap().as_ref(),
            body
        );
        let bomb = gzip(&vec![b' '; 40_000]);
        assert!(matches!(
            decoded_body(Some(b"gzip"), &bomb, &UPSERT_BODY),
            Err(RequestError::PayloadTooLarge(_))
        ));
        assert!(decoded_body(Some(b"gzip"), b"not gzip", &UPSERT_BODY).is_err());
        // Inflated once under a larger limit, then held to a smaller one: as if
        // inflated under it.
        let within = |sent: &[u8], encoding: Option<&[u8]>| {
            let decoded = decoded_body(encoding, sent, &SEGMENT_BATCH_BODY).unwrap();
            let again = decoded_body(encoding, sent, &UPSERT_BODY);
            assert_eq!(decoded_within(decoded, &UPSERT_BODY), again);
            again.map(Cow::into_owned)
        };
        assert_eq!(within(&sent, Some(b"gzip")), Ok(body.to_vec()));
        assert!(matches!(
            within(&bomb, Some(b"gzip")),
            Err(RequestError::PayloadTooLarge(_))
        ));
        // As sent, a body's size is checked after its content type (`checked_body`).
        let spaces = vec![b' '; 40_000];
        assert_eq!(within(&spaces, None).unwrap().len(), 40_000);
    }

    #[test]
    fn idempotency_keys_and_email_queries_are_checked() {
        assert_eq!(idempotency_key(None), Ok(None));
        assert_eq!(idempotency_key(Some(b"k-1")), Ok(Some("k-1".into())));
        assert!(idempotency_key(Some(b"")).is_err());
        assert_eq!(
            email_query(Some(" Jane@Acme.io ")),
            Ok("Jane@Acme.io".into())
        );
        assert!(
            matches!(email_query(None), Err(RequestError::Query(e)) if e.code == ErrorCode::Required)
        );
        assert!(
            matches!(email_query(Some("nope")), Err(RequestError::Query(e)) if e.code == ErrorCode::InvalidEmail)
        );
    }
}
