//! What the use cases need from the world, as small traits. The AWS adapters implement
//! them over DynamoDB, SQS and EventBridge; `app::fakes` in memory, for the use-case
//! tests.

mod audiences;
mod webhooks;

pub use audiences::*;
pub use webhooks::*;

use crate::domain::auth::ApiKeyRecord;
use crate::domain::change::ChangeEvent;
use crate::domain::idempotency::Claim;
use crate::domain::rate_limit::Bounds;
use crate::domain::{Stamp, UpsertMessage, UserProfile};
use std::collections::HashMap;
use std::future::Future;

/// A call to a port that did not do its job. Only kinds and codes: an AWS message can
/// quote the data it refused, and this text reaches the logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Worth retrying: throttled, unreachable, timed out, a 5xx.
    #[error("unavailable ({0})")]
    Unavailable(String),
    /// Refused as sent (a validation error, a bug): retrying the same call fails again.
    #[error("refused ({0})")]
    Refused(String),
}

impl PortError {
    /// The kind or code it names.
    pub fn into_code(self) -> String {
        match self {
            PortError::Unavailable(code) | PortError::Refused(code) => code,
        }
    }
}

/// A user as stored, with the optimistic-locking version of its item.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredUser {
    pub external_user_id: String,
    pub profile: UserProfile,
    /// 0 for a user that has no item yet.
    pub version: u64,
    /// Created before its workspace's users were listed in shards: the store keeps it
    /// where it is listed (moving it would write that workspace's one key once per
    /// user, the very load the shards take off it). `false` for a new user.
    pub listed_unsharded: bool,
}

impl StoredUser {
    /// A user nothing was written for yet.
    pub fn new(external_user_id: &str) -> Self {
        Self {
            external_user_id: external_user_id.to_owned(),
            profile: UserProfile::default(),
            version: 0,
            listed_unsharded: false,
        }
    }
}

/// One side of a users-table write: the workspace and the user its item holds, or
/// nothing (no item).
pub type UserImage = Option<(String, StoredUser)>;

/// What a conditional write of a user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    /// Another writer changed the item since it was read.
    Conflict,
}

/// The users an email lookup found, by external_user_id, and whether there were more.
#[derive(Debug, Default)]
pub struct EmailMatches {
    pub users: Vec<StoredUser>,
    pub truncated: bool,
}

/// (workspace, external_user_id): a user's identity across workspaces.
pub type UserKey = (String, String);

/// The users table.
pub trait Users {
    /// A strongly consistent read of one user.
    fn get(
        &self,
        workspace_id: &str,
        external_user_id: &str,
    ) -> impl Future<Output = Result<Option<StoredUser>, PortError>> + Send;

    /// Strongly consistent reads of many users; users without an item are absent.
    fn get_many(
        &self,
        keys: &[(&str, &str)],
    ) -> impl Future<Output = Result<HashMap<UserKey, StoredUser>, PortError>> + Send;

    /// Writes the user if its item is still at `user.version` (0: no item yet).
    fn put(
        &self,
        workspace_id: &str,
        user: &StoredUser,
    ) -> impl Future<Output = Result<WriteOutcome, PortError>> + Send;

    /// Users of a workspace whose email matches, ignoring case: the first
    /// `MAX_EMAIL_MATCHES` by external_user_id.
    fn find_by_email(
        &self,
        workspace_id: &str,
        email: &str,
    ) -> impl Future<Output = Result<EmailMatches, PortError>> + Send;
}

/// Idempotency-Key records: the rule is `domain::idempotency`, the store makes its
/// claims atomic.
pub trait IdempotencyKeys {
    /// Records the key for this request if it is free (absent or expired), or judges
    /// the record found; an abandoned record's lock is taken over atomically.
    fn claim(
        &self,
        workspace_id: &str,
        key: &str,
        body_hash: &str,
        stamp: &Stamp,
    ) -> impl Future<Output = Result<Claim, PortError>> + Send;

    /// Records that the request `request_id` enqueued its write, all but the `unsent`
    /// batch entries, which a replay reports again.
    fn complete(
        &self,
        workspace_id: &str,
        key: &str,
        request_id: &str,
        unsent: &[usize],
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Gives back a lock taken over from an abandoned request (held until
    /// `lock_until`) without enqueueing: the record is abandoned again, keeping its
    /// original stamp, so the client's retry takes it over at once.
    fn reopen(
        &self,
        workspace_id: &str,
        key: &str,
        lock_until: i64,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Forgets a key this request claimed, so the client's retry is processed anew.
    fn release(
        &self,
        workspace_id: &str,
        key: &str,
        request_id: &str,
    ) -> impl Future<Output = Result<(), PortError>> + Send;
}

/// Messages that could not be enqueued: their indices, and why.
#[derive(Debug, Default, PartialEq)]
pub struct Unsent {
    pub messages: Vec<usize>,
    pub error: Option<PortError>,
}

/// The upsert queue. Once a call returns, what it did not report unsent is durably
/// enqueued: only then may the api answer 202.
pub trait UpsertQueue {
    fn send(&self, message: &UpsertMessage) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Enqueues many messages in as few calls as the queue allows; returns the ones
    /// it did not store.
    fn send_all(&self, messages: &[UpsertMessage]) -> impl Future<Output = Unsent> + Send;
}

/// API keys by the SHA-256 of the key.
pub trait ApiKeys {
    fn get(
        &self,
        hash: &str,
    ) -> impl Future<Output = Result<Option<ApiKeyRecord>, PortError>> + Send;
}

/// A workspace's shared rate counter (or one shard of it): tokens handed out in
/// `window` (epoch second) and in the window before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub window: i64,
    pub used: u64,
    pub previous: u64,
}

/// The shared rate counters (one conditional write a lease in DynamoDB).
pub trait Counters {
    /// Adds `tokens` to `window` of the counter `key` if they fit `bounds` (the second
    /// alone, and with the window before) and, for a `quiet` lease, the second's quiet
    /// cap (`Bounds::quiet_cap` of the second before's count), opening `window` if this
    /// is its first lease, and returns the counter as it left it; otherwise changes
    /// nothing and returns the counter as found. A window that the counter has already
    /// moved past takes nothing.
    fn take(
        &self,
        key: &str,
        window: i64,
        tokens: u64,
        bounds: Bounds,
        quiet: bool,
    ) -> impl Future<Output = Result<Result<Counter, Option<Counter>>, PortError>> + Send;
}

/// The change-event bus. Its calls take a bounded number of events and bytes.
pub trait EventBus {
    /// Events per call.
    const MAX_ENTRIES_PER_CALL: usize;
    /// Bytes per call, as the bus counts them ([`EventBus::entry_size`]).
    const MAX_BYTES_PER_CALL: usize;

    fn entry_size(event: &ChangeEvent) -> usize;

    /// Puts one call's worth of events; returns the indices the bus refused.
    fn put(
        &self,
        events: &[&ChangeEvent],
    ) -> impl Future<Output = Result<Vec<usize>, PortError>> + Send;
}
