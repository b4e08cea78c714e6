use super::idempotency::body_hash;
use super::json::{in_body_order, read_object, ReadObject};
use super::{parse_email, ErrorCode, FieldError};
use crate::domain::{Changes, ProfileField};
use serde_json::{Map, Value};
use std::collections::HashSet;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The contract's body limit, checked on the raw bytes before any parsing.
pub const MAX_BODY_BYTES: usize = 32 * 1024;
/// The contract's limit on `external_user_id`; reads of longer ids answer 404.
pub(crate) const MAX_USER_ID_BYTES: usize = 255;

/// Why a body was refused: not JSON at all (400) or not the schema (422).
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum BodyError {
    #[error("invalid JSON")]
    InvalidJson(String),
    #[error("invalid body")]
    Invalid(Vec<FieldError>),
}

/// A body that passed validation: what it changes, when it happened at the source (its
/// `timestamp`, epoch ms), and the hash that Idempotency-Key records compare.
#[derive(Debug, PartialEq)]
pub struct ValidUpsert {
    pub external_user_id: String,
    pub changes: Changes,
    pub timestamp: Option<i64>,
    pub body_hash: String,
}

/// `timestamp` is not before this (2000-01-01T00:00:00Z)…
const EARLIEST_TIMESTAMP_MS: i64 = 946_684_800_000;
/// …and at most this far ahead of the service's clock.
const TIMESTAMP_AHEAD_MS: i64 = 5 * 60 * 1000;

/// Parses and validates a `POST /api/v1/users` body, reporting every problem in body
/// order; `now_ms` is the service's clock, which a `timestamp` may not run ahead of.
/// Values are moved, not copied, from the parsed body into the changes.
pub fn parse_upsert(body: &[u8], now_ms: i64) -> Result<ValidUpsert, BodyError> {
    let ReadObject {
        members,
        unstorable,
        text,
    } = read_object(body)?;
    let body_hash = body_hash(&members);
    validate_members(members, unstorable, now_ms, body_hash)
        .map_err(|errors| BodyError::Invalid(in_body_order(errors, &text)))
}

/// Checks an upsert's members (read by `read_object`, `unstorable` the paths of its
/// numbers that cannot be stored exactly): what they change, or every error with the
/// path it is about, in no particular order.
pub(crate) fn validate_members(
    members: Map<String, Value>,
    unstorable: HashSet<String>,
    now_ms: i64,
    body_hash: String,
) -> Result<ValidUpsert, Vec<(String, FieldError)>> {
    let mut validator = Validator {
        unstorable_paths: unstorable,
        now_ms,
        ..Validator::default()
    };
    validator.members(members);
    match (validator.external_user_id, validator.errors.is_empty()) {
        (Some(external_user_id), true) => Ok(ValidUpsert {
            external_user_id,
            changes: validator.changes,
            timestamp: validator.timestamp,
            body_hash,
        }),
        _ => Err(validator.errors),
    }
}

#[derive(Default)]
pub(super) struct Validator {
    /// Each error with the body path it is about, for `in_body_order`.
    pub(super) errors: Vec<(String, FieldError)>,
    external_user_id: Option<String>,
    pub(super) changes: Changes,
    timestamp: Option<i64>,
    /// Paths of numbers that cannot be stored exactly.
    pub(super) unstorable_paths: HashSet<String>,
    now_ms: i64,
}

impl Validator {
    pub(super) fn fail(&mut self, code: ErrorCode, field: &str, message: impl Into<String>) {
        self.fail_at(field.to_owned(), code, field, message);
    }

    pub(super) fn fail_at(
        &mut self,
        location: String,
        code: ErrorCode,
        field: &str,
        message: impl Into<String>,
    ) {
        self.errors
            .push((location, FieldError::new(code, field, message)));
    }

    fn members(&mut self, members: Map<String, Value>) {
        if !members.contains_key("external_user_id") {
            self.fail(
                ErrorCode::Required,
                "external_user_id",
                "external_user_id is required",
            );
        }
        // traits.email is checked against it, wherever it stands in the body.
        let top_email = members.get("email").map(top_level_email);
        // A name in both traits and set_once is a conflict, whichever comes first.
        let overwritten: HashSet<String> = match members.get("traits") {
            Some(Value::Object(traits)) => traits.keys().cloned().collect(),
            _ => HashSet::new(),
        };
        let email_given = top_email.is_some() || overwritten.contains("email");
        for (name, value) in members {
            match name.as_str() {
                "external_user_id" => self.external_user_id(value),
                "email" => {
                    if let Some(email) = self.email("email", value) {
                        self.changes.profile.insert(ProfileField::Email, email);
                    }
                }
                "traits" => self.traits(value, top_email.as_ref()),
                "set_once" => self.set_once(value, &overwritten, email_given),
                "timestamp" => self.timestamp(value),
                _ => self.fail(
                    ErrorCode::UnknownField,
                    &name,
                    format!("unknown member `{name}`"),
                ),
            }
        }
    }

