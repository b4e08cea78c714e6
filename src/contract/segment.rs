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

use super::{parse_upsert, BodyError, ErrorCode, FieldError, ValidBatch, MAX_BODY_BYTES};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Segment's limits: a batch body (500 KB, as decimal kilobytes: analytics-python
/// fills a batch to ~475,000 bytes and its last message may pass that) and one message.
pub const MAX_SEGMENT_BATCH_BYTES: usize = 512_000;
pub const MAX_SEGMENT_MESSAGE_BYTES: usize = MAX_BODY_BYTES;

/// The messages of a Segment request, as a batch of upserts (a message that is not a
/// storable identify is a refused entry), and each message's `messageId`.
#[derive(Debug)]
pub struct SegmentMessages {
    pub batch: ValidBatch,
    pub message_ids: Vec<Option<String>>,
}

/// `POST /v1/identify`: one message.
pub fn parse_segment_identify(body: &[u8], now_ms: i64) -> Result<SegmentMessages, BodyError> {
    let message = object(body)?;
    let sent_at = sent_at(&message);
    Ok(messages(
        vec![(message, body.len())],
        sent_at,
        now_ms,
        false,
    ))
}

/// `POST /v1/batch`: `{"batch": [...]}`.
pub fn parse_segment_batch(body: &[u8], now_ms: i64) -> Result<SegmentMessages, BodyError> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        batch: Option<Vec<&'a RawValue>>,
        #[serde(rename = "sentAt")]
        sent_at: Option<Value>,
    }
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
        BodyError::InvalidJson(if e.is_data() {
            "body must be a JSON object with a batch array".into()
        } else {
            format!("body is not valid JSON: {e}")
        })
    })?;
    let Some(raw) = envelope.batch else {
        let missing = FieldError::new(ErrorCode::Required, "batch", "batch is required");
        return Err(BodyError::Invalid(vec![missing]));
    };
    let sent_at = envelope.sent_at.as_ref().and_then(instant_ms);
    let parsed = raw
        .iter()
        .map(|message| {
            let size = message.get().len();
            let value = serde_json::from_str(message.get()).unwrap_or(Value::Null);
            (value, size)
        })
        .collect();
    Ok(messages(parsed, sent_at, now_ms, true))
}

/// The `writeKey` member a request may carry instead of an `Authorization` header.
pub fn segment_write_key(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct WithKey {
        #[serde(rename = "writeKey")]
        write_key: Option<String>,
    }
    serde_json::from_slice::<WithKey>(body).ok()?.write_key
}

fn object(body: &[u8]) -> Result<Value, BodyError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| BodyError::InvalidJson(format!("body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(BodyError::InvalidJson("body must be a JSON object".into()));
    }
    Ok(value)
}

