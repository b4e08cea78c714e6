//! Audience requests: the definition a `PUT` carries, and the members query.

use super::json::{in_body_order, read_object, ReadObject};
use super::validate::MAX_USER_ID_BYTES;
use super::{body_hash, parse_rule, BodyError, ErrorCode, FieldError, RequestError};
use crate::domain::audience::Rule;
use crate::domain::webhook::MAX_WEBHOOKS;
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
    // As every body: a member named twice is refused, and so is a number a rule could
    // only hold rounded.
    let ReadObject {
        mut members,
        unstorable,
        text,
    } = read_object(body)?;
    if !unstorable.is_empty() {
        let inexact = unstorable
            .into_iter()
            .map(|path| {
                let message = format!("{path} is not a number a rule holds exactly (within DynamoDB's range, digit for digit in a 64-bit integer or a double)");
                (path.clone(), FieldError::new(ErrorCode::InvalidNumber, path, message))
            })
            .collect();
        return Err(BodyError::Invalid(in_body_order(inexact, &text)));
    }
    let body_hash = body_hash(&members);
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

/// A page request: how many, and after which item (a member's user id, or an
/// audience id).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub limit: usize,
    pub after: Option<String>,
}

impl Page {
    /// This page of `items` (in id order, `id` each one's): those after `after`, at
    /// most `limit`, and the cursor of the next page when there is more.
    pub fn cut<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        id: impl Fn(&T) -> &String,
        paged: Paged,
    ) -> (Vec<T>, Option<String>) {
        let mut page: Vec<T> = items
            .into_iter()
            .filter(|item| self.after.as_ref().is_none_or(|after| id(item) > after))
            .take(self.limit + 1)
            .collect();
        let more = page.len() > self.limit;
        page.truncate(self.limit);
        let next = page
            .last()
            .filter(|_| more)
            .map(|last| paged.cursor(id(last)));
        (page, next)
    }
}

/// Audiences per page of `GET /api/v1/audiences`: the default and the most.
pub const MAX_AUDIENCES_PAGE: usize = 100;
/// Lines of an attempt log a page holds unless `limit` says otherwise, and the most.
pub const DEFAULT_DELIVERIES_PAGE: usize = 20;
pub const MAX_DELIVERIES_PAGE: usize = 100;

/// What a cursor pages through: an audience's members, the workspace's audiences, its
/// webhooks or a webhook's attempt log.
#[derive(Debug, Clone, Copy)]
pub enum Paged<'a> {
    Members { audience_id: &'a str },
    Audiences,
    Webhooks,
    Deliveries { webhook_id: &'a str },
}

impl Paged<'_> {
    /// What a cursor of these pages is bound to: another audience's cursor is not one.
    fn scope(&self) -> String {
        match self {
            Paged::Members { audience_id } => format!("members\0{audience_id}"),
            Paged::Audiences => "audiences".to_owned(),
            Paged::Webhooks => "webhooks".to_owned(),
            Paged::Deliveries { webhook_id } => format!("deliveries\0{webhook_id}"),
        }
    }

    fn limits(&self) -> (usize, usize) {
        match self {
            Paged::Members { .. } => (DEFAULT_MEMBERS_PAGE, MAX_MEMBERS_PAGE),
            Paged::Audiences => (MAX_AUDIENCES_PAGE, MAX_AUDIENCES_PAGE),
            // A workspace has at most 20: one page holds them all.
            Paged::Webhooks => (MAX_WEBHOOKS, MAX_WEBHOOKS),
            Paged::Deliveries { .. } => (DEFAULT_DELIVERIES_PAGE, MAX_DELIVERIES_PAGE),
        }
    }

    fn is_item(&self, after: &str) -> bool {
        match self {
            Paged::Members { .. } => super::is_storable_user_id(after),
            Paged::Audiences => crate::domain::audience::is_audience_id(after),
            Paged::Webhooks => crate::domain::webhook::is_webhook_id(after),
            Paged::Deliveries { .. } => crate::domain::webhook::is_log_place(after),
        }
    }

    /// The cursor of the page after `last`: the item, and a check that ties it to
    /// these pages (a cursor no page gave, another audience's, or one cut or altered in
    /// transit is refused, never taken as given). Not a secret: a cursor only says where
    /// to go on within what the caller may read anyway.
    pub fn cursor(&self, last: &str) -> String {
        let check = cursor_check(&self.scope(), last);
        let mut bytes = check.to_vec();
        bytes.extend_from_slice(last.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// `limit` (1 to the most, a default when absent) and `cursor` (as a page gave it).
    pub fn query(&self, limit: Option<&str>, cursor: Option<&str>) -> Result<Page, RequestError> {
        let invalid = |field: &str, message: String| {
            RequestError::Query(FieldError::new(ErrorCode::InvalidFormat, field, message))
        };
        let (default, most) = self.limits();
        let limit = match limit {
            None => default,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=most).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "limit",
                        format!("limit must be a whole number from 1 to {most}"),
                    )
                })?,
        };
        let after = match cursor {
            None => None,
            Some(cursor) => Some(
                self.after(cursor)
                    .ok_or_else(|| invalid("cursor", "cursor is not one a page gave".into()))?,
            ),
        };
        Ok(Page { limit, after })
    }

    fn after(&self, cursor: &str) -> Option<String> {
        // The longest cursor a page gives: a 255-byte user id and the check, encoded.
        if cursor.len() > MAX_CURSOR_CHARS {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()?;
        let (check, last) = bytes.split_at_checked(CURSOR_CHECK_BYTES)?;
        let last = String::from_utf8(last.to_vec()).ok()?;
        (self.is_item(&last) && check == cursor_check(&self.scope(), &last)).then_some(last)
    }
}

