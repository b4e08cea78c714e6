//! The API contract (`docs/api.md`) as pure functions: request
//! validation, canonical body hashing and the error envelope. No AWS in here.

mod batch;
mod email;
mod error;
mod numbers;
mod validate;
mod view;

pub use batch::{parse_batch, ValidBatch, MAX_BATCH_BODY_BYTES, MAX_BATCH_USERS};
pub use email::{normalize_email, parse_email};
pub use error::{ErrorCode, ErrorEnvelope, FieldError};
pub use validate::{
    body_hash, erase_hash, is_storable_user_id, parse_upsert, validate_idempotency_key, BodyError,
    ValidUpsert, MAX_BODY_BYTES,
};
pub use view::{format_millis, user_view};
