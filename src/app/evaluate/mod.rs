//! The audiences function's use cases (contract, "Audiences"): settling users against
//! their workspace's rules when they change (the users table's stream), when a build
//! reaches them (the build queue) and when time crosses a rule's edge (the schedule).
//! How it stays exact: `docs/audiences.md`.

mod build;
mod calls;
mod due;
mod outbox;
mod settle;

use super::ports::{
    Audiences, BuildQueue, BuildRecord, BuildStep, BuildTask, Definitions, EventBus, Memberships,
    ParkedUsers, PortError, StoredUser, StreamRange, StreamReplay, TimeTask, TimeTasks,
    UserAudiences, UserImage, UserKey, Users, WorkspaceUsers,
};
use super::publish::StreamChange;
use super::rule_cache::RuleCache;
use super::{call_groups, runtime_timer, AppError, Timer};
use crate::domain::audience::Reason;
use crate::domain::change::ChangeEvent;
use crate::domain::membership::{decide, Decision};
use calls::SharedCalls;
use futures::stream::{self, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Users a build looks at per task (a keys-only index page and its batch reads).
pub const BUILD_PAGE: usize = 200;
/// Member entries dropped per task after a delete.
const DROP_PAGE: usize = 500;
/// Users settled at once by one invocation.
const SETTLING_LANES: usize = 8;
/// `PutEvents` calls in flight at once (a batch entering many audiences puts thousands
/// of events).
const BUS_LANES: usize = 16;
/// Commits that may find something moved before a user is left for the retry.
const COMMIT_ATTEMPTS: usize = 8;
/// Users due read at once by a time task (it reads page after page).
const DUE_PAGE: usize = 200;
/// Partitions of the due index the tick looks into at once (one query of one item each).
const DUE_PEEKS_AT_ONCE: usize = 16;
/// How much longer than the others a workspace of a stream batch may take: once half of
/// the batch's workspaces are settled, those still at work this much later (their rules'
/// key throttled, their member lists' writes retried with backoff, or more work than a
/// shard should wait for) are parked and settled by id from the retry queue, so that one
/// tenant never holds the others' changes, nor the shard's next batch (`docs/scale.md`,
/// item 10).
pub const WORKSPACE_SHARE_MS: u64 = 500;
/// How long a stream batch waits for any workspace (a batch of one slow tenant, or of
/// slow ones only, still holds its shard no longer).
pub const STREAM_BATCH_WAIT_MS: u64 = 5_000;

/// One user to settle: the latest of it known, and the version events name.
struct Subject<'a> {
    /// Where the caller's outcomes go (a record's index, a page's position).
    index: usize,
    workspace_id: &'a str,
    external_user_id: &'a str,
    /// As stored; `None`: no item.
    user: Option<StoredUser>,
    /// The version events name: the item's, or the last one it had.
    version: u64,
    /// Read just now (a build's page, a tick's read), not a stream record that a newer
    /// write may have passed.
    fresh: bool,
    reason: Reason,
}

/// What a stream batch did.
#[derive(Debug, PartialEq)]
pub struct Settled<'a> {
    /// Users settled.
    pub users: usize,
    /// Membership events put on the bus.
    pub events: usize,
    /// Users not settled, parked to be settled apart from the batch.
    pub parked: usize,
    /// The first record not done, from which the batch must be delivered again: an
    /// unreadable record, or users that could not even be parked.
    pub first_failure: Option<&'a str>,
}

/// What a build task did.
#[derive(Debug, PartialEq)]
pub struct Built {
    pub users: usize,
    pub events: usize,
    /// Users of the page not settled, parked: the build goes on without them.
    pub parked: usize,
    /// The task that goes on from here, queued.
    pub next: Option<BuildTask>,
}

/// Each subject's outcome, by its index: the events it put, or why it is not settled.
type Outcomes = Vec<(usize, Result<usize, AppError>)>;

/// What [`Evaluate`] works on, each the ports it takes together: the audiences'
/// definitions and memberships…
pub trait MembershipStore: Audiences + Memberships + Sync {}
impl<T: Audiences + Memberships + Sync> MembershipStore for T {}

/// …the users…
pub trait UserSource: Users + WorkspaceUsers + Sync {}
impl<T: Users + WorkspaceUsers + Sync> UserSource for T {}