/// Bytes of a cursor's check: enough that a cursor no page gave passes one in 2^64.
const CURSOR_CHECK_BYTES: usize = 8;
const MAX_CURSOR_CHARS: usize = 4 * (CURSOR_CHECK_BYTES + MAX_USER_ID_BYTES + 2) / 3;

fn cursor_check(scope: &str, last: &str) -> [u8; CURSOR_CHECK_BYTES] {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"vibefollow cursor\0")
        .chain_update(scope.as_bytes())
        .chain_update(b"\0")
        .chain_update(last.as_bytes())
        .finalize();
    let mut check = [0; CURSOR_CHECK_BYTES];
    check.copy_from_slice(&digest[..CURSOR_CHECK_BYTES]);
    check
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
    fn a_member_named_twice_or_a_rounded_number_is_refused_at_its_path() {
        let refused = |body: &str| match parse_audience(body.as_bytes()) {
            Err(BodyError::Invalid(errors)) => errors
                .into_iter()
                .map(|e| (e.code, e.field.unwrap_or_default()))
                .collect::<Vec<_>>(),
            other => panic!("{body}: {other:?}"),
        };
        assert_eq!(
            refused(r#"{"name":"a","name":"b","rule":{"field":"p","op":"exists"}}"#),
            [(ErrorCode::DuplicateField, "name".to_owned())]
        );
        assert_eq!(
            refused(r#"{"name":"a","rule":{"field":"p","field":"q","op":"exists"}}"#),
            [(ErrorCode::DuplicateField, "rule.field".to_owned())]
        );
        assert_eq!(
            refused(
                r#"{"name":"a","rule":{"field":"n","op":"gt","value":0.12345678901234567890123}}"#
            ),
            [(ErrorCode::InvalidNumber, "rule.value".to_owned())]
        );
        assert_eq!(
            refused(r#"{"name":"a","rule":{"field":"n","op":"gt","value":1e400}}"#),
            [(ErrorCode::InvalidNumber, "rule.value".to_owned())]
        );
    }

    #[test]
    fn pages_take_a_bounded_limit_and_only_the_cursor_they_gave() {
        let trials = Paged::Members {
            audience_id: "trials",
        };
        assert_eq!(
            trials.query(None, None).unwrap(),
            Page {
                limit: 100,
                after: None
            }
        );
        let cursor = trials.cursor("usr/42 é");
        assert_eq!(
            trials.query(Some("1000"), Some(&cursor)).unwrap(),
            Page {
                limit: 1000,
                after: Some("usr/42 é".into())
            }
        );
        let longest = trials.cursor(&"u".repeat(MAX_USER_ID_BYTES));
        assert!(trials.query(None, Some(&longest)).is_ok());
        let pros = Paged::Members {
            audience_id: "pros",
        };
        let plain = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("usr_1");
        let mut altered = cursor.clone();
        altered.pop();
        for (limit, cursor, paged) in [
            (Some("0"), None, trials),
            (Some("1001"), None, trials),
            (Some("x"), None, trials),
            (None, Some("!!"), trials),
            (None, Some(""), trials),
            (None, Some(plain.as_str()), trials),
            (None, Some(altered.as_str()), trials),
            // Another audience's cursor, and the audiences list's.
            (None, Some(cursor.as_str()), pros),
            (None, Some(cursor.as_str()), Paged::Audiences),
            (Some("101"), None, Paged::Audiences),
        ] {
            let refused = paged.query(limit, cursor).unwrap_err();
            let RequestError::Query(error) = refused else {
                panic!("{limit:?} {cursor:?}: {refused:?}")
            };
            assert_eq!(error.code, ErrorCode::InvalidFormat);
            let field = if limit.is_some() { "limit" } else { "cursor" };
            assert_eq!(error.field.as_deref(), Some(field));
        }
        // Long enough to pass DynamoDB's key limit once decoded: refused before it.
        let huge = "A".repeat(2_000);
        assert!(trials.query(None, Some(&huge)).is_err());
        let list = Paged::Audiences.cursor("trials");
        assert_eq!(
            Paged::Audiences
                .query(None, Some(&list))
                .unwrap()
                .after
                .as_deref(),
            Some("trials")
        );
    }
}
