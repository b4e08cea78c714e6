use serde::Serialize;

/// Every `code` the contract defines, as the wire spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    InvalidIdempotencyKey,
    MissingAuthorization,
    MalformedAuthorization,
    InvalidApiKey,
    InsufficientScope,
    NotFound,
    MethodNotAllowed,
    IdempotencyKeyInUse,
    PayloadTooLarge,
    UnsupportedMediaType,
    IdempotencyKeyReused,
    RateLimited,
    Internal,
    Unavailable,
    // Schema validation (422).
    Required,
    InvalidType,
    Empty,
    TooLong,
    InvalidFormat,
    InvalidEmail,
    InvalidDatetime,
    TooMany,
    TooDeep,
    InvalidNumber,
    InvalidTraitName,
    UnknownField,
    Conflict,
    DuplicateField,
    OutOfRange,
    /// Segment's protocol: a message type other than identify.
    UnsupportedType,
}

/// One entry of the error envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub code: ErrorCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl FieldError {
    pub fn new(code: ErrorCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// A member the body's object does not define.
    pub fn unknown_member(name: &str) -> Self {
        Self::new(
            ErrorCode::UnknownField,
            name,
            format!("unknown member `{name}`"),
        )
    }

    /// The members of `members` outside `known`, each an unknown member.
    pub fn unknown_members<'a>(
        members: impl IntoIterator<Item = &'a String>,
        known: &[&str],
    ) -> Vec<Self> {
        members
            .into_iter()
            .filter(|name| !known.contains(&name.as_str()))
            .map(|name| Self::unknown_member(name))
            .collect()
    }

    pub fn without_field(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            field: None,
            message: message.into(),
        }
    }
}

/// `{"errors":[…]}`: the body of every non-2xx answer, `errors_truncated` when the list
/// was cut short (see [`bound`]).
#[derive(Debug, Serialize)]
pub struct ErrorEnvelope<'a> {
    pub errors: &'a [FieldError],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub errors_truncated: bool,
}

/// One refused upsert of a batch, as the 207 lists it.
#[derive(Debug, PartialEq, Serialize)]
pub struct Rejected {
    pub index: usize,
    pub errors: Vec<FieldError>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub errors_truncated: bool,
}

impl Rejected {
    pub fn new(index: usize, errors: Vec<FieldError>) -> Self {
        Self {
            index,
            errors,
            errors_truncated: false,
        }
    }
}

/// Contract, "Errors": one upsert's answer lists at most this many errors…
pub const MAX_ERRORS: usize = 100;
/// …a batch answer at most this many per refused entry…
pub const MAX_ENTRY_ERRORS: usize = 20;
/// …and an error answer stays under 1 MiB (a 32 KiB body can name 32 KiB paths).
pub const MAX_ERROR_ANSWER_BYTES: usize = 1024 * 1024 - 16 * 1024;
/// A 207 stays well under Lambda's 6 MB answer, which carries it as a JSON string:
/// escaping at most doubles it.
pub const MAX_BATCH_ANSWER_BYTES: usize = 5 * 1024 * 1024 / 2;

/// Bytes an error adds to an answer: its JSON and a comma.
fn answer_bytes(error: &FieldError) -> usize {
    serde_json::to_string(error).map_or(0, |json| json.len()) + 1
}

/// The first errors of `errors`, at most `most` of them and `bytes` in all; `true` when
/// some were left out.
pub fn bound(mut errors: Vec<FieldError>, most: usize, bytes: usize) -> (Vec<FieldError>, bool) {
    let mut used = 0;
    let fits = errors
        .iter()
        .take(most)
        .take_while(|error| {
            used += answer_bytes(error);
            used <= bytes
        })
        .count();
    let truncated = fits < errors.len();
    errors.truncate(fits);
    (errors, truncated)
}

/// Bounds a 207's entries: each lists at most `MAX_ENTRY_ERRORS`, and if the whole
/// would pass `MAX_BATCH_ANSWER_BYTES`, entries keep fewer, down to their first error
/// (every refused entry is always listed, with a reason: a client resends by index).
pub fn bound_rejected(rejected: &mut [Rejected]) {
    let reserved: usize = rejected
        .iter()
        .map(|r| r.errors.first().map_or(0, answer_bytes))
        .sum();
    let mut room = MAX_BATCH_ANSWER_BYTES.saturating_sub(reserved);
    for entry in rejected.iter_mut() {
        let mut kept = entry.errors.len().min(1);
        for error in entry.errors.iter().take(MAX_ENTRY_ERRORS).skip(1) {
            let cost = answer_bytes(error);
            if cost > room {
                break;
            }
            room -= cost;
            kept += 1;
        }
        entry.errors_truncated |= kept < entry.errors.len();
        entry.errors.truncate(kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(count: usize, path_bytes: usize) -> Vec<FieldError> {
        (0..count)
            .map(|i| {
                let field = format!("traits.{i}{}", "x".repeat(path_bytes));
                let message = format!("{field} is not a number DynamoDB can store");
                FieldError::new(ErrorCode::InvalidNumber, field, message)
            })
            .collect()
    }

    #[test]
    fn an_answer_lists_at_most_a_hundred_errors_and_under_a_mebibyte() {
        let (kept, truncated) = bound(errors(256, 1), MAX_ERRORS, MAX_ERROR_ANSWER_BYTES);
        assert_eq!((kept.len(), truncated), (100, true));
        let (kept, truncated) = bound(errors(100, 1), MAX_ERRORS, MAX_ERROR_ANSWER_BYTES);
        assert_eq!((kept.len(), truncated), (100, false));
        // Paths of 30 KB: the bytes end the list first.
        let (kept, truncated) = bound(errors(100, 30_000), MAX_ERRORS, MAX_ERROR_ANSWER_BYTES);
        let envelope = ErrorEnvelope {
            errors: &kept,
            errors_truncated: truncated,
        };
        let size = serde_json::to_string(&envelope).unwrap().len();
        assert!(
            truncated && size < 1024 * 1024,
            "{} errors, {size} bytes",
            kept.len()
        );
    }

    #[test]
    fn a_batch_lists_every_refused_entry_with_at_most_twenty_errors_in_bounded_bytes() {
        let mut small: Vec<Rejected> = (0..1_000)
            .map(|i| Rejected::new(i, errors(30, 1)))
            .collect();
        bound_rejected(&mut small);
        assert!(small
            .iter()
            .all(|r| r.errors.len() == 20 && r.errors_truncated));
        // As if 16 entries each named 30 KB paths 30 times: every entry is still there.
        let mut big: Vec<Rejected> = (0..16)
            .map(|i| Rejected::new(i, errors(30, 30_000)))
            .collect();
        bound_rejected(&mut big);
        let size = serde_json::to_string(&big).unwrap().len();
        assert!(big
            .iter()
            .all(|r| !r.errors.is_empty() && r.errors_truncated));
        assert!(size <= MAX_BATCH_ANSWER_BYTES + 16 * 70_000, "{size} bytes");
        let mut few = vec![Rejected::new(3, errors(2, 1))];
        bound_rejected(&mut few);
        assert_eq!((few[0].errors.len(), few[0].errors_truncated), (2, false));
    }
}
