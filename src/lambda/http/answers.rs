//! Answers: the one place where a failure becomes a status, a `code` and headers (read
//! it side by side with the contract's error table), and where results become bodies.

use super::router::RouteError;
use crate::app::accept::Accepted;
use crate::app::ports::PortError;
use crate::app::read::Found;
use crate::app::AppError;
use crate::contract::{
    bound, bound_dropped, bound_rejected, BodyError, ErrorCode, ErrorEnvelope, FieldError,
    Rejected, RequestError, MAX_ERRORS, MAX_ERROR_ANSWER_BYTES,
};
use crate::domain::auth::{CredentialError, Scope};
use crate::domain::webhook::MAX_WEBHOOKS;
use lambda_http::http::{header, HeaderValue, StatusCode};
use lambda_http::{Body, Response};
use serde_json::{json, Value};

const ACCEPTED_BODY: &str = r#"{"data":{"accepted":true}}"#;

/// Why the api refused a request: the edge's own checks (route, credentials, scope)
/// and what the use cases refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error("API key is unknown or revoked")]
    InvalidApiKey,
    #[error("API key lacks the scope")]
    InsufficientScope(Scope),
    #[error(transparent)]
    App(#[from] AppError),
}

impl From<RequestError> for ApiError {
    fn from(err: RequestError) -> Self {
        ApiError::App(err.into())
    }
}

impl From<PortError> for ApiError {
    fn from(err: PortError) -> Self {
        ApiError::App(err.into())
    }
}

/// What a request got, before it becomes a response.
pub enum Success {
    Accepted(Accepted),
    /// `200 {"data": …}`.
    Data(Value),
    /// `201 {"data": …}`.
    Created(Value),
    /// `202 {"data": …}`: work started that goes on after the answer.
    Started(Value),
    /// `200 {"data": […], "next_cursor": …}`.
    Page {
        data: Value,
        next_cursor: Option<String>,
    },
    /// An audience defined: `202`, its build under way.
    Defined {
        audience_id: String,
        replayed: bool,
    },
    Found(Found),
    /// Segment's answer: `200 {"success": true}`, and the messages left out, by index
    /// in the request with their `messageId`.
    Segment {
        dropped: Vec<Rejected>,
        message_ids: Vec<Option<String>>,
    },
}

/// What an error answer carries.
pub struct ErrorAnswer {
    pub status: StatusCode,
    pub errors: Vec<FieldError>,
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    /// Detail for the log only (a kind or an AWS error code); never sent to the client.
    pub fn log_detail(&self) -> Option<&str> {
        match self {
            ApiError::App(AppError::Port(
                PortError::Unavailable(code) | PortError::Refused(code),
            )) => Some(code),
            _ => None,
        }
    }

