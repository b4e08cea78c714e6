//! `POST /api/v1/users/batch`: the batch envelope. Each upsert is handed, as the bytes
//! sent, to the single-upsert parser, so an entry is validated exactly as a POST of it
//! would be; its errors come back with paths under `users[i]`.

use super::idempotency::body_hash;
use super::validate::{parse_upsert, BodyError, ValidUpsert, MAX_BODY_BYTES};
use super::{ErrorCode, FieldError};
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The contract's limit on a batch body, checked on the raw bytes before parsing.
pub const MAX_BATCH_BODY_BYTES: usize = 512 * 1024;
/// The most upserts one batch carries.
pub const MAX_BATCH_USERS: usize = 1_000;
const USERS: &str = "users";

/// A batch whose envelope is valid: every entry, accepted or refused, in body order.
#[derive(Debug)]
pub struct ValidBatch {
    pub entries: Vec<Result<ValidUpsert, Vec<FieldError>>>,
    /// What an Idempotency-Key record compares: each entry's canonical hash, in order,
    /// so whitespace and member order do not matter, as for a single upsert.
    pub body_hash: String,
}

/// Parses a batch body. Envelope problems refuse the whole batch (400 or 422); entry
/// problems refuse that entry only.
pub fn parse_batch(body: &[u8], now_ms: i64) -> Result<ValidBatch, BodyError> {
    let Envelope(listed) = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            BodyError::InvalidJson("body must be a JSON object".into())
        } else {
            BodyError::InvalidJson(format!("body is not valid JSON: {e}"))
        }
    })?;
    let mut members: BTreeMap<String, &RawValue> = BTreeMap::new();
    let mut duplicates = Vec::new();
    for (name, value) in listed {
        if members.insert(name.clone(), value).is_some() {
            let message = format!("{name} is named twice in the body");
            duplicates.push(FieldError::new(ErrorCode::DuplicateField, name, message));
        }
    }
    if !duplicates.is_empty() {
        return Err(BodyError::Invalid(duplicates));
    }
    let mut errors = FieldError::unknown_members(members.keys(), &[USERS]);
    let users = match members.get(USERS) {
        None => {
            errors.insert(
                0,
                FieldError::new(ErrorCode::Required, USERS, "users is required"),
            );
            None
        }
        Some(raw) => match serde_json::from_str::<Vec<&RawValue>>(raw.get()) {
            Err(_) => {
                errors.insert(
                    0,
                    envelope_error(ErrorCode::InvalidType, "users must be an array of upserts"),
                );
                None
            }
            Ok(users) if users.is_empty() => {
                errors.insert(
                    0,
                    envelope_error(ErrorCode::Empty, "users must hold at least one upsert"),
                );
                None
            }
            Ok(users) if users.len() > MAX_BATCH_USERS => {
                errors.insert(
                    0,
                    envelope_error(ErrorCode::TooMany, "users holds more than 1,000 upserts"),
                );
                None
            }
            Ok(users) => Some(users),
        },
    };
    match users {
        Some(users) if errors.is_empty() => Ok(entries(&users, now_ms)),
        _ => Err(BodyError::Invalid(errors)),
    }
}

