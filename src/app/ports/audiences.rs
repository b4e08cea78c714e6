//! The audiences' side of the ports: definitions, memberships and their member lists,
//! the build and time tasks' queues, the users parked or replayed from the stream, and
//! a workspace's users page by page.

use super::{PortError, StoredUser, UserKey};
use crate::domain::audience::MembershipEvent;
pub use crate::domain::membership::{Audience, Definitions, Standing, UserAudiences};
use std::future::Future;

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

    /// The definitions as evaluation takes them (no build progress: `building` is
    /// `None`), read where every instance of a fleet can read them at once.
    fn rules(
        &self,
        workspace_id: &str,
    ) -> impl Future<Output = Result<Definitions, PortError>> + Send;

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
