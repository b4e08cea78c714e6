//! Segment's HTTP tracking API, for identify (`POST /v1/identify`, `POST /v1/batch`):
//! each message becomes the body of `POST /api/v1/users` and is validated exactly as
//! one. A message that cannot be stored is left out alone (listed as dropped), never a
//! 4xx that would make a library discard the valid messages beside it.
//!
//! Mapping (README, "Already on Segment?"): `userId` → `external_user_id`;
//! `traits.email` → `email`; `traits.createdAt` (an RFC 3339 date-time) → `signupDate`; `traits.company.name`
//! (or a string `company`) → `company`, the company's other members → the custom trait
//! `companyDetails`; `traits.title` → `role`; `name`, or else `firstName` and
//! `lastName` joined → `name`; every other trait stays a custom trait of its name;
//! `timestamp` → `timestamp` (source time), corrected for the sender's clock by
//! `sentAt` as Segment does. `anonymousId`, `context`, `integrations` are not stored.

use super::json::{in_body_order, number_literal, read_object, ReadObject};
use super::segment_mapping::{instant_ms, Upsert};
use super::validate::validate_members;
use super::{BodyError, ErrorCode, FieldError, ValidBatch, ValidUpsert, MAX_BODY_BYTES};
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

/// Segment's limits: a batch body (500 KB, as decimal kilobytes: analytics-python
/// fills a batch to ~475,000 bytes and its last message may pass that) and one message.
pub const MAX_SEGMENT_BATCH_BYTES: usize = 512_000;
pub const MAX_SEGMENT_MESSAGE_BYTES: usize = MAX_BODY_BYTES;
/// Messages in one batch: more than 500 KB holds of storable identifies (the smallest,
/// `{"type":"identify","userId":1}` and a comma, takes 31 bytes: 16,515 of them). A
/// batch of more is refused whole before any per-message work (422 `too_many`).
pub const MAX_SEGMENT_MESSAGES: usize = 16_600;

/// The messages of a Segment request, as a batch of upserts (a message that is not a
/// storable identify is a refused entry), and each message's `messageId`.
#[derive(Debug)]
pub struct SegmentMessages {
    pub batch: ValidBatch,
    pub message_ids: Vec<Option<String>>,
}

/// `POST /v1/identify`: one message.
pub fn parse_segment_identify(body: &[u8], now_ms: i64) -> Result<SegmentMessages, BodyError> {
    let read = match read_object(body) {
        Err(BodyError::InvalidJson(refused)) => return Err(BodyError::InvalidJson(refused)),
        // A member named twice drops the message, as in a batch.
        read => read,
    };
    let sent_at = read
        .as_ref()
        .ok()
        .and_then(|read| read.members.get("sentAt"))
        .and_then(instant_ms);
    let (entry, message_id) = message(body, read, false, sent_at, now_ms);
    Ok(one_batch(vec![entry], vec![message_id]))
}

/// `POST /v1/batch`: `{"batch": [...]}`.
pub fn parse_segment_batch(body: &[u8], now_ms: i64) -> Result<SegmentMessages, BodyError> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        batch: Option<Messages<'a>>,
        // Raw: a `sentAt` no double holds (`1e400`) is no time, not a broken body.
        #[serde(rename = "sentAt", borrow)]
        sent_at: Option<&'a RawValue>,
    }
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
        BodyError::InvalidJson(if e.is_data() {
            "body must be a JSON object with a batch array".into()
        } else {
            // Codes and positions only: serde_json's text can quote the body.
            format!(
                "body is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            )
        })
    })?;
    let Some(Messages { raw, count }) = envelope.batch else {
        let missing = FieldError::new(ErrorCode::Required, "batch", "batch is required");
        return Err(BodyError::Invalid(vec![missing]));
    };
    if count > MAX_SEGMENT_MESSAGES {
        let message = format!("a batch holds at most {MAX_SEGMENT_MESSAGES} messages");
        let too_many = FieldError::new(ErrorCode::TooMany, "batch", message);
        return Err(BodyError::Invalid(vec![too_many]));
    }
    let sent_at = envelope
        .sent_at
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
        .as_ref()
        .and_then(instant_ms);
    let (entries, message_ids) = raw
        .into_iter()
        .map(|raw| {
            let raw = raw.get().as_bytes();
            message(raw, read_object(raw), true, sent_at, now_ms)
        })
        .unzip();
    Ok(one_batch(entries, message_ids))
}