/// The body's members in body order, each as sent (a map would fold a repeated name).
struct Envelope<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Envelope<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = Envelope<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Envelope(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

fn envelope_error(code: ErrorCode, message: &str) -> FieldError {
    FieldError::new(code, USERS, message)
}

fn entries(users: &[&RawValue], now_ms: i64) -> ValidBatch {
    let mut hasher = Sha256::new();
    hasher.update(b"batch");
    let entries = users
        .iter()
        .enumerate()
        .map(|(index, raw)| {
            let (entry, hash) = entry(index, raw.get().as_bytes(), now_ms);
            hasher.update(b"\n");
            hasher.update(hash.as_bytes());
            entry
        })
        .collect();
    ValidBatch {
        entries,
        body_hash: hex::encode(hasher.finalize()),
    }
}

/// One entry, validated, and its canonical hash.
fn entry(index: usize, raw: &[u8], now_ms: i64) -> (Result<ValidUpsert, Vec<FieldError>>, String) {
    let at = format!("{USERS}[{index}]");
    if raw.len() > MAX_BODY_BYTES {
        let error = FieldError::new(
            ErrorCode::TooLong,
            &at,
            format!("{at} is over 32 KiB (32,768 bytes)"),
        );
        return (Err(vec![error]), canonical_hash(raw));
    }
    match parse_upsert(raw, now_ms) {
        Ok(upsert) => {
            let hash = upsert.body_hash.clone();
            (Ok(upsert), hash)
        }
        Err(BodyError::InvalidJson(_)) => {
            let error = FieldError::new(
                ErrorCode::InvalidType,
                &at,
                format!("{at} must be a JSON object"),
            );
            (Err(vec![error]), canonical_hash(raw))
        }
        Err(BodyError::Invalid(errors)) => {
            let errors = errors
                .into_iter()
                .map(|mut error| {
                    error.field = Some(match error.field {
                        Some(field) => format!("{at}.{field}"),
                        None => at.clone(),
                    });
                    error
                })
                .collect();
            (Err(errors), canonical_hash(raw))
        }
    }
}

/// The canonical hash of a refused entry; one no double can parse (`1e400`) hashes
/// as sent.
fn canonical_hash(raw: &[u8]) -> String {
    match serde_json::from_slice::<Value>(raw) {
        Ok(value) => body_hash(&value),
        Err(_) => hex::encode(Sha256::digest(raw)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    use serde_json::json;

    fn codes(result: Result<ValidBatch, BodyError>) -> Vec<(ErrorCode, String)> {
        match result {
            Err(BodyError::Invalid(errors)) => errors
                .into_iter()
                .map(|e| (e.code, e.field.unwrap_or_default()))
                .collect(),
            other => panic!("expected a whole-batch 422, got {other:?}"),
        }
    }

    /// Refused entries: their index and errors, in index order.
    fn refused(batch: &ValidBatch) -> impl Iterator<Item = (usize, &[FieldError])> {
        batch
            .entries
            .iter()
            .enumerate()
            .filter_map(|(index, entry)| entry.as_ref().err().map(|errors| (index, &errors[..])))
    }

    fn parse(body: Value) -> ValidBatch {
        parse_batch(body.to_string().as_bytes(), NOW).expect("valid envelope")
    }

    #[test]
    fn a_member_named_twice_is_refused_in_the_envelope_and_in_an_entry() {
        let twice = br#"{"users":[{"external_user_id":"a"}],"users":[{"external_user_id":"b"}]}"#;
        let Err(BodyError::Invalid(errors)) = parse_batch(twice, NOW) else {
            panic!("a repeated envelope member was accepted")
        };
        assert_eq!(
            (errors[0].code, errors[0].field.as_deref()),
            (ErrorCode::DuplicateField, Some("users"))
        );
        let inner = br#"{"users":[{"external_user_id":"a","traits":{"plan":"x","plan":"y"}}]}"#;
        let batch = parse_batch(inner, NOW).unwrap();
        let errors = batch.entries[0].as_ref().unwrap_err();
        assert_eq!(
            (errors[0].code, errors[0].field.as_deref()),
            (ErrorCode::DuplicateField, Some("users[0].traits.plan"))
        );
    }

    #[test]
    fn envelope_refusals_refuse_the_whole_batch() {
        for body in ["[]", "1", "\"users\"", "null"] {
            assert!(
                matches!(
                    parse_batch(body.as_bytes(), NOW),
                    Err(BodyError::InvalidJson(_))
                ),
                "{body}"
            );
        }
        assert!(matches!(
            parse_batch(b"{\"users\":[{]}", NOW),
            Err(BodyError::InvalidJson(_))
        ));
        assert_eq!(
            codes(parse_batch(b"{}", NOW)),
            vec![(ErrorCode::Required, "users".into())]
        );
        assert_eq!(
            codes(parse_batch(br#"{"users":{},"extra":1}"#, NOW)),
            vec![
                (ErrorCode::InvalidType, "users".into()),
                (ErrorCode::UnknownField, "extra".into())
            ]
        );
        assert_eq!(
            codes(parse_batch(br#"{"users":[]}"#, NOW)),
            vec![(ErrorCode::Empty, "users".into())]
        );
        let too_many = json!({ "users": vec![json!({"external_user_id": "u"}); 1_001] });
        assert_eq!(
            codes(parse_batch(too_many.to_string().as_bytes(), NOW)),
            vec![(ErrorCode::TooMany, "users".into())]
        );
        let most = json!({ "users": vec![json!({"external_user_id": "u"}); 1_000] });
        assert_eq!(parse(most).entries.len(), 1_000);
    }

    #[test]
    fn each_entry_is_validated_alone_with_prefixed_paths() {
        let batch = parse(json!({"users": [
            {"external_user_id": "u0", "traits": {"plan": "pro"}},
            {"external_user_id": "u1", "email": "nope", "traits": {"plan": 3}},
            "not an object",
            {"traits": {"tags": [1, {"": 2}]}},
            {"external_user_id": "u4"},
        ]}));
        let refused: Vec<(usize, Vec<(ErrorCode, String)>)> = refused(&batch)
            .map(|(i, errors)| {
                (
                    i,
                    errors
                        .iter()
                        .map(|e| (e.code, e.field.clone().unwrap_or_default()))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            refused,
            vec![
                (
                    1,
                    vec![
                        (ErrorCode::InvalidEmail, "users[1].email".into()),
                        (ErrorCode::InvalidType, "users[1].traits.plan".into()),
                    ]
                ),
                (2, vec![(ErrorCode::InvalidType, "users[2]".into())]),
                (
                    3,
                    vec![
                        (ErrorCode::Required, "users[3].external_user_id".into()),
                        (
                            ErrorCode::InvalidTraitName,
                            "users[3].traits.tags[1]".into()
                        ),
                    ]
                ),
            ]
        );
        let accepted: Vec<&str> = batch
            .entries
            .iter()
            .filter_map(|e| e.as_ref().ok().map(|u| u.external_user_id.as_str()))
            .collect();
        assert_eq!(accepted, ["u0", "u4"]);
    }

    #[test]
    fn entries_over_32_kib_and_unstorable_numbers_are_refused_alone() {
        let big = "x".repeat(MAX_BODY_BYTES);
        let body = format!(
            r#"{{"users":[{{"external_user_id":"u0","traits":{{"blob":"{big}"}}}},{{"external_user_id":"u1","traits":{{"n":1e400}}}},{{"external_user_id":"u2"}}]}}"#
        );
        let batch = parse_batch(body.as_bytes(), NOW).expect("valid envelope");
        let refused: Vec<(usize, ErrorCode, Option<String>)> = refused(&batch)
            .map(|(i, errors)| (i, errors[0].code, errors[0].field.clone()))
            .collect();
        assert_eq!(
            refused,
            vec![
                (0, ErrorCode::TooLong, Some("users[0]".into())),
                (
                    1,
                    ErrorCode::InvalidNumber,
                    Some("users[1].traits.n".into())
                ),
            ]
        );
        assert!(batch.entries[2].is_ok());
    }

    #[test]
    fn body_hash_ignores_layout_but_not_content_or_order() {
        let a = parse_batch(
            br#"{"users":[{"external_user_id":"a","email":null},{"external_user_id":"b"}]}"#,
            NOW,
        )
        .unwrap();
        let spaced = parse_batch(b"{ \"users\" : [ {\"email\":null, \"external_user_id\":\"a\"}, {\"external_user_id\":\"b\"} ] }", NOW).unwrap();
        let swapped = parse_batch(
            br#"{"users":[{"external_user_id":"b"},{"external_user_id":"a","email":null}]}"#,
            NOW,
        )
        .unwrap();
        let refused = parse_batch(
            br#"{"users":[{"external_user_id":"a","email":null},{"external_user_id":7}]}"#,
            NOW,
        )
        .unwrap();
        let refused_spaced = parse_batch(
            br#"{"users":[{"external_user_id":"a","email":null},{ "external_user_id" : 7 }]}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(a.body_hash, spaced.body_hash);
        assert_ne!(a.body_hash, swapped.body_hash);
        assert_eq!(refused.body_hash, refused_spaced.body_hash);
        assert_ne!(a.body_hash, refused.body_hash);
        // A single upsert of the same JSON never shares a batch's hash.
        let single = parse_upsert(br#"{"external_user_id":"b"}"#, NOW).unwrap();
        let one = parse_batch(br#"{"users":[{"external_user_id":"b"}]}"#, NOW).unwrap();
        assert_ne!(single.body_hash, one.body_hash);
    }
}