    /// `timestamp`: an RFC 3339 date-time from 2000-01-01 to 5 minutes ahead of now.
    fn timestamp(&mut self, value: Value) {
        const FIELD: &str = "timestamp";
        let parsed = match &value {
            Value::String(text) => OffsetDateTime::parse(text, &Rfc3339).ok(),
            _ => None,
        };
        let Some(parsed) = parsed else {
            return self.fail(
                ErrorCode::InvalidDatetime,
                FIELD,
                "timestamp is not an RFC 3339 date-time",
            );
        };
        let millis = (parsed.unix_timestamp_nanos() / 1_000_000) as i64;
        if millis < EARLIEST_TIMESTAMP_MS || millis > self.now_ms + TIMESTAMP_AHEAD_MS {
            return self.fail(
                ErrorCode::OutOfRange,
                FIELD,
                "timestamp must be from 2000-01-01 to 5 minutes ahead of the service's clock",
            );
        }
        self.timestamp = Some(millis);
    }

    fn external_user_id(&mut self, value: Value) {
        const FIELD: &str = "external_user_id";
        let Value::String(id) = value else {
            return self.fail(
                ErrorCode::InvalidType,
                FIELD,
                "external_user_id must be a string",
            );
        };
        if id.trim().is_empty() {
            self.fail(
                ErrorCode::Empty,
                FIELD,
                "external_user_id must not be blank",
            );
        } else if id.len() > MAX_USER_ID_BYTES {
            self.fail(
                ErrorCode::TooLong,
                FIELD,
                "external_user_id is over 255 bytes",
            );
        } else if id.chars().any(char::is_control) {
            self.fail(
                ErrorCode::InvalidFormat,
                FIELD,
                "external_user_id has a control character",
            );
        } else {
            self.external_user_id = Some(id);
        }
    }

    /// `Some(None)` removes the email, `Some(Some(_))` sets it, `None` is an error.
    pub(super) fn email(&mut self, field: &str, value: Value) -> Option<Option<String>> {
        match value {
            Value::Null => Some(None),
            Value::String(raw) => match parse_email(&raw).map(str::len) {
                Some(len) if len == raw.len() => Some(Some(raw)),
                Some(_) => Some(parse_email(&raw).map(str::to_owned)),
                None => {
                    self.fail(
                        ErrorCode::InvalidEmail,
                        field,
                        format!("{field} is not a valid address"),
                    );
                    None
                }
            },
            _ => {
                self.fail(
                    ErrorCode::InvalidType,
                    field,
                    format!("{field} must be a string or null"),
                );
                None
            }
        }
    }
}

/// What the top-level email asks for, as `Validator::email` would read it; `None` when
/// it is invalid.
fn top_level_email(value: &Value) -> Option<Option<String>> {
    match value {
        Value::Null => Some(None),
        Value::String(raw) => parse_email(raw).map(|email| Some(email.to_owned())),
        _ => None,
    }
}