/// …the queues of build tasks, parked users and time tasks…
pub trait WorkQueues: BuildQueue + ParkedUsers + TimeTasks {}
impl<T: BuildQueue + ParkedUsers + TimeTasks> WorkQueues for T {}

/// …and the bus the membership events go on.
pub trait Bus: EventBus + Sync {}
impl<T: EventBus + Sync> Bus for T {}

/// The audiences function's use cases.
pub struct Evaluate<S, U, B, E> {
    store: S,
    users: U,
    builds: B,
    bus: E,
    /// The bus calls the carry-outs in flight share.
    calls: SharedCalls,
    rules: RuleCache,
}

impl<S: MembershipStore, U: UserSource, B: WorkQueues, E: Bus> Evaluate<S, U, B, E> {
    /// Events wait for company on tokio's timer.
    pub fn new(store: S, users: U, builds: B, bus: E) -> Self {
        Self::with_linger(store, users, builds, bus, runtime_timer())
    }

    /// `linger` waits out how long a carry-out's events wait for others' to share their
    /// call ([`calls::SHARED_CALL_LINGER`]).
    pub fn with_linger(store: S, users: U, builds: B, bus: E, linger: Timer) -> Self {
        Self {
            store,
            users,
            builds,
            bus,
            calls: SharedCalls::new(linger),
            rules: RuleCache::default(),
        }
    }

    /// A workspace's rules now: its revision read (one small item), the rules held at
    /// that revision, or read and held when they moved.
    async fn rules(&self, workspace_id: &str) -> Result<Arc<Definitions>, PortError> {
        let revision = self.store.revision(workspace_id).await?;
        self.rules_at(workspace_id, revision).await
    }

    async fn rules_at(
        &self,
        workspace_id: &str,
        revision: u64,
    ) -> Result<Arc<Definitions>, PortError> {
        if let Some(held) = self.rules.get(workspace_id, revision) {
            return Ok(held);
        }
        let read = Arc::new(self.store.rules(workspace_id).await?);
        self.rules.put(workspace_id, read.clone());
        Ok(read)
    }

