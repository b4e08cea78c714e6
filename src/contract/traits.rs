//! An upsert's two trait sections, `traits` (overwrites) and `set_once` (sets what the
//! user has no value for yet): known traits become profile fields, custom ones are
//! checked for what DynamoDB can store, and email is promoted out of the traits.

use super::validate::Validator;
use super::ErrorCode;
use crate::domain::{trait_path, ProfileField};
use serde_json::Value;
use std::collections::HashSet;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

const MAX_TRAITS: usize = 256;
const MAX_TRAIT_NAME_BYTES: usize = 256;
const MAX_TRAIT_DEPTH: usize = 16;

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
    /// `set_once`: traits, each set only if the user has no value for it yet.
    pub(super) fn set_once(
        &mut self,
        value: Value,
        overwritten: &HashSet<String>,
        email_given: bool,
    ) {
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

    pub(super) fn traits(&mut self, value: Value, top_email: Option<&Option<Option<String>>>) {
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

    /// An error on `<section>.<name>`; `problem` completes "<section>.<name> …".
    fn fail_trait(&mut self, section: Section, code: ErrorCode, name: &str, problem: &str) {
        let field = section.path(name);
        let message = format!("{field} {problem}");
        self.fail(code, &field, message);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::validate::tests::{errors, errors_of, valid, NOW};
    use crate::contract::{parse_upsert, BodyError};
    use serde_json::{json, Map};

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
}
