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
    /// The first error's code and message again, at the top: on Segment's routes only,
    /// where RudderStack's libraries read them there (and, not finding them, retry a
    /// refusal for minutes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
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
/// Segment's `dropped` lists at most this many messages.
pub const MAX_DROPPED: usize = 100;
/// Bytes an entry of a list of refused entries adds besides its errors:
/// `{"index":…,"errors":[],"errors_truncated":true},`.
const ENTRY_BYTES: usize = 64;
/// The message of an error shortened to fit an answer: its code and field still say
/// what is wrong.
const SHORTENED: &str = "refused: see code and field";

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

/// Bounds a 207's entries to an error answer's bytes (`MAX_ERROR_ANSWER_BYTES`): each
/// lists at most `MAX_ENTRY_ERRORS`, and fewer when the whole would not fit, down to
/// its first error — every refused entry is always listed with a reason, since a client
/// resends by index. Should even the first errors not fit (a thousand entries naming
/// long paths), their messages are shortened: the paths come from a body of at most
/// 512 KiB, so codes and fields alone always fit.
pub fn bound_rejected(rejected: &mut [Rejected]) {
    let first = |r: &Rejected| ENTRY_BYTES + r.errors.first().map_or(0, answer_bytes);
    let mut reserved: usize = rejected.iter().map(first).sum();
    if reserved > MAX_ERROR_ANSWER_BYTES {
        for error in rejected.iter_mut().filter_map(|r| r.errors.first_mut()) {
            error.message = SHORTENED.into();
        }
        reserved = rejected.iter().map(first).sum();
    }
    let mut room = MAX_ERROR_ANSWER_BYTES.saturating_sub(reserved);
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

/// Bounds Segment's `dropped` (contract: the first 100, then `dropped_truncated`): at
/// most `MAX_DROPPED` entries, each with at most `MAX_ENTRY_ERRORS` errors, listed
/// while the answer stays under `MAX_ERROR_ANSWER_BYTES`; `extra` is what an entry
/// adds besides its errors (its `messageId`). Returns how many were left out.
pub fn bound_dropped(dropped: &mut Vec<Rejected>, extra: impl Fn(&Rejected) -> usize) -> usize {
    let mut room = MAX_ERROR_ANSWER_BYTES;
    let mut listed = 0;
    for entry in dropped.iter_mut().take(MAX_DROPPED) {
        let base = ENTRY_BYTES + extra(entry);
        let Some(budget) = room.checked_sub(base) else {
            break;
        };
        let (errors, truncated) =
            bound(std::mem::take(&mut entry.errors), MAX_ENTRY_ERRORS, budget);
        if errors.is_empty() {
            break;
        }
        room -= base + errors.iter().map(answer_bytes).sum::<usize>();
        entry.errors = errors;
        entry.errors_truncated |= truncated;
        listed += 1;
    }
    let left_out = dropped.len() - listed;
    dropped.truncate(listed);
    left_out
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
            code: None,
            message: None,
        };
        let size = serde_json::to_string(&envelope).unwrap().len();
        assert!(
            truncated && size < 1024 * 1024,
            "{} errors, {size} bytes",
            kept.len()
        );
    }

    fn answer_size(entries: &[Rejected]) -> usize {
        serde_json::to_string(&serde_json::json!({"data": {"accepted": 0, "rejected": entries}}))
            .unwrap()
            .len()
    }

    #[test]
    fn a_batch_lists_every_refused_entry_in_an_answer_under_a_mebibyte() {
        // The worst batch: 1,000 refused entries, each with 20 errors and more.
        let mut worst: Vec<Rejected> = (0..1_000)
            .map(|i| Rejected::new(i, errors(30, 40)))
            .collect();
        bound_rejected(&mut worst);
        assert!(worst
            .iter()
            .all(|r| !r.errors.is_empty() && r.errors.len() <= 20));
        assert!(worst.iter().all(|r| r.errors_truncated));
        assert!(
            answer_size(&worst) < 1024 * 1024,
            "{} bytes",
            answer_size(&worst)
        );
        // Long paths in every entry (a 512 KiB body's worth): first errors shortened.
        let mut long: Vec<Rejected> = (0..1_000)
            .map(|i| Rejected::new(i, errors(3, 500)))
            .collect();
        bound_rejected(&mut long);
        assert_eq!(long.len(), 1_000);
        assert!(long
            .iter()
            .all(|r| r.errors[0].field.is_some() && r.errors[0].message == SHORTENED));
        assert!(
            answer_size(&long) < 1024 * 1024,
            "{} bytes",
            answer_size(&long)
        );
        let mut few = vec![Rejected::new(3, errors(2, 1))];
        bound_rejected(&mut few);
        assert_eq!((few[0].errors.len(), few[0].errors_truncated), (2, false));
        assert!(
            few[0].errors[0].message.contains("DynamoDB"),
            "short answers keep their messages"
        );
    }

    #[test]
    fn segments_dropped_lists_the_first_hundred_in_bounded_bytes_and_counts_the_rest() {
        let mut dropped: Vec<Rejected> = (0..250_000)
            .map(|i| Rejected::new(i, errors(1, 1)))
            .collect();
        assert_eq!(bound_dropped(&mut dropped, |_| 40), 249_900);
        assert_eq!(dropped.len(), 100);
        assert_eq!(dropped[99].index, 99);
        // Entries of 32 KB paths: the bytes end the list first.
        let mut big: Vec<Rejected> = (0..100)
            .map(|i| Rejected::new(i, errors(30, 30_000)))
            .collect();
        let left_out = bound_dropped(&mut big, |_| 40);
        assert!(left_out > 0 && left_out + big.len() == 100);
        assert!(
            answer_size(&big) < 1024 * 1024,
            "{} bytes",
            answer_size(&big)
        );
        let mut none = Vec::new();
        assert_eq!(bound_dropped(&mut none, |_| 40), 0);
    }
}
