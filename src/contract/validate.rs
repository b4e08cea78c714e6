use super::idempotency::body_hash;
use super::json::{in_body_order, read_object, ReadObject};
use super::{parse_email, ErrorCode, FieldError};
use crate::domain::{trait_path, Changes, ProfileField};
use serde_json::{Map, Value};
use std::collections::HashSet;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// The contract's body limit, checked on the raw bytes before any parsing.
pub const MAX_BODY_BYTES: usize = 32 * 1024;
/// The contract's limit on `external_user_id`; reads of longer ids answer 404.
pub(crate) const MAX_USER_ID_BYTES: usize = 255;
const MAX_TRAITS: usize = 256;
const MAX_TRAIT_NAME_BYTES: usize = 256;
const MAX_TRAIT_DEPTH: usize = 16;

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
struct Validator {
    /// Each error with the body path it is about, for `in_body_order`.
    errors: Vec<(String, FieldError)>,
    external_user_id: Option<String>,
    changes: Changes,
    timestamp: Option<i64>,
    /// Paths of numbers that cannot be stored exactly.
    unstorable_paths: HashSet<String>,
    now_ms: i64,
}

/// The two members that carry traits: `traits` overwrites (`null` removes), `set_once`
/// sets what the user has no value for yet (`null` is refused).
#[derive(Clone, Copy, PartialEq)]
enum Section {
    Traits,
    SetOnce,
}

impl Section {
    fn name(self) -> &'static str {
        match self {
            Section::Traits => "traits",
            Section::SetOnce => "set_once",
        }
    }

    /// `traits.<name>` or `set_once.<name>`.
    fn path(self, name: &str) -> String {
        match self {
            Section::Traits => trait_path(name),
            Section::SetOnce => format!("set_once.{name}"),
        }
    }
}

impl Validator {
    fn fail(&mut self, code: ErrorCode, field: &str, message: impl Into<String>) {
        self.fail_at(field.to_owned(), code, field, message);
    }

    fn fail_at(
        &mut self,
        location: String,
        code: ErrorCode,
        field: &str,
        message: impl Into<String>,
    ) {
        self.errors
            .push((location, FieldError::new(code, field, message)));
    }