/// A batch's messages as written, up to `MAX_SEGMENT_MESSAGES` kept; `count` of all.
struct Messages<'a> {
    raw: Vec<&'a RawValue>,
    count: usize,
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Messages<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Counting;
        impl<'de> Visitor<'de> for Counting {
            type Value = Messages<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of messages")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
                let mut messages = Messages {
                    raw: Vec::new(),
                    count: 0,
                };
                while messages.count < MAX_SEGMENT_MESSAGES {
                    match items.next_element::<&RawValue>()? {
                        Some(raw) => messages.raw.push(raw),
                        None => return Ok(messages),
                    }
                    messages.count += 1;
                }
                // Past the bound the rest is only counted, never kept.
                while items.next_element::<IgnoredAny>()?.is_some() {
                    messages.count += 1;
                }
                Ok(messages)
            }
        }
        deserializer.deserialize_seq(Counting)
    }
}

/// The body of a request that has no `Authorization` header, read for its `writeKey`:
/// as sent, or inflated (once: the route reads these bytes, `decoded_within`). Such a
/// body comes from anyone: it is read no further than Segment's 500 KB (a larger one,
/// or one that inflates past it, is not read: it has no key).
pub fn unauthenticated_body<'a>(
    content_encoding: Option<&[u8]>,
    body: &'a [u8],
) -> Option<Cow<'a, [u8]>> {
    if body.len() > MAX_SEGMENT_BATCH_BYTES {
        return None;
    }
    super::decoded_body(content_encoding, body, &super::SEGMENT_BATCH_BODY).ok()
}

/// The `writeKey` member of a body as `unauthenticated_body` read it (one over 500 KB
/// has none), found without building the document: the read stops at that member.
pub fn body_write_key(body: &[u8]) -> Option<String> {
    if body.len() > MAX_SEGMENT_BATCH_BYTES {
        return None;
    }
    struct WriteKey<'k>(&'k mut Option<String>);
    impl<'de> Visitor<'de> for WriteKey<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<(), A::Error> {
            while let Some(name) = members.next_key::<Cow<'de, str>>()? {
                if name == "writeKey" {
                    *self.0 = members.next_value::<Option<String>>()?;
                    // Ends the read here: the parser's complaint about the members
                    // left unread is ignored below.
                    return Ok(());
                }
                members.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let mut key = None;
    let _ = serde_json::Deserializer::from_slice(body).deserialize_map(WriteKey(&mut key));
    key
}

fn one_batch(
    entries: Vec<Result<ValidUpsert, Vec<FieldError>>>,
    message_ids: Vec<Option<String>>,
) -> SegmentMessages {
    SegmentMessages {
        batch: ValidBatch {
            entries,
            // Segment requests carry no Idempotency-Key: a library's retry is applied
            // again, which changes nothing (the same values at the same source time).
            body_hash: String::new(),
        },
        message_ids,
    }
}

