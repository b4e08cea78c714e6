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

    pub fn without_field(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            field: None,
            message: message.into(),
        }
    }
}

/// `{"errors":[…]}`: the body of every non-2xx answer.
#[derive(Debug, Serialize)]
pub struct ErrorEnvelope<'a> {
    pub errors: &'a [FieldError],
}