/// Whether an `external_user_id` could have been stored: 1–255 bytes, not blank, no
/// control characters (the body's rules, for ids that arrive in a path).
pub fn is_storable_user_id(id: &str) -> bool {
    !id.trim().is_empty() && id.len() <= MAX_USER_ID_BYTES && !id.chars().any(char::is_control)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn a_member_named_twice_at_any_depth_is_refused_at_its_path() {
        for (body, path) in [
            (
                r#"{"external_user_id":"a","external_user_id":"b"}"#,
                "external_user_id",
            ),
            (
                r#"{"external_user_id":"a","traits":{"plan":"x","plan":"y"}}"#,
                "traits.plan",
            ),
            (
                r#"{"external_user_id":"a","traits":{"t":[1,{"k":1,"k":2}]}}"#,
                "traits.t[1].k",
            ),
        ] {
            let Err(BodyError::Invalid(errors)) = parse_upsert(body.as_bytes(), NOW) else {
                panic!("{body} was accepted")
            };
            assert_eq!(
                (errors[0].code, errors[0].field.as_deref()),
                (ErrorCode::DuplicateField, Some(path)),
                "{body}"
            );
        }
        // A colon inside a string is no member.
        assert!(parse_upsert(br#"{"external_user_id":"a:b","traits":{"x:y":"1:2"}}"#, NOW).is_ok());
    }
    use proptest::prelude::*;
    use serde_json::json;

    pub(crate) fn errors(body: Value) -> Vec<(ErrorCode, String)> {
        errors_of(&body.to_string())
    }

    /// For bodies whose member order matters: `json!` sorts members.
    pub(crate) fn errors_of(body: &str) -> Vec<(ErrorCode, String)> {
        match parse_upsert(body.as_bytes(), NOW) {
            Err(BodyError::Invalid(errors)) => errors
                .into_iter()
                .map(|e| (e.code, e.field.unwrap_or_default()))
                .collect(),
            other => panic!("expected 422 errors, got {other:?}"),
        }
    }

    pub(crate) fn valid(body: Value) -> ValidUpsert {
        parse_upsert(body.to_string().as_bytes(), NOW).expect("valid body")
    }

    #[test]
    fn full_example_is_accepted_and_split_into_profile_and_traits() {
        let upsert = valid(json!({
            "external_user_id": "usr_42",
            "email": " jane@acme.io ",
            "traits": {"name": "Jane Doe", "plan": "trial", "signupDate": "2026-05-17T16:00:00+02:00",
                       "company": "Acme Inc.", "role": "lead", "favoriteColor": "teal", "old": null}
        }));
        assert_eq!(upsert.external_user_id, "usr_42");
        let p = &upsert.changes.profile;
        assert_eq!(p[&ProfileField::Email].as_deref(), Some("jane@acme.io"));
        assert_eq!(
            p[&ProfileField::SignupDate].as_deref(),
            Some("2026-05-17T14:00:00Z")
        );
        assert_eq!(p[&ProfileField::Role].as_deref(), Some("lead"));
        assert_eq!(upsert.changes.traits["favoriteColor"], Some(json!("teal")));
        assert_eq!(upsert.changes.traits["old"], None);
        assert!(!upsert.changes.traits.contains_key("name"));
    }

    #[test]
    fn errors_come_in_body_order() {
        let found = errors_of(
            r#"{"traits": {"plan": 5, "signupDate": "yesterday"}, "email": "nope",
                "external_user_id": "", "extra": 1}"#,
        );
        let fields: Vec<&str> = found.iter().map(|(_, f)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "traits.plan",
                "traits.signupDate",
                "email",
                "external_user_id",
                "extra"
            ]
        );
        assert_eq!(found[1].0, ErrorCode::InvalidDatetime);
        assert_eq!(found[4].0, ErrorCode::UnknownField);
        // An empty trait name is reported on `traits`, but where it stands.
        assert_eq!(
            errors_of(r#"{"external_user_id": "u", "traits": {"plan": 5, "": 1}}"#),
            [
                (ErrorCode::InvalidType, "traits.plan".into()),
                (ErrorCode::Empty, "traits".into())
            ]
        );
    }

    #[test]
    fn missing_external_user_id_is_required() {
        assert_eq!(
            errors(json!({"email": "a@b.io"})),
            [(ErrorCode::Required, "external_user_id".into())]
        );
    }

    #[test]
    fn external_user_id_rules() {
        let cases = [
            (json!(42), ErrorCode::InvalidType),
            (json!("   "), ErrorCode::Empty),
            (json!("x".repeat(256)), ErrorCode::TooLong),
            (json!("a\u{7}b"), ErrorCode::InvalidFormat),
        ];
        for (id, code) in cases {
            assert_eq!(
                errors(json!({"external_user_id": id})),
                [(code, "external_user_id".into())]
            );
        }
        valid(json!({"external_user_id": "x".repeat(255)}));
    }

    #[test]
    fn non_object_bodies_are_invalid_json() {
        for body in ["", "[]", "\"x\"", "{\"a\":", "null"] {
            assert!(
                matches!(
                    parse_upsert(body.as_bytes(), NOW),
                    Err(BodyError::InvalidJson(_))
                ),
                "{body}"
            );
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(20, 128, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                proptest::collection::vec((".{0,8}", inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_are_refused_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(BodyError::Invalid(errors)) = parse_upsert(&bytes, NOW) {
                prop_assert!(!errors.is_empty());
            }
        }

        #[test]
        fn arbitrary_json_bodies_are_accepted_or_refused_with_fields(
            id in prop_oneof![Just(json!("usr_1")), arb_json()],
            email in prop_oneof![Just(None), arb_json().prop_map(Some)],
            traits in prop_oneof![arb_json(), proptest::collection::vec((".{0,10}", arb_json()), 0..8)
                .prop_map(|members| Value::Object(members.into_iter().collect()))],
        ) {
            let mut body = json!({"external_user_id": id, "traits": traits});
            if let Some(email) = email {
                body["email"] = email;
            }
            match parse_upsert(body.to_string().as_bytes(), NOW) {
                Ok(upsert) => prop_assert!(!upsert.changes.traits.contains_key("email")),
                Err(BodyError::Invalid(errors)) => {
                    prop_assert!(!errors.is_empty());
                    prop_assert!(errors.iter().all(|e| e.field.is_some()));
                }
                Err(BodyError::InvalidJson(_)) => prop_assert!(false, "a JSON object is never invalid_json"),
            }
        }
    }
}