/// One message (`raw`, as `read_object` read it) as an upsert, validated as `POST
/// /api/v1/users` validates one; errors name the message's own fields, in its order.
fn message(
    raw: &[u8],
    read: Result<ReadObject, BodyError>,
    typed: bool,
    batch_sent_at: Option<i64>,
    now_ms: i64,
) -> (Result<ValidUpsert, Vec<FieldError>>, Option<String>) {
    let refuse = |code, field: &str, message: &str| vec![FieldError::new(code, field, message)];
    let ReadObject {
        mut members,
        unstorable,
        text,
    } = match read {
        Ok(read) => read,
        Err(BodyError::Invalid(duplicates)) => return (Err(duplicates), message_id_of(raw)),
        Err(BodyError::InvalidJson(_)) => {
            let refused = refuse(
                ErrorCode::InvalidType,
                "body",
                "a message must be a JSON object",
            );
            return (Err(refused), None);
        }
    };
    let message_id = match members.get("messageId") {
        Some(Value::String(id)) => Some(id.clone()),
        _ => None,
    };
    if raw.len() > MAX_SEGMENT_MESSAGE_BYTES {
        let refused = refuse(ErrorCode::TooLong, "body", "a message is over 32 KB");
        return (Err(refused), message_id);
    }
    let kind = members.get("type").and_then(Value::as_str);
    if typed && kind != Some("identify") || !typed && kind.is_some_and(|k| k != "identify") {
        let refused = refuse(
            ErrorCode::UnsupportedType,
            "type",
            "only identify messages are stored here",
        );
        return (Err(refused), message_id);
    }
    let user_id = match members.remove("userId") {
        // Its digits as sent, whatever a double or the read made of them.
        Some(Value::Number(_)) => integer_user_id(number_literal(raw, &text, "userId")),
        other => user_id(other),
    };
    // Numbers that would be stored (in traits) are stored exactly or not at all;
    // those elsewhere (context, integrations) are never stored.
    let mut inexact: Vec<(String, FieldError)> = unstorable
        .into_iter()
        .filter(|path| is_trait_path(path))
        .map(|path| {
            let message = format!("{path} is not a number this service stores exactly (within DynamoDB's range, held digit for digit by a 64-bit integer or a double); send it as a string");
            (path.clone(), FieldError::new(ErrorCode::InvalidNumber, path, message))
        })
        .collect();
    if !inexact.is_empty() {
        inexact.sort_by(|a, b| a.0.cmp(&b.0));
        return (Err(in_body_order(inexact, &text)), message_id);
    }
    let user_id = match user_id {
        Ok(id) => id,
        Err(refused) => return (Err(vec![refused]), message_id),
    };
    let sent_at = members.get("sentAt").and_then(instant_ms).or(batch_sent_at);
    let upsert = Upsert::of(user_id, members, sent_at, now_ms);
    let checked =
        validate_members(upsert.members, HashSet::new(), now_ms, String::new()).map_err(|errors| {
            let named = errors
                .into_iter()
                .map(|(location, mut error)| {
                    if let Some(ours) = error.field.take() {
                        // The message names the field too: as the message named it.
                        let theirs = upsert.names.field(&ours);
                        error.message = error.message.replacen(&ours, &theirs, 1);
                        error.field = Some(theirs);
                    }
                    (upsert.names.field(&location), error)
                })
                .collect();
            in_body_order(named, &text)
        });
    (checked, message_id)
}

/// Whether a message path is stored: under `traits` or `context.traits`.
fn is_trait_path(path: &str) -> bool {
    ["traits", "context.traits"].iter().any(|stored| {
        path.strip_prefix(stored)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    })
}

/// The `external_user_id` of a message whose `userId` is not a number: a non-empty
/// string.
fn user_id(user_id: Option<Value>) -> Result<String, FieldError> {
    match user_id {
        Some(Value::String(id)) if !id.is_empty() => Ok(id),
        _ => Err(FieldError::new(
            ErrorCode::Required,
            "userId",
            "userId is required (anonymous identifies are not stored)",
        )),
    }
}

/// A numeric `userId`: an integer, by its exact digits as sent (as a double, ids past
/// 2^53 would merge; Segment's libraries send strings, hand-written clients may not).
fn integer_user_id(literal: Option<&str>) -> Result<String, FieldError> {
    literal
        .filter(|digits| {
            let unsigned = digits.strip_prefix('-').unwrap_or(digits);
            !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit())
        })
        .map(str::to_owned)
        .ok_or_else(|| {
            FieldError::new(
                ErrorCode::InvalidType,
                "userId",
                "userId must be a string or an integer",
            )
        })
}