    /// An error on `<section>.<name>`; `problem` completes "<section>.<name> …".
    fn fail_trait(&mut self, section: Section, code: ErrorCode, name: &str, problem: &str) {
        let field = section.path(name);
        let message = format!("{field} {problem}");
        self.fail(code, &field, message);
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

    /// `set_once`: traits, each set only if the user has no value for it yet.
    fn set_once(&mut self, value: Value, overwritten: &HashSet<String>, email_given: bool) {
        const SECTION: Section = Section::SetOnce;
        let Value::Object(traits) = value else {
            return self.fail(
                ErrorCode::InvalidType,
                SECTION.name(),
                "set_once must be an object",
            );
        };
        if traits.len() > MAX_TRAITS {
            return self.fail(
                ErrorCode::TooMany,
                SECTION.name(),
                "set_once has more than 256 members",
            );
        }
        for (name, value) in traits {
            if value.is_null() {
                self.fail_trait(SECTION, ErrorCode::InvalidType, &name, "must not be null");
                continue;
            }
            let in_traits = overwritten.contains(&name) || (name == "email" && email_given);
            if in_traits {
                let problem = "is also given to overwrite (traits or email)";
                self.fail_trait(SECTION, ErrorCode::Conflict, &name, problem);
                continue;
            }
            if name == "email" {
                if let Some(Some(email)) = self.email(&SECTION.path("email"), value) {
                    self.changes.once_profile.insert(ProfileField::Email, email);
                }
            } else if let Some(known) = ProfileField::from_trait_name(&name) {
                if let Some(Some(text)) = self.known_trait(SECTION, known, &name, value) {
                    self.changes.once_profile.insert(known, text);
                }
            } else if let Some((name, Some(value))) = self.custom_trait(SECTION, name, value) {
                self.changes.once_traits.insert(name, value);
            }
        }
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
    fn email(&mut self, field: &str, value: Value) -> Option<Option<String>> {
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

    fn traits(&mut self, value: Value, top_email: Option<&Option<Option<String>>>) {
        const SECTION: Section = Section::Traits;
        let traits = match value {
            Value::Null => return,
            Value::Object(traits) => traits,
            _ => return self.fail(ErrorCode::InvalidType, "traits", "traits must be an object"),
        };
        if traits.len() > MAX_TRAITS {
            return self.fail(
                ErrorCode::TooMany,
                "traits",
                "traits has more than 256 members",
            );
        }
        for (name, value) in traits {
            if name == "email" {
                self.trait_email(value, top_email);
            } else if let Some(known) = ProfileField::from_trait_name(&name) {
                if let Some(stored) = self.known_trait(SECTION, known, &name, value) {
                    self.changes.profile.insert(known, stored);
                }
            } else if let Some((name, value)) = self.custom_trait(SECTION, name, value) {
                self.changes.traits.insert(name, value);
            }
        }
    }

    // Email is PII and never lands in the traits map: it is promoted to `email`.
    fn trait_email(&mut self, value: Value, top_email: Option<&Option<Option<String>>>) {
        const FIELD: &str = "traits.email";
        let Some(email) = self.email(FIELD, value) else {
            return;
        };
        match top_email {
            None => {
                self.changes.profile.insert(ProfileField::Email, email);
            }
            // An invalid top-level email is reported on its own; no conflict then.
            Some(Some(top)) if *top != email => {
                self.fail(
                    ErrorCode::Conflict,
                    FIELD,
                    "traits.email differs from email",
                );
            }
            Some(_) => {}
        }
    }

    /// A known trait's stored form: `Some(None)` removes it, `None` is an error.
    fn known_trait(
        &mut self,
        section: Section,
        known: ProfileField,
        name: &str,
        value: Value,
    ) -> Option<Option<String>> {
        let text = match value {
            Value::Null => return Some(None),
            Value::String(text) => text,
            _ => {
                self.fail_trait(
                    section,
                    ErrorCode::InvalidType,
                    name,
                    "must be a string or null",
                );
                return None;
            }
        };
        let stored = match known {
            ProfileField::SignupDate => match normalize_datetime(&text) {
                Some(utc) => utc,
                None => {
                    let problem = "is not an RFC 3339 date-time";
                    self.fail_trait(section, ErrorCode::InvalidDatetime, name, problem);
                    return None;
                }
            },
            _ => {
                let max = max_known_trait_bytes(known);
                if text.len() > max {
                    let problem = format!("is over {max} bytes");
                    self.fail_trait(section, ErrorCode::TooLong, name, &problem);
                    return None;
                }
                text
            }
        };
        Some(Some(stored))
    }

    /// A custom trait as stored (`None` value: removed), or `None` after an error.
    fn custom_trait(
        &mut self,
        section: Section,
        name: String,
        value: Value,
    ) -> Option<(String, Option<Value>)> {
        let path = section.path(&name);
        if name.is_empty() {
            let message = format!("a name in {} must not be empty", section.name());
            self.fail_at(path, ErrorCode::Empty, section.name(), message);
            return None;
        }
        if name.len() > MAX_TRAIT_NAME_BYTES {
            self.fail(
                ErrorCode::TooLong,
                &path,
                "a trait name is at most 256 bytes",
            );
            return None;
        }
        if name.chars().any(char::is_control) {
            self.fail(
                ErrorCode::InvalidFormat,
                &path,
                "a trait name has a control character",
            );
            return None;
        }
        if nesting_depth(&value) > MAX_TRAIT_DEPTH {
            self.fail_trait(
                section,
                ErrorCode::TooDeep,
                &name,
                "nests deeper than 16 levels",
            );
            return None;
        }
        let errors_before = self.errors.len();
        self.check_value(&mut path.clone(), &value);
        if self.errors.len() > errors_before {
            return None;
        }
        Some((name, (!value.is_null()).then_some(value)))
    }

    /// Reports what DynamoDB could not store inside a trait value, by path: numbers
    /// that do not fit, and members with an empty name.
    fn check_value(&mut self, path: &mut String, value: &Value) {
        let len = path.len();
        match value {
            Value::Number(_) if self.unstorable_paths.contains(path.as_str()) => self.fail(
                ErrorCode::InvalidNumber,
                path,
                format!("{path} is not a number this service stores exactly: within DynamoDB's range (1e-130 to 1e125, at most 38 significant digits) and held digit for digit by a 64-bit integer or a double; send longer decimals as strings"),
            ),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push_str(&format!("[{i}]"));
                    self.check_value(path, item);
                    path.truncate(len);
                }
            }
            Value::Object(members) => {
                for (name, member) in members {
                    if name.is_empty() {
                        self.fail(
                            ErrorCode::InvalidTraitName,
                            path,
                            format!("{path} has a member with an empty name"),
                        );
                        continue;
                    }
                    path.push('.');
                    path.push_str(name);
                    self.check_value(path, member);
                    path.truncate(len);
                }
            }
            _ => {}
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

fn max_known_trait_bytes(field: ProfileField) -> usize {
    match field {
        ProfileField::Plan | ProfileField::Role => 256,
        _ => 1024,
    }
}

/// `2026-05-17T16:00:00+02:00` → `2026-05-17T14:00:00Z`.
fn normalize_datetime(text: &str) -> Option<String> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    parsed.to_offset(UtcOffset::UTC).format(&Rfc3339).ok()
}

/// A scalar is depth 0, `{"a":1}` depth 1.
fn nesting_depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(nesting_depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(nesting_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Whether an `external_user_id` could have been stored: 1–255 bytes, not blank, no
/// control characters (the body's rules, for ids that arrive in a path).
pub fn is_storable_user_id(id: &str) -> bool {
    !id.trim().is_empty() && id.len() <= MAX_USER_ID_BYTES && !id.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

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

    fn errors(body: Value) -> Vec<(ErrorCode, String)> {
        errors_of(&body.to_string())
    }

    /// For bodies whose member order matters: `json!` sorts members.
    fn errors_of(body: &str) -> Vec<(ErrorCode, String)> {
        match parse_upsert(body.as_bytes(), NOW) {
            Err(BodyError::Invalid(errors)) => errors
                .into_iter()
                .map(|e| (e.code, e.field.unwrap_or_default()))
                .collect(),
            other => panic!("expected 422 errors, got {other:?}"),
        }
    }

    fn valid(body: Value) -> ValidUpsert {
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
    fn traits_email_is_promoted_never_stored_as_trait() {
        let upsert = valid(json!({"external_user_id": "u", "traits": {"email": "Jane@Acme.io"}}));
        assert_eq!(
            upsert.changes.profile[&ProfileField::Email].as_deref(),
            Some("Jane@Acme.io")
        );
        assert!(upsert.changes.traits.is_empty());
        valid(json!({"external_user_id": "u", "email": "a@b.io ", "traits": {"email": " a@b.io"}}));
    }

    #[test]
    fn traits_email_that_differs_is_a_conflict() {
        assert_eq!(
            errors(
                json!({"external_user_id": "u", "email": "a@b.io", "traits": {"email": "c@d.io"}})
            ),
            [(ErrorCode::Conflict, "traits.email".into())]
        );
    }

    #[test]
    fn known_trait_limits() {
        valid(
            json!({"external_user_id": "u", "traits": {"plan": "p".repeat(256), "name": "n".repeat(1024)}}),
        );
        assert_eq!(
            errors_of(&format!(
                r#"{{"external_user_id": "u", "traits": {{"plan": "{}", "name": "{}"}}}}"#,
                "p".repeat(257),
                "n".repeat(1025)
            )),
            [
                (ErrorCode::TooLong, "traits.plan".into()),
                (ErrorCode::TooLong, "traits.name".into())
            ]
        );
    }

    #[test]
    fn custom_trait_depth_is_limited_to_16() {
        let mut deep = json!(1);
        for _ in 0..16 {
            deep = json!([deep]);
        }
        valid(json!({"external_user_id": "u", "traits": {"deep": deep.clone()}}));
        assert_eq!(
            errors(json!({"external_user_id": "u", "traits": {"deep": [deep]}})),
            [(ErrorCode::TooDeep, "traits.deep".into())]
        );
    }

    #[test]
    fn numbers_outside_dynamodb_range_name_their_path() {
        let found = errors_of(
            r#"{"external_user_id": "u", "traits": {"tags": [1, 2, 1e200], "address": {"lat": 1e-200}}}"#,
        );
        assert_eq!(
            found,
            [
                (ErrorCode::InvalidNumber, "traits.tags[2]".into()),
                (ErrorCode::InvalidNumber, "traits.address.lat".into())
            ]
        );
    }

    #[test]
    fn numbers_are_never_rounded_or_zeroed() {
        for literal in [
            "1e400",
            "-1e400",
            "1e-400",
            "123456789012345678901234567890123456789",
            "0.12345678901234567890",
        ] {
            let body = format!(
                r#"{{"external_user_id": "u", "traits": {{"n": {literal}, "m": [1, {{"k": {literal}}}]}}}}"#
            );
            assert_eq!(
                errors_of(&body),
                [
                    (ErrorCode::InvalidNumber, "traits.n".into()),
                    (ErrorCode::InvalidNumber, "traits.m[1].k".into())
                ],
                "{literal}"
            );
        }
        let edges = valid(
            json!({"external_user_id": "u", "traits": {"big": 9.5e125, "small": -1e-130, "u": u64::MAX, "i": i64::MIN, "zero": 0.0}}),
        );
        assert_eq!(edges.changes.traits["u"], Some(json!(u64::MAX)));
        // Out-of-range numbers elsewhere are wrong types, and bad grammar is not JSON.
        assert_eq!(
            errors_of(r#"{"external_user_id": 1e400}"#),
            [(ErrorCode::InvalidType, "external_user_id".into())]
        );
        assert!(matches!(
            parse_upsert(br#"{"external_user_id": "u", "traits": {"n": 01}}"#, NOW),
            Err(BodyError::InvalidJson(_))
        ));
    }

    #[test]
    fn empty_member_names_inside_values_are_refused_at_their_path() {
        assert_eq!(
            errors(
                json!({"external_user_id": "u", "traits": {"prefs": {"": 1}, "list": [{"a": {"": {}}}]}})
            ),
            [
                (ErrorCode::InvalidTraitName, "traits.list[0].a".into()),
                (ErrorCode::InvalidTraitName, "traits.prefs".into())
            ]
        );
    }

    #[test]
    fn too_many_traits() {
        let traits: Map<String, Value> = (0..257).map(|i| (format!("t{i}"), json!(i))).collect();
        assert_eq!(
            errors(json!({"external_user_id": "u", "traits": traits})),
            [(ErrorCode::TooMany, "traits".into())]
        );
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
