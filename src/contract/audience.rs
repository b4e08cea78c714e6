//! Audience requests: the definition a `PUT` carries, and the members query.

use super::{body_hash, parse_rule, BodyError, ErrorCode, FieldError, RequestError};
use crate::domain::audience::Rule;
use base64::Engine;
use serde_json::Value;

/// A name of 1–256 bytes.
const MAX_NAME_BYTES: usize = 256;
/// Members per page: the default and the most.
pub const DEFAULT_MEMBERS_PAGE: usize = 100;
pub const MAX_MEMBERS_PAGE: usize = 1_000;

/// A valid `PUT /api/v1/audiences/{id}` body.
#[derive(Debug, Clone, PartialEq)]
pub struct AudienceDefinition {
    pub name: String,
    /// The rule as sent (what reads show), and parsed.
    pub rule_json: Value,
    pub rule: Rule,
    /// What an Idempotency-Key record compares.
    pub body_hash: String,
}

pub fn parse_audience(body: &[u8]) -> Result<AudienceDefinition, BodyError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| BodyError::InvalidJson(format!("body is not valid JSON: {e}")))?;
    let body_hash = body_hash(&value);
    let Value::Object(mut members) = value else {
        return Err(BodyError::InvalidJson("body must be a JSON object".into()));
    };
    let mut errors = FieldError::unknown_members(members.keys(), &["name", "rule"]);
    let name = match members.remove("name") {
        Some(Value::String(name)) if name.trim().is_empty() => {
            errors.push(FieldError::new(
                ErrorCode::Empty,
                "name",
                "name must not be blank",
            ));
            None
        }
        Some(Value::String(name)) if name.len() > MAX_NAME_BYTES => {
            errors.push(FieldError::new(
                ErrorCode::TooLong,
                "name",
                "name is over 256 bytes",
            ));
            None
        }
        Some(Value::String(name)) => Some(name),
        Some(_) => {
            errors.push(FieldError::new(
                ErrorCode::InvalidType,
                "name",
                "name must be a string",
            ));
            None
        }
        None => {
            errors.push(FieldError::new(
                ErrorCode::Required,
                "name",
                "name is required",
            ));
            None
        }
    };
    let rule_json = members.remove("rule").unwrap_or(Value::Null);
    let rule = match &rule_json {
        Value::Null => {
            errors.push(FieldError::new(
                ErrorCode::Required,
                "rule",
                "rule is required",
            ));
            None
        }
        rule => match parse_rule(rule) {
            Ok(rule) => Some(rule),
            Err(rule_errors) => {
                errors.extend(rule_errors);
                None
            }
        },
    };
    match (name, rule) {
        (Some(name), Some(rule)) if errors.is_empty() => Ok(AudienceDefinition {
            name,
            rule_json,
            rule,
            body_hash,
        }),
        _ => Err(BodyError::Invalid(errors)),
    }
}

/// A members page request: how many, and after which member.
#[derive(Debug, Clone, PartialEq)]
pub struct MembersPage {
    pub limit: usize,
    pub after: Option<String>,
}

/// `limit` (1–1,000, default 100) and `cursor` (as a page gave it).
pub fn members_query(
    limit: Option<&str>,
    cursor: Option<&str>,
) -> Result<MembersPage, RequestError> {
    let invalid = |field: &str, message: &str| {
        RequestError::Query(FieldError::new(ErrorCode::InvalidFormat, field, message))
    };
    let limit = match limit {
        None => DEFAULT_MEMBERS_PAGE,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_MEMBERS_PAGE).contains(n))
            .ok_or_else(|| invalid("limit", "limit must be a whole number from 1 to 1000"))?,
    };
    let after = match cursor {
        None | Some("") => None,
        Some(cursor) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(cursor)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| invalid("cursor", "cursor is not one a page gave"))?,
        ),
    };
    Ok(MembersPage { limit, after })
}

/// The cursor of the page after the member `last`.
pub fn members_cursor(last: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_needs_a_name_and_a_valid_rule_and_nothing_else() {
        let ok = parse_audience(
            br#"{"name":"Trials","rule":{"field":"plan","op":"eq","value":"trial"}}"#,
        )
        .unwrap();
        assert_eq!(ok.name, "Trials");
        let Err(BodyError::Invalid(errors)) =
            parse_audience(br#"{"rule":{"all":[{"field":"p","op":"nope"}]},"x":1}"#)
        else {
            panic!("accepted")
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_deref().unwrap()).collect();
        assert_eq!(fields, ["x", "name", "rule.all[0].op"]);
        assert!(matches!(
            parse_audience(b"[]"),
            Err(BodyError::InvalidJson(_))
        ));
    }

    #[test]
    fn pages_take_a_bounded_limit_and_the_cursor_they_gave() {
        assert_eq!(
            members_query(None, None).unwrap(),
            MembersPage {
                limit: 100,
                after: None
            }
        );
        let cursor = members_cursor("usr/42 é");
        assert_eq!(
            members_query(Some("1000"), Some(&cursor)).unwrap(),
            MembersPage {
                limit: 1000,
                after: Some("usr/42 é".into())
            }
        );
        for (limit, cursor) in [
            (Some("0"), None),
            (Some("1001"), None),
            (Some("x"), None),
            (None, Some("!!")),
        ] {
            assert!(
                members_query(limit, cursor).is_err(),
                "{limit:?} {cursor:?}"
            );
        }
    }
}
