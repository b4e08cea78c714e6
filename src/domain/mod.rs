//! The business types and rules: API keys, the accepted write, the profile and its
//! order-proof merge, the read view, the change diff, the Idempotency-Key rule, webhooks'
//! address, signature and retry rules. Pure:
//! no AWS, no I/O, no clock.

pub mod audience;
pub mod auth;
pub mod budget;
pub mod change;
mod custom_traits;
pub mod idempotency;
pub mod membership;
mod message;
mod profile;
pub mod rate_limit;
mod view;
pub mod webhook;

pub use custom_traits::{RejectReason, RejectedTrait};
pub use message::{
    trait_of_path, trait_path, Changes, ProfileField, Stamp, UpsertMessage, MESSAGE_VERSION,
};
pub use profile::{next_version, OnceWrite, OnceWrites, UserProfile};
pub use view::{format_millis, read_fields, user_view};
