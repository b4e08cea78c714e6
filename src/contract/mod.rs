//! The API contract (`docs/api.md`) as pure functions: request
//! validation, canonical body hashing and the error envelope. No AWS in here.

mod audience;
mod batch;
mod email;
mod error;
mod idempotency;
mod json;
mod numbers;
mod replay;
mod request;
mod rule;
mod segment;
mod segment_mapping;
mod traits;
mod validate;
mod webhook;

pub use audience::{
    parse_audience, AudienceDefinition, Page, Paged, MAX_AUDIENCES_PAGE, MAX_MEMBERS_PAGE,
};
pub use batch::{parse_batch, ValidBatch, MAX_BATCH_BODY_BYTES, MAX_BATCH_USERS};
pub use email::{normalize_email, parse_email};
pub use error::{
    bound, bound_dropped, bound_rejected, ErrorCode, ErrorEnvelope, FieldError, Rejected,
    MAX_ERRORS, MAX_ERROR_ANSWER_BYTES,
};
pub use idempotency::{body_hash, erase_hash, validate_idempotency_key};
pub use replay::{parse_replay, ReplayRequest};
pub use request::{
    checked_body, decoded_body, decoded_within, email_query, idempotency_key, BodyLimit,
    RequestError, BATCH_BODY, SEGMENT_BATCH_BODY, SEGMENT_IDENTIFY_BODY, UPSERT_BODY,
};
pub use rule::{
    parse_rule, MAX_CONDITIONS, MAX_DEPTH, MAX_DURATION_MS, MAX_LIST_VALUES, MAX_RULE_STRING_CHARS,
};
pub use segment::{
    body_write_key, parse_segment_batch, parse_segment_identify, unauthenticated_body,
    SegmentMessages, MAX_SEGMENT_BATCH_BYTES, MAX_SEGMENT_MESSAGE_BYTES,
};
pub use validate::{is_storable_user_id, parse_upsert, BodyError, ValidUpsert, MAX_BODY_BYTES};
pub use webhook::{
    delivery_body, delivery_order, disabled_event, parse_webhook, webhook_event, with_profile,
    with_sequence, WebhookDefinition, WebhookEvent, ENDPOINT_LANE, MAX_URL_BYTES,
    MAX_WEBHOOK_AUDIENCES,
};

/// An email lookup answers at most this many users (contract, "Reads").
pub const MAX_EMAIL_MATCHES: usize = 100;