    pub fn answer(self) -> ErrorAnswer {
        use ErrorCode as C;
        let one = |code, field: &str, message: &str| vec![FieldError::new(code, field, message)];
        let bare = |code, message: &str| vec![FieldError::without_field(code, message)];
        let bearer = || vec![("www-authenticate", "Bearer".to_owned())];
        let (status, errors, headers) = match self {
            ApiError::Route(RouteError::NotFound) => (
                StatusCode::NOT_FOUND,
                bare(C::NotFound, "no such route"),
                vec![],
            ),
            ApiError::Route(RouteError::MethodNotAllowed { allow }) => (
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
            ApiError::App(AppError::RateLimited {
                rate,
                retry_after_secs,
            }) => (
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
            ApiError::App(AppError::Request(RequestError::UserNotFound)) => (
                StatusCode::NOT_FOUND,
                one(C::NotFound, "external_user_id", "no such user"),
                vec![],
            ),
            ApiError::App(AppError::Request(RequestError::InvalidAudienceId)) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                one(
                    C::InvalidFormat,
                    "audience_id",
                    crate::domain::audience::AUDIENCE_ID_RULE,
                ),
                vec![],
            ),
            ApiError::App(AppError::AudienceNotFound) => (
                StatusCode::NOT_FOUND,
                one(C::NotFound, "audience_id", "no such audience"),
                vec![],
            ),
            ApiError::App(AppError::TooManyAudiences) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                one(
                    C::TooMany,
                    "audience_id",
                    "the workspace has 100 audiences, the most it can have: delete one first",
                ),
                vec![],
            ),
            ApiError::App(AppError::Request(RequestError::InvalidWebhookId)) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                one(
                    C::InvalidFormat,
                    "webhook_id",
                    crate::domain::webhook::WEBHOOK_ID_RULE,
                ),
                vec![],
            ),
            ApiError::App(AppError::WebhookNotFound) => (
                StatusCode::NOT_FOUND,
                one(C::NotFound, "webhook_id", "no such webhook"),
                vec![],
            ),
            ApiError::App(AppError::WebhookDisabled) => (
                StatusCode::CONFLICT,
                one(
                    C::Conflict,
                    "webhook_id",
                    "the webhook is disabled: a PUT enables it, then replay",
                ),
                vec![],
            ),
            ApiError::App(AppError::TooManyWebhooks) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                one(
                    C::TooMany,
                    "webhook_id",
                    &format!(
                        "the workspace has {MAX_WEBHOOKS} webhooks, the most it can have: delete one first"
                    ),
                ),
                vec![],
            ),
            ApiError::App(AppError::ProfileNeedsPiiScope) => (
                StatusCode::FORBIDDEN,
                one(
                    C::InsufficientScope,
                    "include",
                    "include [\"profile\"] needs an API key with the scope users:read_pii",
                ),
                vec![],
            ),
            ApiError::App(AppError::Request(RequestError::PayloadTooLarge(message))) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                one(C::PayloadTooLarge, "body", message),
                vec![],
            ),
            ApiError::App(AppError::Request(RequestError::UnsupportedMediaType)) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                one(
                    C::UnsupportedMediaType,
                    "Content-Type",
                    "Content-Type must be application/json",
                ),
                vec![],
            ),
            ApiError::App(AppError::Request(RequestError::Body(BodyError::InvalidJson(
                message,
            )))) => (
                StatusCode::BAD_REQUEST,
                one(C::InvalidJson, "body", &message),
                vec![],
            ),
            ApiError::App(AppError::Request(RequestError::Body(BodyError::Invalid(errors)))) => {
                (StatusCode::UNPROCESSABLE_ENTITY, errors, vec![])
            }
            ApiError::App(AppError::Request(RequestError::Query(error))) => {
                (StatusCode::UNPROCESSABLE_ENTITY, vec![error], vec![])
            }
            ApiError::App(AppError::Request(RequestError::InvalidIdempotencyKey(error))) => {
                (StatusCode::BAD_REQUEST, vec![error], vec![])
            }
            ApiError::App(AppError::IdempotencyKeyReused) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                one(
                    C::IdempotencyKeyReused,
                    "Idempotency-Key",
                    "Idempotency-Key was used with a different body",
                ),
                vec![],
            ),
            ApiError::App(AppError::IdempotencyKeyInUse) => (
                StatusCode::CONFLICT,
                one(
                    C::IdempotencyKeyInUse,
                    "Idempotency-Key",
                    "a request with this Idempotency-Key is in progress",
                ),
                vec![("retry-after", "1".to_owned())],
            ),
            ApiError::App(AppError::Port(PortError::Unavailable(_))) => (
                StatusCode::SERVICE_UNAVAILABLE,
                bare(
                    C::Unavailable,
                    "temporarily unavailable; nothing was accepted, retry later",
                ),
                vec![("retry-after", "1".to_owned())],
            ),
            ApiError::App(AppError::Port(PortError::Refused(_))) => (
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

fn json_response(status: StatusCode, body: String, request_id: &str) -> Response<Body> {
    let mut response = Response::new(Body::Text(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", value);
    }
    response
}

pub fn success_response(success: Success, request_id: &str) -> Response<Body> {
    match success {
        Success::Accepted(Accepted::One { replayed }) => marked_replayed(
            json_response(StatusCode::ACCEPTED, ACCEPTED_BODY.to_owned(), request_id),
            replayed,
        ),
        Success::Accepted(Accepted::Batch {
            replayed,
            accepted,
            mut rejected,
        }) => {
            bound_rejected(&mut rejected);
            let (status, body) = if rejected.is_empty() {
                (
                    StatusCode::ACCEPTED,
                    json!({ "data": { "accepted": accepted } }),
                )
            } else {
                (
                    StatusCode::MULTI_STATUS,
                    json!({ "data": { "accepted": accepted, "rejected": rejected } }),
                )
            };
            marked_replayed(
                json_response(status, body.to_string(), request_id),
                replayed,
            )
        }
        Success::Data(data) => json_response(
            StatusCode::OK,
            json!({ "data": data }).to_string(),
            request_id,
        ),
        Success::Created(data) => json_response(
            StatusCode::CREATED,
            json!({ "data": data }).to_string(),
            request_id,
        ),
        Success::Started(data) => json_response(
            StatusCode::ACCEPTED,
            json!({ "data": data }).to_string(),
            request_id,
        ),
        Success::Page { data, next_cursor } => json_response(
            StatusCode::OK,
            json!({ "data": data, "next_cursor": next_cursor }).to_string(),
            request_id,
        ),
        Success::Defined {
            audience_id,
            replayed,
        } => marked_replayed(
            json_response(
                StatusCode::ACCEPTED,
                json!({"data": {"audience_id": audience_id, "status": "building"}}).to_string(),
                request_id,
            ),
            replayed,
        ),
        Success::Segment {
            mut dropped,
            message_ids,
        } => {
            let message_id = |index: usize| message_ids.get(index).cloned().flatten();
            let id_bytes = |entry: &Rejected| {
                serde_json::to_string(&message_id(entry.index)).map_or(0, |id| id.len())
            };
            let left_out = bound_dropped(&mut dropped, id_bytes);
            let dropped: Vec<Value> = dropped
                .into_iter()
                .map(|entry| {
                    let mut listed = json!({"index": entry.index, "messageId": message_id(entry.index), "errors": entry.errors});
                    if entry.errors_truncated {
                        listed["errors_truncated"] = json!(true);
                    }
                    listed
                })
                .collect();
            let mut body = json!({ "success": true });
            if !dropped.is_empty() {
                body["dropped"] = json!(dropped);
            }
            if left_out > 0 {
                body["dropped_truncated"] = json!(left_out);
            }
            json_response(StatusCode::OK, body.to_string(), request_id)
        }
        Success::Found(Found { users, truncated }) => {
            let body = if truncated {
                json!({ "data": users, "truncated": true })
            } else {
                json!({ "data": users })
            };
            json_response(StatusCode::OK, body.to_string(), request_id)
        }
    }
}

fn marked_replayed(mut response: Response<Body>, replayed: bool) -> Response<Body> {
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// An error answer; `first_on_top` repeats the first error's code and message at the
/// envelope's top (Segment's routes).
pub fn error_response(answer: ErrorAnswer, request_id: &str, first_on_top: bool) -> Response<Body> {
    let (errors, errors_truncated) = bound(answer.errors, MAX_ERRORS, MAX_ERROR_ANSWER_BYTES);
    let first = errors.first().filter(|_| first_on_top);
    let body = serde_json::to_string(&ErrorEnvelope {
        errors: &errors,
        errors_truncated,
        code: first.map(|error| error.code),
        message: first.map(|error| error.message.as_str()),
    })
    .unwrap_or_else(|_| {
        r#"{"errors":[{"code":"internal","message":"internal error"}]}"#.to_owned()
    });
    let mut response = json_response(answer.status, body, request_id);
    for (name, value) in answer.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}