    /// Settles the users a batch of the users table's stream changed, each by the
    /// last of its records (the latest version the batch knows), each workspace apart
    /// against its rules: the users of a workspace not settled when `due` completes, or
    /// `share()` after half of the workspaces are, are parked ([`WORKSPACE_SHARE_MS`],
    /// [`STREAM_BATCH_WAIT_MS`]).
    pub async fn changes<'a, Err: std::fmt::Display, Share: std::future::Future<Output = ()>>(
        &self,
        records: &[StreamChange<'a, Err>],
        now: impl Fn() -> i64 + Sync,
        due: impl std::future::Future<Output = ()>,
        share: impl FnOnce() -> Share,
    ) -> Settled<'a> {
        let mut latest: HashMap<(&str, &str), (usize, &UserImage, &UserImage)> = HashMap::new();
        let mut poison = None;
        for (index, record) in records.iter().enumerate() {
            match &record.images {
                Ok((old, new)) => {
                    if let Some((workspace_id, user)) = new.as_ref().or(old.as_ref()) {
                        let key = (workspace_id.as_str(), user.external_user_id.as_str());
                        latest.insert(key, (index, old, new));
                    }
                }
                Err(err) => {
                    tracing::error!(sequence_number = %record.position, error = %err, "unreadable stream record");
                    poison = Some(index);
                    break;
                }
            }
        }
        let mut workspaces: BTreeMap<&str, Vec<Subject>> = BTreeMap::new();
        for ((workspace_id, user_id), (index, old, new)) in &latest {
            workspaces.entry(workspace_id).or_default().push(Subject {
                index: *index,
                workspace_id,
                external_user_id: user_id,
                user: new.as_ref().map(|(_, user)| user.clone()),
                version: new
                    .as_ref()
                    .or(old.as_ref())
                    .map_or(0, |(_, user)| user.version),
                fresh: false,
                reason: Reason::Change,
            });
        }
        let outcomes = self.settle_apart(workspaces, &now, due, share).await;
        let keys: HashMap<usize, (&str, &str)> = latest
            .iter()
            .map(|(key, (index, _, _))| (*index, *key))
            .collect();
        let (events, failed) = self.tally(outcomes, |index| records[index].position);
        let mut first_failure = poison;
        let parked = failed.len();
        let failed_keys: Vec<(&str, &str)> = failed.iter().map(|index| keys[index]).collect();
        if let Err(err) = self.park(&failed_keys).await {
            tracing::error!(error = %err, users = parked, "users not parked");
            first_failure = failed.into_iter().chain(first_failure).min();
        }
        Settled {
            users: latest.len(),
            events,
            parked,
            first_failure: first_failure.map(|index| records[index].position),
        }
    }

    /// The events put, and the indices of the subjects not settled (each logged with
    /// where it came from).
    fn tally<P: std::fmt::Display>(
        &self,
        outcomes: Outcomes,
        origin: impl Fn(usize) -> P,
    ) -> (usize, Vec<usize>) {
        let mut events = 0;
        let mut failed = Vec::new();
        for (index, outcome) in outcomes {
            match outcome {
                Ok(put) => events += put,
                Err(err) => {
                    tracing::warn!(origin = %origin(index), error = %err, "user not settled");
                    failed.push(index);
                }
            }
        }
        failed.sort_unstable();
        (events, failed)
    }

    async fn park(&self, users: &[(&str, &str)]) -> Result<(), PortError> {
        if users.is_empty() {
            return Ok(());
        }
        let keys: Vec<UserKey> = users
            .iter()
            .map(|(workspace_id, user_id)| ((*workspace_id).to_owned(), (*user_id).to_owned()))
            .collect();
        self.builds.park(&keys).await
    }

    /// Records the stream's failure destination names (a batch that kept failing, or
    /// aged out): their users, read again from the stream, are parked to be settled from
    /// a fresh read, as users that failed in a batch are. Returns how many.
    pub async fn recover(
        &self,
        replay: &impl StreamReplay,
        range: &StreamRange,
    ) -> Result<usize, AppError> {
        let users = replay.users_in(range).await?;
        self.builds.park(&users).await?;
        Ok(users.len())
    }

    /// Settles parked users again, each from a fresh read: each one's outcome, in
    /// order (the events it put, or why it is still not settled).
    pub async fn retry(
        &self,
        users: &[UserKey],
        now: impl Fn() -> i64 + Sync,
    ) -> Vec<Result<usize, AppError>> {
        let keys = users
            .iter()
            .map(|(workspace_id, user_id)| (workspace_id.as_str(), user_id.as_str()));
        let (subjects, mut outcomes) = self.fresh_subjects(keys, Reason::Change).await;
        let definitions = self.rules_of(subjects.iter().map(|s| s.workspace_id)).await;
        let mut ready = Vec::new();
        for subject in subjects {
            match &definitions[subject.workspace_id] {
                Ok(_) => ready.push(subject),
                Err(err) => outcomes.push((subject.index, Err(err.clone().into()))),
            }
        }
        let definitions = definitions
            .into_iter()
            .filter_map(|(workspace_id, found)| Some((workspace_id, found.ok()?)))
            .collect();
        outcomes.extend(self.settle_all(ready, definitions, &now).await);
        outcomes.sort_by_key(|(index, _)| *index);
        outcomes.into_iter().map(|(_, outcome)| outcome).collect()
    }

    /// Subjects read fresh from the users table, by their index in `keys`; the reads
    /// that failed as outcomes.
    async fn fresh_subjects<'a>(
        &self,
        keys: impl Iterator<Item = (&'a str, &'a str)>,
        reason: Reason,
    ) -> (Vec<Subject<'a>>, Outcomes) {
        let reads = keys
            .enumerate()
            .map(|(index, (workspace_id, user_id))| async move {
                let user = self.users.get(workspace_id, user_id).await;
                (index, workspace_id, user_id, user)
            });
        let mut subjects = Vec::new();
        let mut failed = Vec::new();
        for (index, workspace_id, external_user_id, user) in stream::iter(reads)
            .buffer_unordered(SETTLING_LANES)
            .collect::<Vec<_>>()
            .await
        {
            match user {
                Ok(user) => subjects.push(Subject {
                    index,
                    workspace_id,
                    external_user_id,
                    version: user.as_ref().map_or(0, |u| u.version),
                    user,
                    fresh: true,
                    reason,
                }),
                Err(err) => failed.push((index, Err(err.into()))),
            }
        }
        (subjects, failed)
    }
}

fn contended() -> AppError {
    PortError::Unavailable("contended memberships".into()).into()
}