/// The `messageId` of a message that could not be read whole (a member named twice).
fn message_id_of(raw: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        #[serde(rename = "messageId")]
        message_id: Option<String>,
    }
    serde_json::from_slice::<Id>(raw).ok()?.message_id
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) const NOW: i64 = 1_800_000_000_000;

    /// The first error of each of the first `n` messages, as (code, field).
    fn first_errors(parsed: &SegmentMessages, n: usize) -> Vec<(ErrorCode, Option<String>)> {
        parsed.batch.entries[..n]
            .iter()
            .map(|e| {
                let error = &e.as_ref().unwrap_err()[0];
                (error.code, error.field.clone())
            })
            .collect()
    }

    pub(crate) fn batch(messages: Value) -> SegmentMessages {
        parse_segment_batch(json!({ "batch": messages }).to_string().as_bytes(), NOW).unwrap()
    }

    #[test]
    fn messages_that_cannot_be_stored_are_refused_alone_with_their_own_field_names() {
        let parsed = batch(json!([
            {"type": "track", "userId": "u1", "event": "Signed Up"},
            {"type": "identify", "anonymousId": "a1", "traits": {"plan": "pro"}},
            {"type": "identify", "userId": "u2", "traits": {"email": "not an email"}},
            {"type": "identify", "userId": "u3", "traits": {"title": 7}},
            {"type": "identify", "userId": "u4"},
        ]));
        let refused = first_errors(&parsed, 4);
        assert_eq!(
            refused,
            [
                (ErrorCode::UnsupportedType, Some("type".into())),
                (ErrorCode::Required, Some("userId".into())),
                (ErrorCode::InvalidEmail, Some("traits.email".into())),
                (ErrorCode::InvalidType, Some("traits.title".into())),
            ]
        );
        assert!(parsed.batch.entries[4].is_ok());
    }

    #[test]
    fn the_write_key_may_travel_in_the_body_and_an_identify_alone_is_typeless() {
        let body = br#"{"userId":"u1","writeKey":"sk_test_abc","traits":{"plan":"pro"}}"#;
        assert_eq!(body_write_key(body).as_deref(), Some("sk_test_abc"));
        let parsed = parse_segment_identify(body, NOW).unwrap();
        assert!(
            parsed.batch.entries[0].is_ok(),
            "{:?}",
            parsed.batch.entries[0]
        );
        assert!(matches!(
            parse_segment_batch(b"{}", NOW),
            Err(BodyError::Invalid(_))
        ));
        assert!(matches!(
            parse_segment_batch(b"[", NOW),
            Err(BodyError::InvalidJson(_))
        ));
    }

    #[test]
    fn numbers_are_stored_exactly_or_the_message_is_dropped_with_a_reason() {
        let body = r#"{"batch":[
            {"type":"identify","userId":"u1","traits":{"tiny":1e-400}},
            {"type":"identify","userId":"u2","traits":{"long":0.123456789012345678901}},
            {"type":"identify","userId":"u3","context":{"traits":{"big":123456789012345678901234}}},
            {"type":"identify","userId":"u4","traits":{"n":12.5,"m":18446744073709551615},
             "context":{"screen":{"density":1e-400}}}
        ]}"#;
        let parsed = parse_segment_batch(body.as_bytes(), NOW).unwrap();
        let refused = first_errors(&parsed, 3);
        assert_eq!(
            refused,
            [
                (ErrorCode::InvalidNumber, Some("traits.tiny".into())),
                (ErrorCode::InvalidNumber, Some("traits.long".into())),
                (ErrorCode::InvalidNumber, Some("context.traits.big".into())),
            ]
        );
        // Exact numbers are kept as sent; one never stored (context) drops nothing.
        let kept = parsed.batch.entries[3].as_ref().unwrap();
        assert_eq!(kept.changes.traits["n"], Some(json!(12.5)));
        assert_eq!(
            kept.changes.traits["m"],
            Some(json!(18446744073709551615u64))
        );
    }

    #[test]
    fn a_numeric_user_id_keeps_its_exact_digits_and_ids_never_merge() {
        let body = r#"{"batch":[
            {"type":"identify","userId":123456789012345678901234567890},
            {"type":"identify","userId":123456789012345678901234567891},
            {"type":"identify","userId":42},
            {"type":"identify","userId":-7},
            {"type":"identify","userId":1.5},
            {"type":"identify","userId":1e3}
        ]}"#;
        let parsed = parse_segment_batch(body.as_bytes(), NOW).unwrap();
        let ids: Vec<String> = parsed.batch.entries[..4]
            .iter()
            .map(|e| e.as_ref().unwrap().external_user_id.clone())
            .collect();
        assert_eq!(
            ids,
            [
                "123456789012345678901234567890",
                "123456789012345678901234567891",
                "42",
                "-7"
            ]
        );
        for refused in &parsed.batch.entries[4..] {
            let error = &refused.as_ref().unwrap_err()[0];
            assert_eq!(
                (error.code, error.field.as_deref()),
                (ErrorCode::InvalidType, Some("userId"))
            );
        }
    }

    #[test]
    fn a_member_named_empty_never_passes_for_a_top_level_one() {
        // The number under `""` is not the message's userId, nor its traits'.
        let body = r#"{"sentAt":1e400,"batch":[
            {"type":"identify","":{"userId":5,"traits":{"x":1e400}},"userId":123456789012345678901234567890}
        ]}"#;
        let parsed = parse_segment_batch(body.as_bytes(), NOW).unwrap();
        let upsert = parsed.batch.entries[0].as_ref().unwrap();
        assert_eq!(upsert.external_user_id, "123456789012345678901234567890");
    }

    #[test]
    fn a_member_named_twice_drops_its_message_alone() {
        let body = r#"{"batch":[
            {"type":"identify","userId":"u1","messageId":"m1","traits":{"plan":"a","plan":"b"}},
            {"type":"identify","userId":"u2","userId":"u3"},
            {"type":"identify","userId":"u4","traits":{"plan":"pro"}}
        ]}"#;
        let parsed = parse_segment_batch(body.as_bytes(), NOW).unwrap();
        let first = parsed.batch.entries[0].as_ref().unwrap_err();
        assert_eq!(
            (first[0].code, first[0].field.as_deref()),
            (ErrorCode::DuplicateField, Some("traits.plan"))
        );
        assert_eq!(parsed.message_ids[0].as_deref(), Some("m1"));
        let second = parsed.batch.entries[1].as_ref().unwrap_err();
        assert_eq!(second[0].field.as_deref(), Some("userId"));
        assert!(parsed.batch.entries[2].is_ok());
        let identify = br#"{"userId":"u1","traits":{"plan":"a","plan":"b"}}"#;
        let one = parse_segment_identify(identify, NOW).unwrap();
        assert_eq!(
            one.batch.entries[0].as_ref().unwrap_err()[0].code,
            ErrorCode::DuplicateField
        );
    }

    #[test]
    fn a_batch_of_more_messages_than_500_kb_can_store_is_refused_whole() {
        let body = format!("{{\"batch\":[{}1]}}", "1,".repeat(MAX_SEGMENT_MESSAGES));
        let Err(BodyError::Invalid(errors)) = parse_segment_batch(body.as_bytes(), NOW) else {
            panic!("refused whole");
        };
        assert_eq!(
            (errors[0].code, errors[0].field.as_deref()),
            (ErrorCode::TooMany, Some("batch"))
        );
        let body = format!("{{\"batch\":[{}1]}}", "1,".repeat(MAX_SEGMENT_MESSAGES - 1));
        let parsed = parse_segment_batch(body.as_bytes(), NOW).unwrap();
        assert_eq!(parsed.batch.entries.len(), MAX_SEGMENT_MESSAGES);
    }

    #[test]
    fn the_write_key_is_found_without_reading_past_it() {
        let key = |body: &str| body_write_key(body.as_bytes());
        assert_eq!(
            key(r#"{"writeKey":"k1","batch":[{"a":1}]}"#).as_deref(),
            Some("k1")
        );
        assert_eq!(
            key(r#"{"batch":[],"writeKey":"k2"}"#).as_deref(),
            Some("k2")
        );
        // What follows the key is never read: not even its syntax.
        assert_eq!(
            key(r#"{"writeKey":"k3","batch":[ not json"#).as_deref(),
            Some("k3")
        );
        assert_eq!(key(r#"{"batch":[]}"#), None);
        assert_eq!(key("[1]"), None);
        assert_eq!(key(r#"{"writeKey":7}"#), None);
        // A body from anyone is read no further than 500 KB, inflated or not.
        let padded = format!(
            r#"{{"batch":[],"pad":"{}","writeKey":"k4"}}"#,
            "x".repeat(MAX_SEGMENT_BATCH_BYTES)
        );
        assert_eq!(unauthenticated_body(None, padded.as_bytes()), None);
        assert_eq!(key(&padded), None);
        let gzip = |body: &str| {
            use std::io::Write;
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            encoder.write_all(body.as_bytes()).unwrap();
            encoder.finish().unwrap()
        };
        let bomb = gzip(&padded);
        assert!(bomb.len() < 10_000);
        assert_eq!(unauthenticated_body(Some(b"gzip"), &bomb), None);
        // Within it, read once: as sent, or inflated.
        let sent = br#"{"writeKey":"k5"}"#;
        let read = unauthenticated_body(None, sent).unwrap();
        assert!(matches!(read, Cow::Borrowed(_)));
        assert_eq!(body_write_key(&read).as_deref(), Some("k5"));
        let sent = gzip(r#"{"writeKey":"k6"}"#);
        let read = unauthenticated_body(Some(b"gzip"), &sent).unwrap();
        assert!(matches!(read, Cow::Owned(_)));
        assert_eq!(body_write_key(&read).as_deref(), Some("k6"));
    }
}