fn messages(
    parsed: Vec<(Value, usize)>,
    batch_sent_at: Option<i64>,
    now_ms: i64,
    typed: bool,
) -> SegmentMessages {
    let mut message_ids = Vec::with_capacity(parsed.len());
    let entries = parsed
        .into_iter()
        .map(|(message, size)| {
            message_ids.push(
                message
                    .get("messageId")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            );
            let sent_at = sent_at(&message).or(batch_sent_at);
            identify(message, size, typed, sent_at, now_ms)
        })
        .collect();
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

/// One message as an upsert, validated as `POST /api/v1/users` validates it; errors
/// name the message's own fields.
fn identify(
    message: Value,
    size: usize,
    typed: bool,
    sent_at: Option<i64>,
    now_ms: i64,
) -> Result<super::ValidUpsert, Vec<FieldError>> {
    let refuse =
        |code, field: &str, message: &str| Err(vec![FieldError::new(code, field, message)]);
    let Value::Object(mut message) = message else {
        return refuse(
            ErrorCode::InvalidType,
            "body",
            "a message must be a JSON object",
        );
    };
    if size > MAX_SEGMENT_MESSAGE_BYTES {
        return refuse(ErrorCode::TooLong, "body", "a message is over 32 KB");
    }
    let kind = message.get("type").and_then(Value::as_str);
    if typed && kind != Some("identify") || !typed && kind.is_some_and(|k| k != "identify") {
        return refuse(
            ErrorCode::UnsupportedType,
            "type",
            "only identify messages are stored here",
        );
    }
    let user_id = match message.remove("userId") {
        Some(Value::String(id)) if !id.is_empty() => id,
        Some(Value::Number(id)) => id.to_string(),
        _ => {
            return refuse(
                ErrorCode::Required,
                "userId",
                "userId is required (anonymous identifies are not stored)",
            )
        }
    };
    let (body, renamed) = upsert_body(user_id, &mut message, sent_at, now_ms);
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    match parse_upsert(&bytes, now_ms) {
        Ok(upsert) => Ok(upsert),
        Err(BodyError::Invalid(errors)) => Err(errors
            .into_iter()
            .map(|mut error| {
                error.field = error.field.map(|field| segment_field(&field, &renamed));
                error
            })
            .collect()),
        Err(BodyError::InvalidJson(message)) => refuse(ErrorCode::InvalidJson, "body", &message),
    }
}

/// Our body for a message, and the traits renamed on the way (ours → Segment's).
fn upsert_body(
    user_id: String,
    message: &mut Map<String, Value>,
    sent_at: Option<i64>,
    now_ms: i64,
) -> (Value, Vec<(&'static str, &'static str)>) {
    let mut renamed = Vec::new();
    let mut traits = match message.remove("traits") {
        Some(Value::Object(traits)) => traits,
        _ => Map::new(),
    };
    let mut body = json!({ "external_user_id": user_id });
    if let Some(email) = traits.remove("email") {
        body["email"] = email;
    }
    let mut rename = |traits: &mut Map<String, Value>, from: &'static str, to: &'static str| {
        if !traits.contains_key(to) {
            if let Some(value) = traits.remove(from) {
                traits.insert(to.to_owned(), value);
                renamed.push((to, from));
            }
        }
    };
    // A date that is not a date-time (`2024-05-01`, or one without an offset) stays
    // the custom trait `createdAt` rather than drop the message.
    if traits
        .get("createdAt")
        .is_some_and(|v| instant_ms(v).is_some())
    {
        rename(&mut traits, "createdAt", "signupDate");
    }
    rename(&mut traits, "title", "role");
    if let Some(Value::Object(mut company)) = traits.remove("company") {
        if let Some(name) = company.remove("name") {
            traits.insert("company".into(), name);
            renamed.push(("company", "company.name"));
        }
        if !company.is_empty() {
            traits.insert("companyDetails".into(), Value::Object(company));
        }
    }
    if !traits.contains_key("name") {
        let part = |key| traits.get(key).and_then(Value::as_str).map(str::to_owned);
        let full: Vec<String> = [part("firstName"), part("lastName")]
            .into_iter()
            .flatten()
            .collect();
        if !full.is_empty() {
            traits.insert("name".into(), Value::String(full.join(" ")));
        }
    }
    if !traits.is_empty() {
        body["traits"] = Value::Object(traits);
    }
    if let Some(timestamp) = message.get("timestamp") {
        body["timestamp"] = match (instant_ms(timestamp), sent_at) {
            // Segment's correction of the sender's clock: the time between the event
            // and the send, counted back from the arrival.
            (Some(at), Some(sent)) => json!(format_ms(now_ms - (sent - at))),
            _ => timestamp.clone(),
        };
    }
    (body, renamed)
}

/// A field of our body as the message names it.
fn segment_field(field: &str, renamed: &[(&'static str, &'static str)]) -> String {
    match field {
        "external_user_id" => "userId".into(),
        "email" => "traits.email".into(),
        _ => {
            if let Some(name) = field.strip_prefix("traits.") {
                let (head, rest) = name
                    .split_once(['.', '['])
                    .map_or((name, ""), |(h, _)| (h, &name[h.len()..]));
                if let Some((_, from)) = renamed.iter().find(|(to, _)| *to == head) {
                    return format!("traits.{from}{rest}");
                }
            }
            field.to_owned()
        }
    }
}

fn sent_at(message: &Value) -> Option<i64> {
    message.get("sentAt").and_then(instant_ms)
}

fn instant_ms(value: &Value) -> Option<i64> {
    let parsed = OffsetDateTime::parse(value.as_str()?, &Rfc3339).ok()?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()
}

fn format_ms(ms: i64) -> String {
    crate::domain::format_millis(ms).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ProfileField;

    const NOW: i64 = 1_800_000_000_000;

    fn batch(messages: Value) -> SegmentMessages {
        parse_segment_batch(json!({ "batch": messages }).to_string().as_bytes(), NOW).unwrap()
    }

    #[test]
    fn an_identify_maps_onto_an_upsert() {
        let parsed = batch(json!([{
            "type": "identify", "userId": "u1", "messageId": "m1",
            "traits": {"email": "Jane@Acme.io", "createdAt": "2026-05-17T16:00:00+02:00",
                       "company": {"name": "Acme", "id": 7}, "title": "CTO",
                       "firstName": "Jane", "lastName": "Doe", "favoriteColor": "teal"},
            "context": {"library": {"name": "x"}}, "integrations": {}, "anonymousId": "a1"
        }]));
        assert_eq!(parsed.message_ids, [Some("m1".to_owned())]);
        let upsert = parsed.batch.entries[0].as_ref().unwrap();
        assert_eq!(upsert.external_user_id, "u1");
        let profile = &upsert.changes.profile;
        assert_eq!(
            profile[&ProfileField::Email].as_deref(),
            Some("Jane@Acme.io")
        );
        assert_eq!(
            profile[&ProfileField::SignupDate].as_deref(),
            Some("2026-05-17T14:00:00Z")
        );
        assert_eq!(profile[&ProfileField::Company].as_deref(), Some("Acme"));
        assert_eq!(profile[&ProfileField::Role].as_deref(), Some("CTO"));
        assert_eq!(profile[&ProfileField::Name].as_deref(), Some("Jane Doe"));
        let traits = &upsert.changes.traits;
        assert_eq!(traits["companyDetails"], Some(json!({"id": 7})));
        assert_eq!(traits["favoriteColor"], Some(json!("teal")));
        assert!(!traits.contains_key("anonymousId") && !traits.contains_key("context"));
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
        let refused: Vec<(ErrorCode, Option<String>)> = parsed.batch.entries[..4]
            .iter()
            .map(|e| {
                let error = &e.as_ref().unwrap_err()[0];
                (error.code, error.field.clone())
            })
            .collect();
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
    fn a_created_at_that_is_no_date_time_stays_a_custom_trait() {
        let parsed = batch(
            json!([{"type": "identify", "userId": "u1", "traits": {"createdAt": "2024-05-01"}}]),
        );
        let upsert = parsed.batch.entries[0].as_ref().unwrap();
        assert!(upsert.changes.profile.is_empty());
        assert_eq!(
            upsert.changes.traits["createdAt"],
            Some(json!("2024-05-01"))
        );
    }

    #[test]
    fn the_senders_clock_is_corrected_by_sent_at() {
        // The sender's clock runs an hour ahead: its event happened 2 s before it sent.
        let ahead = 3_600_000;
        let body = json!({"sentAt": format_ms(NOW + ahead), "batch": [
            {"type": "identify", "userId": "u1", "timestamp": format_ms(NOW + ahead - 2_000)}
        ]});
        let parsed = parse_segment_batch(body.to_string().as_bytes(), NOW).unwrap();
        let upsert = parsed.batch.entries[0].as_ref().unwrap();
        assert_eq!(upsert.timestamp, Some(NOW - 2_000));
    }

    #[test]
    fn the_write_key_may_travel_in_the_body_and_an_identify_alone_is_typeless() {
        let body = br#"{"userId":"u1","writeKey":"sk_test_abc","traits":{"plan":"pro"}}"#;
        assert_eq!(segment_write_key(body).as_deref(), Some("sk_test_abc"));
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
}
