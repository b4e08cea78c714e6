//! `POST /api/v1/webhooks/{id}/replay`: which of the attempt log's deliveries to send
//! again.

use super::json::{in_body_order, read_object, ReadObject};
use super::{BodyError, ErrorCode, FieldError};
use crate::domain::webhook::{DeliveryStatus, LOG_KEPT_FOR};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A valid replay body: the deliveries whose last attempt (`delivered` or `given_up`)
/// started in `[since_ms, until_ms)`, of one outcome or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    pub since_ms: i64,
    /// At most the request's time: a replay never reaches the lines it writes itself.
    pub until_ms: i64,
    pub only: Option<DeliveryStatus>,
}

/// Reads a replay body at `now_ms`: `since` within the log's 30 days, `until` (the
/// request's time when absent or later) after it, `status` `delivered` or `given_up`.
pub fn parse_replay(body: &[u8], now_ms: i64) -> Result<ReplayRequest, BodyError> {
    let ReadObject {
        mut members, text, ..
    } = read_object(body)?;
    let mut errors: Vec<(String, FieldError)> =
        FieldError::unknown_members(members.keys(), &["since", "until", "status"])
            .into_iter()
            .map(|error| (error.field.clone().unwrap_or_default(), error))
            .collect();
    let since_given = !matches!(members.get("since"), None | Some(Value::Null));
    let mut refuse = |code, field: &str, message: &str| {
        errors.push((field.into(), FieldError::new(code, field, message)));
    };
    let mut time = |field: &str| match members.remove(field) {
        None | Some(Value::Null) => None,
        Some(value) => {
            let parsed = value
                .as_str()
                .and_then(|text| OffsetDateTime::parse(text, &Rfc3339).ok());
            if parsed.is_none() {
                let message = format!("{field} is not an RFC 3339 date-time");
                refuse(ErrorCode::InvalidDatetime, field, &message);
            }
            parsed.map(|at| (at.unix_timestamp_nanos() / 1_000_000) as i64)
        }
    };
    let since = time("since");
    let until = time("until").map_or(now_ms, |until| until.min(now_ms));
    let log_start = now_ms - LOG_KEPT_FOR.as_millis() as i64;
    let only = match members.remove("status") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => match DeliveryStatus::parse(&name) {
            Some(status) if status != DeliveryStatus::Retrying => Some(status),
            _ => {
                let message = "status is \"delivered\" or \"given_up\"";
                refuse(ErrorCode::InvalidFormat, "status", message);
                None
            }
        },
        Some(_) => {
            refuse(ErrorCode::InvalidType, "status", "status must be a string");
            None
        }
    };
    match since {
        None if !since_given => {
            refuse(ErrorCode::Required, "since", "since is required");
        }
        Some(since) if since < log_start => refuse(
            ErrorCode::OutOfRange,
            "since",
            "since must be within the last 30 days: the attempt log keeps no more",
        ),
        Some(since) if since >= until => refuse(
            ErrorCode::OutOfRange,
            "since",
            "since must be before until and the present",
        ),
        _ => {}
    }
    match since {
        Some(since_ms) if errors.is_empty() => Ok(ReplayRequest {
            since_ms,
            until_ms: until,
            only,
        }),
        _ => Err(BodyError::Invalid(in_body_order(errors, &text))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn codes(body: &str) -> Vec<(ErrorCode, String)> {
        match parse_replay(body.as_bytes(), NOW) {
            Err(BodyError::Invalid(errors)) => errors
                .into_iter()
                .map(|e| (e.code, e.field.unwrap_or_default()))
                .collect(),
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_range_of_the_log_is_read_with_until_at_most_now() {
        let since = "2027-01-14T08:00:00Z";
        let parsed = |body: String| parse_replay(body.as_bytes(), NOW).unwrap();
        let at = |text: &str| {
            (OffsetDateTime::parse(text, &Rfc3339)
                .unwrap()
                .unix_timestamp_nanos()
                / 1_000_000) as i64
        };
        let whole = parsed(format!(r#"{{"since":"{since}"}}"#));
        assert_eq!(
            whole,
            ReplayRequest {
                since_ms: at(since),
                until_ms: NOW,
                only: None
            }
        );
        let bounded = parsed(format!(
            r#"{{"since":"{since}","until":"2027-01-14T09:00:00.5+01:00","status":"given_up"}}"#
        ));
        assert_eq!(bounded.until_ms, at("2027-01-14T08:00:00.5Z"));
        assert_eq!(bounded.only, Some(DeliveryStatus::GivenUp));
        let later = parsed(format!(
            r#"{{"since":"{since}","until":"2999-01-01T00:00:00Z","status":"delivered"}}"#
        ));
        assert_eq!(later.until_ms, NOW, "a later until is the present");
        assert_eq!(later.only, Some(DeliveryStatus::Delivered));
    }

    #[test]
    fn each_bad_member_is_refused_at_its_field() {
        use ErrorCode::*;
        let field = |code, name: &str| vec![(code, name.to_owned())];
        assert_eq!(codes("{}"), field(Required, "since"));
        assert_eq!(
            codes(r#"{"since":"yesterday"}"#),
            field(InvalidDatetime, "since")
        );
        assert_eq!(codes(r#"{"since":1}"#), field(InvalidDatetime, "since"));
        assert_eq!(
            codes(r#"{"since":"2026-01-01T00:00:00Z"}"#),
            field(OutOfRange, "since"),
            "older than the log's 30 days"
        );
        assert_eq!(
            codes(r#"{"since":"2027-01-14T08:00:00Z","until":"2027-01-14T08:00:00Z"}"#),
            field(OutOfRange, "since")
        );
        assert_eq!(
            codes(r#"{"since":"2027-01-14T08:00:00Z","status":"retrying"}"#),
            field(InvalidFormat, "status")
        );
        assert_eq!(
            codes(r#"{"status":7,"since":"2027-01-14T08:00:00Z","from":1}"#),
            vec![
                (InvalidType, "status".into()),
                (UnknownField, "from".into())
            ]
        );
        assert!(matches!(
            parse_replay(b"[]", NOW),
            Err(BodyError::InvalidJson(_))
        ));
    }
}
