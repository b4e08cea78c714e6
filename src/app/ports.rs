//! What the use cases need from the world, as small traits. The AWS adapters implement
//! them over DynamoDB, SQS and EventBridge; `app::fakes` in memory, for the use-case
//! tests.

use crate::domain::audience::MembershipEvent;
use crate::domain::auth::ApiKeyRecord;
use crate::domain::change::ChangeEvent;
use crate::domain::idempotency::Claim;
pub use crate::domain::membership::{Audience, Definitions, Standing, UserAudiences};
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
}

impl StoredUser {
    /// A user nothing was written for yet.
    pub fn new(external_user_id: &str) -> Self {
        Self {
            external_user_id: external_user_id.to_owned(),
            profile: UserProfile::default(),
            version: 0,
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

/// The shared rate counters (conditional writes in DynamoDB).
pub trait Counters {
    /// Adds `tokens` to the counter `key` if it is at `window` and still has room for
    /// them within `bounds`; otherwise changes nothing and returns the counter as found.
    fn take(
        &self,
        key: &str,
        window: i64,
        tokens: u64,
        bounds: Bounds,
    ) -> impl Future<Output = Result<Result<(), Option<Counter>>, PortError>> + Send;

    /// Moves the counter from `found` (as read) to `window` with `tokens` taken;
    /// `false` if another instance moved it first.
    fn start_window(
        &self,
        key: &str,
        found: Option<Counter>,
        window: i64,
        tokens: u64,
    ) -> impl Future<Output = Result<bool, PortError>> + Send;
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

/// Audience definitions, by workspace. Reads are strongly consistent.
pub trait Audiences {
    fn list(
        &self,
        workspace_id: &str,
    ) -> impl Future<Output = Result<Definitions, PortError>> + Send;

    fn get(
        &self,
        workspace_id: &str,
        audience_id: &str,
    ) -> impl Future<Output = Result<Option<Audience>, PortError>> + Send;

    /// The definitions revision alone: a cheap check that a list read is still current.
    fn revision(&self, workspace_id: &str) -> impl Future<Output = Result<u64, PortError>> + Send;

    /// Writes `audience` (created or replaced; its `rule_rev` is the new revision of
    /// the definitions) if the definitions are still at `revision`; `false` if another
    /// define or delete came first.
    fn define(
        &self,
        workspace_id: &str,
        audience: &Audience,
        revision: u64,
    ) -> impl Future<Output = Result<bool, PortError>> + Send;

    /// Deletes an audience, moving the definitions to `revision + 1`, if they are still
    /// at `revision`; `false` if another define or delete came first.
    fn delete(
        &self,
        workspace_id: &str,
        audience_id: &str,
        revision: u64,
    ) -> impl Future<Output = Result<bool, PortError>> + Send;

    /// Records that the build of `rule_rev` looked at one more page.
    fn record_build(
        &self,
        workspace_id: &str,
        audience_id: &str,
        rule_rev: u64,
        step: &BuildStep,
    ) -> impl Future<Output = Result<BuildRecord, PortError>> + Send;
}

/// One page of a build: from where to where, and how many users it looked at.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildStep {
    pub from: Option<String>,
    /// `None`: the last page.
    pub to: Option<String>,
    pub scanned: u64,
}

/// What recording a build step found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildRecord {
    /// Recorded: the build is at the step's `to`.
    Recorded,
    /// The build had already moved past `from` (a redelivered task): it is at the
    /// cursor given (`None`: done).
    AlreadyAt(Option<String>),
    /// The audience is gone or at another revision.
    Replaced,
}

/// Memberships: each user's state (one item, written whole and conditionally) and each
/// audience's member list (entries written after, from the state's pending decisions).
pub trait Memberships {
    /// The partitions users due are spread over, by user: a time task each.
    const DUE_SHARDS: u32;

    /// A consistent read of a user's memberships (default when none).
    fn standing(
        &self,
        workspace_id: &str,
        external_user_id: &str,
    ) -> impl Future<Output = Result<UserAudiences, PortError>> + Send;

    /// Writes `next` if nothing else was committed for the user since its `rev - 1`
    /// was read and no decision at a later user version was made; `false` otherwise.
    /// While it has pending decisions it is due at once (a tick carries them out if
    /// this evaluation cannot).
    fn commit(
        &self,
        workspace_id: &str,
        external_user_id: &str,
        next: &UserAudiences,
    ) -> impl Future<Output = Result<bool, PortError>> + Send;

    /// Writes the member-list entries of the decisions of commit `rev` (an entry, or
    /// its removal), each only over an entry an older commit wrote, and moves the
    /// audience's member count with each entry that changes sides: carrying the same
    /// decisions out twice, or late, changes nothing.
    fn write_entries(
        &self,
        workspace_id: &str,
        external_user_id: &str,
        rev: u64,
        decisions: &[MembershipEvent],
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Forgets the pending decisions of commit `rev` once they are carried out.
    fn clear_pending(
        &self,
        workspace_id: &str,
        external_user_id: &str,
        rev: u64,
        next_due: Option<i64>,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Members of the audience (of the one that started at its `since_rev`), in its
    /// list's order after the member `after`: `(id, entered_at)`, and whether more
    /// follow. A member present for the whole walk is listed once.
    fn members(
        &self,
        workspace_id: &str,
        audience: &Audience,
        limit: usize,
        after: Option<&str>,
    ) -> impl Future<Output = Result<(Vec<(String, i64)>, bool), PortError>> + Send;

    /// The member count kept with the member list (for an audience that is
    /// [`Audience::counted`]): a few small reads, whatever the count.
    fn count(
        &self,
        workspace_id: &str,
        audience: (&str, u64),
    ) -> impl Future<Output = Result<u64, PortError>> + Send;

    /// The member count by reading the whole member list: for an audience that started
    /// before counts were kept.
    fn count_listed(
        &self,
        workspace_id: &str,
        audience: (&str, u64),
    ) -> impl Future<Output = Result<u64, PortError>> + Send;

    /// Users with something to do by `until_ms` (a rule's edge, or decisions to carry
    /// out) in partition `shard` of [`Memberships::DUE_SHARDS`], the earliest first,
    /// after `after` (the last of the page before): `((workspace, user), due_at)`, and
    /// whether more follow.
    fn due(
        &self,
        shard: u32,
        until_ms: i64,
        after: Option<&(UserKey, i64)>,
        limit: usize,
    ) -> impl Future<Output = Result<(Vec<(UserKey, i64)>, bool), PortError>> + Send;

    /// Removes up to `limit` entries of an audience deleted at revision `rule_rev`
    /// (list entries, and the users' standings, both only from that revision or
    /// before), after `after`; returns where to go on from, `None` when done.
    fn drop_members(
        &self,
        workspace_id: &str,
        audience_id: &str,
        rule_rev: u64,
        sharded: bool,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Option<String>, PortError>> + Send;
}

/// A build task: the next page of a workspace's users for one revision of an
/// audience, or the next page of a deleted audience's members to drop.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildTask {
    pub workspace_id: String,
    pub audience_id: String,
    pub rule_rev: u64,
    /// Where the previous page ended; `None` for the first.
    pub cursor: Option<String>,
    /// Drop the members instead (the audience was deleted at `rule_rev`).
    pub drop: bool,
    /// The dropped audience's member list is sharded ([`Audience::sharded`]).
    pub sharded: bool,
}

pub trait BuildQueue {
    fn send(&self, task: &BuildTask) -> impl Future<Output = Result<(), PortError>> + Send;
}

/// Records of the users table's stream that a reader never settled, as a failure
/// destination names them: one shard's records from `first` to `last` (sequence
/// numbers, inclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRange {
    pub stream_arn: String,
    pub shard_id: String,
    pub first: String,
    pub last: String,
}

/// The users table's stream, read again by position (it keeps records 24 hours).
pub trait StreamReplay {
    /// The users the records of `range` wrote, each once.
    fn users_in(
        &self,
        range: &StreamRange,
    ) -> impl Future<Output = Result<Vec<UserKey>, PortError>> + Send;
}

/// One partition of the users due, to settle by `until_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeTask {
    pub shard: u32,
    pub until_ms: i64,
}

/// The time tasks' queue: each task is settled by an invocation of its own.
pub trait TimeTasks {
    fn send_time(&self, tasks: &[TimeTask]) -> impl Future<Output = Result<(), PortError>> + Send;
}

/// Users whose evaluation failed, parked by id (not by a stream position) to be settled
/// again apart from the batch that met them; those that keep failing end where an
/// operator sees and redrives them (`docs/runbooks.md`, `AudienceParkedAlarm`).
pub trait ParkedUsers {
    /// Once it returns `Ok`, every user is durably parked.
    fn park(&self, users: &[UserKey]) -> impl Future<Output = Result<(), PortError>> + Send;
}

/// The users of one workspace, page by page (for builds).
pub trait WorkspaceUsers {
    /// Up to `limit` users after `cursor`, as stored (strongly consistent), and the
    /// cursor of the next page (`None`: this was the last).
    fn page(
        &self,
        workspace_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<(Vec<StoredUser>, Option<String>), PortError>> + Send;
}
