//! The accepted upsert as it travels through SQS, and the per-field merge that makes
//! the stored profile independent of delivery order and duplicates. Pure, no AWS.

pub mod budget;
mod merge;
mod message;

pub use merge::{RejectReason, RejectedTrait, UserProfile};
pub use message::{
    pack, trait_of_path, trait_path, Changes, MessageError, Packed, ProfileField, Stamp,
    UpsertMessage, MESSAGE_VERSION,
};
