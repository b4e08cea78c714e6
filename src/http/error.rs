//! The one place where a failure becomes a status, a `code` and headers. Read it side
//! by side with the contract's error table.

use crate::auth::{CredentialError, Scope};
use crate::aws::AwsError;
use crate::contract::{BodyError, ErrorCode, FieldError};
use lambda_http::http::StatusCode;

#[derive(Debug)]
pub enum ApiError {
    RouteNotFound,
    UserNotFound,
    MethodNotAllowed {
        allow: &'static str,
    },
    Credentials(CredentialError),
    InvalidApiKey,
    InsufficientScope(Scope),
    RateLimited {
        rate: u32,
        retry_after_secs: u64,
    },
    /// The body is over the route's limit, which the message names.
    PayloadTooLarge(&'static str),
    UnsupportedMediaType,
    Body(BodyError),
    Query(FieldError),
    InvalidIdempotencyKey(FieldError),
    IdempotencyKeyReused,
    IdempotencyKeyInUse,
    Unavailable(String),
    Internal(String),
}

impl From<AwsError> for ApiError {
    fn from(err: AwsError) -> Self {
        match err {
            AwsError::Unavailable(detail) => ApiError::Unavailable(detail),
            AwsError::Internal(detail) => ApiError::Internal(detail),
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(err: BodyError) -> Self {
        ApiError::Body(err)
    }
}

/// What an error answer carries.
pub struct ErrorAnswer {
    pub status: StatusCode,
    pub errors: Vec<FieldError>,
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    /// Detail for the log only; never sent to the client.
    pub fn log_detail(&self) -> Option<&str> {
        match self {
            ApiError::Unavailable(detail) | ApiError::Internal(detail) => Some(detail),
            _ => None,
        }
    }

    pub fn answer(self) -> ErrorAnswer {
        use ErrorCode as C;
        let one = |code, field: &str, message: &str| vec![FieldError::new(code, field, message)];
        let bare = |code, message: &str| vec![FieldError::without_field(code, message)];
        let bearer = || vec![("www-authenticate", "Bearer".to_owned())];
        let (status, errors, headers) = match self {
            ApiError::RouteNotFound => (
                StatusCode::NOT_FOUND,
                bare(C::NotFound, "no such route"),
                vec![],
            ),
            ApiError::UserNotFound => (
                StatusCode::NOT_FOUND,
                one(C::NotFound, "external_user_id", "no such user"),
                vec![],
            ),
            ApiError::MethodNotAllowed { allow } => (
                StatusCode::METHOD_NOT_ALLOWED,
                bare(C::MethodNotAllowed, "method not allowed on this route"),
                vec![("allow", allow.to_owned())],
            ),
            ApiError::Credentials(CredentialError::Missing) => (
                StatusCode::UNAUTHORIZED,
                one(
                    C::MissingAuthorization,
                    "Authorization",
                    "Authorization header is missing",
                ),
                bearer(),
            ),
            ApiError::Credentials(CredentialError::Malformed) => (
                StatusCode::UNAUTHORIZED,
                one(
                    C::MalformedAuthorization,
                    "Authorization",
                    "expected `Bearer sk_live_…` or `Bearer sk_test_…`",
                ),
                bearer(),
            ),
            ApiError::InvalidApiKey => (
                StatusCode::UNAUTHORIZED,
                one(
                    C::InvalidApiKey,
                    "Authorization",
                    "API key is unknown or revoked",
                ),
                bearer(),
            ),
            ApiError::InsufficientScope(scope) => (
                StatusCode::FORBIDDEN,
                one(
                    C::InsufficientScope,
                    "Authorization",
                    &format!("API key lacks the scope {scope}"),
                ),
                vec![],
            ),
            ApiError::RateLimited {
                rate,
                retry_after_secs,
            } => (
                StatusCode::TOO_MANY_REQUESTS,
                bare(C::RateLimited, "workspace is over its request rate"),
                vec![
                    ("retry-after", retry_after_secs.to_string()),
                    ("ratelimit-policy", format!("\"workspace\";q={rate};w=1")),
                    (
                        "ratelimit",
                        format!("\"workspace\";r=0;t={retry_after_secs}"),
                    ),
                ],
            ),
            ApiError::PayloadTooLarge(message) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                one(C::PayloadTooLarge, "body", message),
                vec![],
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                one(
                    C::UnsupportedMediaType,
                    "Content-Type",
                    "Content-Type must be application/json",
                ),
                vec![],
            ),
            ApiError::Body(BodyError::InvalidJson(message)) => (
                StatusCode::BAD_REQUEST,
                one(C::InvalidJson, "body", &message),
                vec![],
            ),
            ApiError::Body(BodyError::Invalid(errors)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, errors, vec![])
            }
            ApiError::Query(error) => (StatusCode::UNPROCESSABLE_ENTITY, vec![error], vec![]),
            ApiError::InvalidIdempotencyKey(error) => {
                (StatusCode::BAD_REQUEST, vec![error], vec![])
            }
            ApiError::IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                one(
                    C::IdempotencyKeyReused,
                    "Idempotency-Key",
                    "Idempotency-Key was used with a different body",
                ),
                vec![],
            ),
            ApiError::IdempotencyKeyInUse => (
                StatusCode::CONFLICT,
                one(
                    C::IdempotencyKeyInUse,
                    "Idempotency-Key",
                    "a request with this Idempotency-Key is in progress",
                ),
                vec![("retry-after", "1".to_owned())],
            ),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                bare(
                    C::Unavailable,
                    "temporarily unavailable; nothing was accepted, retry later",
                ),
                vec![("retry-after", "1".to_owned())],
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                bare(C::Internal, "internal error"),
                vec![],
            ),
        };
        ErrorAnswer {
            status,
            errors,
            headers,
        }
    }
}
