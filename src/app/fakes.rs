//! The ports in memory, for the use-case tests: each keeps what the AWS adapter would
//! store, follows the same conditional rules, writes what it was asked into a shared
//! journal (so a test can check the order of calls), and fails on demand.

use super::ports::*;
use crate::domain::audience::MembershipEvent;
use crate::domain::auth::ApiKeyRecord;
use crate::domain::change::ChangeEvent;
use crate::domain::idempotency::{judge, Claim, KeyRecord, LOCK_MS};
use crate::domain::rate_limit::Bounds;
use crate::domain::webhook::{log_place, LogRange, Secret};
use crate::domain::{Stamp, UpsertMessage};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

mod lanes;
pub use lanes::*;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The calls the fakes received, in order, as `"port.call"` strings.
#[derive(Clone, Default)]
pub struct Journal(Arc<Mutex<Vec<String>>>);

impl Journal {
    fn note(&self, call: &str) {
        lock(&self.0).push(call.to_owned());
    }

    pub fn calls(&self) -> Vec<String> {
        lock(&self.0).clone()
    }

    /// How many times `call` was made.
    pub fn count(&self, call: &str) -> usize {
        lock(&self.0).iter().filter(|c| *c == call).count()
    }
}

/// Failures a test lines up for a port's calls, by call name, in order (a `None` lets
/// its call pass); a call with nothing lined up succeeds.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<HashMap<String, VecDeque<Option<PortError>>>>>);

impl Faults {
    /// The next `count` calls named `call` fail with `error`.
    pub fn fail(&self, call: &str, error: PortError, count: usize) {
        self.line_up(call, std::iter::repeat_n(Some(error), count));
    }

    /// The next `count` calls named `call` pass (before what is lined up after them).
    pub fn pass(&self, call: &str, count: usize) {
        self.line_up(call, std::iter::repeat_n(None, count));
    }

    fn line_up(&self, call: &str, outcomes: impl IntoIterator<Item = Option<PortError>>) {
        lock(&self.0)
            .entry(call.to_owned())
            .or_default()
            .extend(outcomes);
    }

    /// Nothing lined up any more: every call succeeds.
    pub fn clear(&self) {
        lock(&self.0).clear();
    }

    fn check(&self, call: &str) -> Result<(), PortError> {
        match lock(&self.0).get_mut(call).and_then(VecDeque::pop_front) {
            Some(Some(error)) => Err(error),
            _ => Ok(()),
        }
    }
}

pub fn unavailable() -> PortError {
    PortError::Unavailable("ThrottlingException".into())
}

pub fn refused() -> PortError {
    PortError::Refused("ValidationException".into())
}

/// Idempotency-Key records, with the DynamoDB store's conditional rules.
#[derive(Clone, Default)]
pub struct MemoryKeys {
    pub records: Arc<Mutex<HashMap<String, KeyRecord>>>,
    pub journal: Journal,
    pub faults: Faults,
    /// Takeovers of an abandoned key that another request wins first (the store's
    /// read and its conditional takeover are two calls): each finds the key in flight.
    pub outrun_takeovers: Arc<Mutex<usize>>,
}

impl MemoryKeys {
    pub fn record(&self, workspace_id: &str, key: &str) -> Option<KeyRecord> {
        lock(&self.records)
            .get(&format!("{workspace_id}#{key}"))
            .cloned()
    }

    fn call(&self, name: &str) -> Result<MutexGuard<'_, HashMap<String, KeyRecord>>, PortError> {
        self.journal.note(name);
        self.faults.check(name)?;
        Ok(lock(&self.records))
    }
}

impl IdempotencyKeys for MemoryKeys {
    async fn claim(
        &self,
        workspace_id: &str,
        key: &str,
        body_hash: &str,
        stamp: &Stamp,
    ) -> Result<Claim, PortError> {
        let mut records = self.call("keys.claim")?;
        let id = format!("{workspace_id}#{key}");
        let now_ms = stamp.accepted_at;
        let Some(found) = records.get_mut(&id).filter(|r| r.live_at(now_ms)) else {
            records.insert(id, KeyRecord::claimed(body_hash, stamp));
            return Ok(Claim::Claimed);
        };
        let verdict = judge(found, body_hash, now_ms);
        if matches!(verdict, Claim::Abandoned(_)) {
            let mut outrun = lock(&self.outrun_takeovers);
            found.lock_until = now_ms + LOCK_MS;
            if *outrun > 0 {
                *outrun -= 1;
                return Ok(Claim::InFlight);
            }
        }
        Ok(verdict)
    }

    async fn complete(
        &self,
        workspace_id: &str,
        key: &str,
        request_id: &str,
        unsent: &[usize],
    ) -> Result<(), PortError> {
        let mut records = self.call("keys.complete")?;
        match records.get_mut(&format!("{workspace_id}#{key}")) {
            Some(record) if record.stamp.request_id == request_id => {
                record.done = true;
                record.unsent = unsent.to_vec();
                Ok(())
            }
            _ => Err(PortError::Refused("ConditionalCheckFailedException".into())),
        }
    }

    async fn reopen(
        &self,
        workspace_id: &str,
        key: &str,
        lock_until: i64,
    ) -> Result<(), PortError> {
        let mut records = self.call("keys.reopen")?;
        if let Some(record) = records.get_mut(&format!("{workspace_id}#{key}")) {
            if record.lock_until == lock_until {
                record.lock_until = 0;
            }
        }
        Ok(())
    }

    async fn release(
        &self,
        workspace_id: &str,
        key: &str,
        request_id: &str,
    ) -> Result<(), PortError> {
        let mut records = self.call("keys.release")?;
        let id = format!("{workspace_id}#{key}");
        match records.get(&id) {
            Some(record) if record.stamp.request_id == request_id => {
                records.remove(&id);
                Ok(())
            }
            _ => Err(PortError::Refused("ConditionalCheckFailedException".into())),
        }
    }
}

/// The upsert queue: what it stored, in order.
#[derive(Clone, Default)]
pub struct MemoryQueue {
    pub sent: Arc<Mutex<Vec<UpsertMessage>>>,
    pub journal: Journal,
    pub faults: Faults,
    /// `send_all` leaves these message indices unsent.
    pub refuse: Arc<Mutex<Vec<usize>>>,
}

impl MemoryQueue {
    pub fn messages(&self) -> Vec<UpsertMessage> {
        lock(&self.sent).clone()
    }
}

/// SQS's most bytes of one message body (the queues keep the default maximum).
pub const SQS_BODY_BYTES: usize = 256 * 1024;

/// A message SQS would refuse as too long is refused here too.
fn fits_one_body(message: &UpsertMessage) -> Result<(), PortError> {
    let bytes = serde_json::to_vec(message).map_or(usize::MAX, |body| body.len());
    if bytes > SQS_BODY_BYTES {
        return Err(PortError::Refused("InvalidParameterValue".into()));
    }
    Ok(())
}

impl UpsertQueue for MemoryQueue {
    async fn send(&self, message: &UpsertMessage) -> Result<(), PortError> {
        self.journal.note("queue.send");
        self.faults.check("queue.send")?;
        fits_one_body(message)?;
        lock(&self.sent).push(message.clone());
        Ok(())
    }

    async fn send_all(&self, messages: &[UpsertMessage]) -> Unsent {
        self.journal.note("queue.send_all");
        if let Err(error) = self.faults.check("queue.send_all") {
            return Unsent {
                messages: (0..messages.len()).collect(),
                error: Some(error),
            };
        }
        let refuse = lock(&self.refuse).clone();
        let mut unsent = Unsent::default();
        for (index, message) in messages.iter().enumerate() {
            let refused = if refuse.contains(&index) {
                Err(unavailable())
            } else {
                fits_one_body(message)
            };
            match refused {
                Ok(()) => lock(&self.sent).push(message.clone()),
                Err(error) => {
                    unsent.messages.push(index);
                    unsent.error = Some(error);
                }
            }
        }
        unsent
    }
}

/// The rate counters, with the DynamoDB store's conditional rules.
#[derive(Default)]
pub struct MemoryCounters {
    counters: Mutex<HashMap<String, Counter>>,
    writes: Mutex<u64>,
    pub faults: Faults,
    /// Every quiet lease refused, whatever the counts: seconds leased by instances
    /// from before quiet counts, as DynamoDB's condition refuses them.
    refuse_quiet: Mutex<bool>,
}

impl MemoryCounters {
    /// A counter as stored (a workspace's, or a shard's).
    pub fn counter(&self, key: &str) -> Option<Counter> {
        lock(&self.counters).get(key).copied()
    }

    pub fn refuse_quiet(&self, refuse: bool) {
        *lock(&self.refuse_quiet) = refuse;
    }

    /// Writes made so far, refused ones included (DynamoDB bills a failed condition).
    pub fn writes(&self) -> u64 {
        *lock(&self.writes)
    }
}

impl Counters for Arc<MemoryCounters> {
    async fn take(
        &self,
        key: &str,
        window: i64,
        tokens: u64,
        bounds: Bounds,
        quiet: bool,
    ) -> Result<Result<Counter, Option<Counter>>, PortError> {
        self.faults.check("counters.take")?;
        *lock(&self.writes) += 1;
        let mut counters = lock(&self.counters);
        let found = counters.get(key).copied();
        // As the DynamoDB item holds it: `window`'s tokens and the window's before.
        let (used, previous) = match found {
            Some(c) if c.window > window => return Ok(Err(found)),
            Some(c) if c.window == window => (c.used, c.previous),
            Some(c) if c.window == window - 1 => (0, c.used),
            _ => (0, 0),
        };
        if used + tokens > bounds.second
            || used + previous + tokens > bounds.pair
            || (quiet && (used + tokens > bounds.quiet_cap(previous) || *lock(&self.refuse_quiet)))
        {
            return Ok(Err(found));
        }
        let counter = Counter {
            window,
            used: used + tokens,
            previous,
        };
        counters.insert(key.to_owned(), counter);
        Ok(Ok(counter))
    }
}

/// Which writes of users fail, and how.
pub type RefuseRule = fn(&StoredUser) -> Option<PortError>;

/// The users table, with optimistic versions.
#[derive(Clone, Default)]
pub struct MemoryUsers {
    pub users: Arc<Mutex<HashMap<UserKey, StoredUser>>>,
    pub journal: Journal,
    pub faults: Faults,
    /// Writes this rule fails (as DynamoDB refuses an item it cannot store, say).
    pub refuse_put: Arc<Mutex<Option<RefuseRule>>>,
    /// Before each write of these users, another writer bumps the version first.
    pub contend: Arc<Mutex<HashMap<String, usize>>>,
}

impl MemoryUsers {
    pub fn user(&self, workspace_id: &str, external_user_id: &str) -> Option<StoredUser> {
        lock(&self.users)
            .get(&(workspace_id.to_owned(), external_user_id.to_owned()))
            .cloned()
    }
}

impl Users for MemoryUsers {
    async fn get(
        &self,
        workspace_id: &str,
        external_user_id: &str,
    ) -> Result<Option<StoredUser>, PortError> {
        self.journal.note("users.get");
        self.faults.check("users.get")?;
        Ok(self.user(workspace_id, external_user_id))
    }

    async fn get_many(
        &self,
        keys: &[(&str, &str)],
    ) -> Result<HashMap<UserKey, StoredUser>, PortError> {
        self.journal.note("users.get_many");
        self.faults.check("users.get_many")?;
        let users = lock(&self.users);
        Ok(keys
            .iter()
            .filter_map(|(w, u)| {
                let key = ((*w).to_owned(), (*u).to_owned());
                Some((key.clone(), users.get(&key)?.clone()))
            })
            .collect())
    }

    async fn put(&self, workspace_id: &str, user: &StoredUser) -> Result<WriteOutcome, PortError> {
        self.journal.note("users.put");
        self.faults.check("users.put")?;
        if let Some(error) = lock(&self.refuse_put).and_then(|rule| rule(user)) {
            return Err(error);
        }
        let key = (workspace_id.to_owned(), user.external_user_id.clone());
        let mut users = lock(&self.users);
        if let Some(left) = lock(&self.contend).get_mut(&user.external_user_id) {
            if *left > 0 {
                *left -= 1;
                if let Some(stored) = users.get_mut(&key) {
                    stored.version += 1;
                }
                return Ok(WriteOutcome::Conflict);
            }
        }
        let stored_version = users.get(&key).map_or(0, |u| u.version);
        if stored_version != user.version {
            return Ok(WriteOutcome::Conflict);
        }
        let mut written = user.clone();
        // As the table does: a new user's versions start from the clock.
        written.version = crate::domain::next_version(user.version, crate::clock::now_millis());
        users.insert(key, written);
        Ok(WriteOutcome::Written)
    }

    async fn find_by_email(
        &self,
        workspace_id: &str,
        email: &str,
    ) -> Result<EmailMatches, PortError> {
        self.journal.note("users.find_by_email");
        self.faults.check("users.find_by_email")?;
        let wanted = email.to_lowercase();
        let mut users: Vec<StoredUser> = lock(&self.users)
            .iter()
            .filter(|((w, _), user)| {
                w == workspace_id
                    && user
                        .profile
                        .profile
                        .get(&crate::domain::ProfileField::Email)
                        .is_some_and(|e| e.to_lowercase() == wanted)
            })
            .map(|(_, user)| user.clone())
            .collect();
        users.sort_by(|a, b| a.external_user_id.cmp(&b.external_user_id));
        let truncated = users.len() > crate::contract::MAX_EMAIL_MATCHES;
        users.truncate(crate::contract::MAX_EMAIL_MATCHES);
        Ok(EmailMatches { users, truncated })
    }
}

/// API keys by hash, and how many reads they served.
#[derive(Clone, Default)]
pub struct MemoryApiKeys {
    pub records: Arc<Mutex<HashMap<String, ApiKeyRecord>>>,
    reads: Arc<Mutex<usize>>,
    pub faults: Faults,
}

impl MemoryApiKeys {
    pub fn reads(&self) -> usize {
        *lock(&self.reads)
    }
}

impl ApiKeys for MemoryApiKeys {
    async fn get(&self, hash: &str) -> Result<Option<ApiKeyRecord>, PortError> {
        self.faults.check("api_keys.get")?;
        *lock(&self.reads) += 1;
        Ok(lock(&self.records).get(hash).cloned())
    }
}

/// The event bus: every call's events, and a script of refusals per call.
#[derive(Clone, Default)]
pub struct MemoryBus {
    /// The events of each call, as sent.
    pub calls: Arc<Mutex<Vec<Vec<ChangeEvent>>>>,
    /// Per call, in order: the indices the bus refuses (an entry past the script
    /// refuses nothing).
    pub refusals: Arc<Mutex<VecDeque<Vec<usize>>>>,
    pub faults: Faults,
}

impl MemoryBus {
    /// The events the bus took, in the order it took them.
    pub fn accepted(&self) -> Vec<ChangeEvent> {
        lock(&self.calls).iter().flatten().cloned().collect()
    }
}

impl EventBus for MemoryBus {
    const MAX_ENTRIES_PER_CALL: usize = 10;
    const MAX_BYTES_PER_CALL: usize = 240 * 1024;

    fn entry_size(event: &ChangeEvent) -> usize {
        event.detail.to_string().len()
    }

    async fn put(&self, events: &[&ChangeEvent]) -> Result<Vec<usize>, PortError> {
        self.faults.check("bus.put")?;
        // EventBridge refuses a call past its limits whole.
        let bytes: usize = events.iter().map(|event| Self::entry_size(event)).sum();
        if events.len() > Self::MAX_ENTRIES_PER_CALL || bytes > Self::MAX_BYTES_PER_CALL {
            return Err(PortError::Refused("ValidationException".into()));
        }
        let refused = lock(&self.refusals).pop_front().unwrap_or_default();
        let taken = events
            .iter()
            .enumerate()
            .filter(|(index, _)| !refused.contains(index))
            .map(|(_, event)| (*event).clone())
            .collect();
        lock(&self.calls).push(taken);
        Ok(refused)
    }
}

impl WorkspaceUsers for MemoryUsers {
    async fn page(
        &self,
        workspace_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StoredUser>, Option<String>), PortError> {
        self.journal.note("users.page");
        self.faults.check("users.page")?;
        let mut users: Vec<StoredUser> = lock(&self.users)
            .iter()
            .filter(|((w, id), _)| w == workspace_id && cursor.is_none_or(|c| id.as_str() > c))
            .map(|(_, user)| user.clone())
            .collect();
        users.sort_by(|a, b| a.external_user_id.cmp(&b.external_user_id));
        // As DynamoDB's `Limit`: a full page ends with a cursor, even when nothing follows.
        let more = users.len() >= limit;
        users.truncate(limit);
        let next = more
            .then(|| users.last().map(|u| u.external_user_id.clone()))
            .flatten();
        Ok((users, next))
    }
}

/// One workspace's audience definitions, and where each build stands.
#[derive(Clone, Default)]
pub struct MemoryDefinitions {
    pub revision: u64,
    pub audiences: std::collections::BTreeMap<String, (Audience, Option<String>)>,
}

/// A member-list entry: a member (`entered_at`) or a removed one, and the commit that
/// wrote it.
#[derive(Clone, Debug)]
pub struct ListEntry {
    pub entered_at: Option<i64>,
    pub rule_rev: u64,
    pub rev: u64,
}

/// An audience's member count: (workspace, audience, the revision it started at).
pub type CountKey = (String, String, u64);
/// A member list: workspace, audience, and whether it is sharded.
pub type ListKey = (String, String, bool);

/// What a test runs before each commit, as another writer would.
pub type CommitRace = Box<dyn FnMut(&MemoryAudiences) + Send>;

/// The audiences and memberships tables, with the DynamoDB store's conditions.
#[derive(Clone, Default)]
pub struct MemoryAudiences {
    pub definitions: Arc<Mutex<HashMap<String, MemoryDefinitions>>>,
    pub states: Arc<Mutex<HashMap<UserKey, UserAudiences>>>,
    /// Member lists by (workspace, audience, sharded), by user: a list read or dropped
    /// in the other layout than it was written in is not found, as in DynamoDB.
    pub lists: Arc<Mutex<HashMap<ListKey, std::collections::BTreeMap<String, ListEntry>>>>,
    pub journal: Journal,
    pub faults: Faults,
    /// Runs before each commit, as another writer would (a test's race).
    pub before_commit: Arc<Mutex<Option<CommitRace>>>,
    /// Member counts by (workspace, audience, revision it started at), kept by `apply`.
    pub counts: Arc<Mutex<HashMap<CountKey, i64>>>,
    /// Users whose memberships cannot be read: every evaluation of them fails.
    pub poisoned: Arc<Mutex<std::collections::HashSet<UserKey>>>,
    /// Definition writes (define, delete) that another writer outruns: each moves the
    /// revision first and fails its condition, until none are left.
    pub outrun: Arc<Mutex<usize>>,
    /// Calls (by name) that never answer for a workspace, as a throttled key's calls
    /// retried with backoff take seconds: its revision reads, its member-list writes.
    pub stalled: Arc<Mutex<std::collections::HashSet<(String, &'static str)>>>,
}

impl MemoryAudiences {
    fn call(&self, name: &str) -> Result<(), PortError> {
        self.journal.note(name);
        self.faults.check(name)
    }

    fn definitions_of(&self, workspace_id: &str) -> Definitions {
        let found = lock(&self.definitions)
            .get(workspace_id)
            .cloned()
            .unwrap_or_default();
        Definitions {
            revision: found.revision,
            audiences: found.audiences.into_values().map(|(a, _)| a).collect(),
        }
    }

    /// Makes `call` never answer for `workspace_id` (until `stalled` is cleared).
    pub fn stall(&self, workspace_id: &str, call: &'static str) {
        lock(&self.stalled).insert((workspace_id.to_owned(), call));
    }

    /// A workspace's call, noted, then held forever if stalled, or failed if a fault is set.
    /// It answers after the task's other ready work has run, as a network call does, so
    /// that the workspaces of a batch interleave as they do against DynamoDB.
    async fn call_for(&self, workspace_id: &str, name: &'static str) -> Result<(), PortError> {
        let stalled = lock(&self.stalled).contains(&(workspace_id.to_owned(), name));
        if stalled {
            self.journal.note(name);
            std::future::pending::<()>().await;
        }
        tokio::task::yield_now().await;
        self.call(name)
    }

    /// The members of an audience as listed (of any revision, in either layout).
    pub fn listed(&self, workspace_id: &str, audience_id: &str) -> Vec<String> {
        let lists = lock(&self.lists);
        let layouts = [false, true]
            .map(|sharded| lists.get(&(workspace_id.to_owned(), audience_id.to_owned(), sharded)));
        let mut members: Vec<String> = layouts
            .into_iter()
            .flatten()
            .flat_map(|list| list.iter().filter(|(_, e)| e.entered_at.is_some()))
            .map(|(id, _)| id.clone())
            .collect();
        members.sort();
        members
    }

    /// Members of the list `list` that started at `since_rev`, in id order after `after`.
    fn list_members(
        &self,
        list: &ListKey,
        since_rev: u64,
        limit: usize,
        after: Option<&str>,
    ) -> (Vec<(String, i64)>, bool) {
        let lists = lock(&self.lists);
        let mut members: Vec<(String, i64)> = lists
            .get(list)
            .into_iter()
            .flatten()
            .filter(|(id, e)| after.is_none_or(|a| id.as_str() > a) && e.rule_rev >= since_rev)
            .filter_map(|(id, e)| Some((id.clone(), e.entered_at?)))
            .collect();
        let more = members.len() > limit;
        members.truncate(limit);
        (members, more)
    }

    /// Whether another writer moved the workspace's revision first (see `outrun`).
    fn outrun(&self, found: &mut MemoryDefinitions) -> bool {
        let mut outrun = lock(&self.outrun);
        if *outrun == 0 {
            return false;
        }
        *outrun -= 1;
        found.revision += 1;
        true
    }

    pub fn state(&self, workspace_id: &str, user_id: &str) -> UserAudiences {
        lock(&self.states)
            .get(&(workspace_id.to_owned(), user_id.to_owned()))
            .cloned()
            .unwrap_or_default()
    }
}

impl Audiences for MemoryAudiences {
    async fn list(&self, workspace_id: &str) -> Result<Definitions, PortError> {
        self.call("audiences.list")?;
        Ok(self.definitions_of(workspace_id))
    }

    async fn rules(&self, workspace_id: &str) -> Result<Definitions, PortError> {
        self.call("audiences.rules")?;
        let mut found = self.definitions_of(workspace_id);
        // What the store keeps for evaluation has no build progress.
        for audience in &mut found.audiences {
            audience.building = None;
        }
        Ok(found)
    }

    async fn revision(&self, workspace_id: &str) -> Result<u64, PortError> {
        self.call_for(workspace_id, "audiences.revision").await?;
        Ok(lock(&self.definitions)
            .get(workspace_id)
            .map_or(0, |d| d.revision))
    }

    async fn get(
        &self,
        workspace_id: &str,
        audience_id: &str,
    ) -> Result<Option<Audience>, PortError> {
        self.call("audiences.get")?;
        Ok(lock(&self.definitions)
            .get(workspace_id)
            .and_then(|d| d.audiences.get(audience_id))
            .map(|(a, _)| a.clone()))
    }

    async fn define(
        &self,
        workspace_id: &str,
        audience: &Audience,
        revision: u64,
    ) -> Result<bool, PortError> {
        self.call("audiences.define")?;
        let mut definitions = lock(&self.definitions);
        let found = definitions.entry(workspace_id.to_owned()).or_default();
        if self.outrun(found) || found.revision != revision {
            return Ok(false);
        }
        found.revision = audience.rule_rev;
        found
            .audiences
            .insert(audience.audience_id.clone(), (audience.clone(), None));
        Ok(true)
    }

    async fn delete(
        &self,
        workspace_id: &str,
        audience_id: &str,
        revision: u64,
    ) -> Result<bool, PortError> {
        self.call("audiences.delete")?;
        let mut definitions = lock(&self.definitions);
        let found = definitions.entry(workspace_id.to_owned()).or_default();
        if self.outrun(found) || found.revision != revision {
            return Ok(false);
        }
        found.revision += 1;
        found.audiences.remove(audience_id);
        Ok(true)
    }

    async fn record_build(
        &self,
        workspace_id: &str,
        audience_id: &str,
        rule_rev: u64,
        step: &BuildStep,
    ) -> Result<BuildRecord, PortError> {
        self.call("audiences.record_build")?;
        let mut definitions = lock(&self.definitions);
        let Some((audience, cursor)) = definitions
            .get_mut(workspace_id)
            .and_then(|d| d.audiences.get_mut(audience_id))
            .filter(|(a, _)| a.rule_rev == rule_rev)
        else {
            return Ok(BuildRecord::Replaced);
        };
        let Some(scanned) = audience.building else {
            return Ok(BuildRecord::AlreadyAt(None));
        };
        if *cursor != step.from {
            return Ok(BuildRecord::AlreadyAt(cursor.clone()));
        }
        audience.building = step.to.as_ref().map(|_| scanned + step.scanned);
        cursor.clone_from(&step.to);
        Ok(BuildRecord::Recorded)
    }
}

/// The partition of the users due a user is in (a few, so that tests cross them).
fn due_shard((workspace_id, user_id): &UserKey) -> u32 {
    let bytes = workspace_id.bytes().chain(user_id.bytes());
    bytes.fold(0u32, |hash, b| {
        hash.wrapping_mul(31).wrapping_add(u32::from(b))
    }) % MemoryAudiences::DUE_SHARDS
}

impl Memberships for MemoryAudiences {
    const DUE_SHARDS: u32 = 4;

    async fn standing(
        &self,
        workspace_id: &str,
        external_user_id: &str,
    ) -> Result<UserAudiences, PortError> {
        self.call("memberships.standing")?;
        let key = (workspace_id.to_owned(), external_user_id.to_owned());
        if lock(&self.poisoned).contains(&key) {
            return Err(PortError::Refused("ValidationException".into()));
        }
        Ok(self.state(workspace_id, external_user_id))
    }

    async fn commit(
        &self,
        workspace_id: &str,
        external_user_id: &str,
        next: &UserAudiences,
    ) -> Result<bool, PortError> {
        self.call("memberships.commit")?;
        if let Some(race) = lock(&self.before_commit).as_mut() {
            race(self);
        }
        let key = (workspace_id.to_owned(), external_user_id.to_owned());
        let mut states = lock(&self.states);
        let (rev, version) = states.get(&key).map_or((0, 0), |s| (s.rev, s.user_version));
        if rev + 1 != next.rev || (rev > 0 && version > next.user_version) {
            return Ok(false);
        }
        states.insert(key, next.clone());
        Ok(true)
    }

    async fn write_entries(
        &self,
        workspace_id: &str,
        external_user_id: &str,
        rev: u64,
        decisions: &[MembershipEvent],
    ) -> Result<(), PortError> {
        self.call_for(workspace_id, "memberships.write_entries")
            .await?;
        let mut lists = lock(&self.lists);
        let mut counts = lock(&self.counts);
        for decision in decisions {
            let list = lists
                .entry((
                    workspace_id.to_owned(),
                    decision.audience_id.clone(),
                    decision.sharded,
                ))
                .or_default();
            let found = list.get(external_user_id);
            if found.is_some_and(|e| e.rev >= rev) {
                continue;
            }
            let was_member =
                found.is_some_and(|e| e.entered_at.is_some() && e.rule_rev >= decision.since_rev);
            if was_member != decision.entered {
                let audience = (
                    workspace_id.to_owned(),
                    decision.audience_id.clone(),
                    decision.since_rev,
                );
                *counts.entry(audience).or_default() += if decision.entered { 1 } else { -1 };
            }
            let entry = ListEntry {
                entered_at: decision.entered.then_some(decision.at),
                rule_rev: decision.rule_rev,
                rev,
            };
            list.insert(external_user_id.to_owned(), entry);
        }
        Ok(())
    }

    async fn clear_pending(
        &self,
        workspace_id: &str,
        external_user_id: &str,
        rev: u64,
        next_due: Option<i64>,
    ) -> Result<(), PortError> {
        self.call("memberships.clear_pending")?;
        let key = (workspace_id.to_owned(), external_user_id.to_owned());
        if let Some(state) = lock(&self.states).get_mut(&key).filter(|s| s.rev == rev) {
            state.pending.clear();
            state.next_due = next_due;
        }
        Ok(())
    }

    async fn members(
        &self,
        workspace_id: &str,
        audience: &Audience,
        limit: usize,
        after: Option<&str>,
    ) -> Result<(Vec<(String, i64)>, bool), PortError> {
        self.call("memberships.members")?;
        let list = (
            workspace_id.to_owned(),
            audience.audience_id.clone(),
            audience.sharded,
        );
        Ok(self.list_members(&list, audience.since_rev, limit, after))
    }

    async fn count(
        &self,
        workspace_id: &str,
        (audience_id, since_rev): (&str, u64),
    ) -> Result<u64, PortError> {
        self.call("memberships.count")?;
        let key = (workspace_id.to_owned(), audience_id.to_owned(), since_rev);
        let count = lock(&self.counts).get(&key).copied().unwrap_or(0);
        // Never below zero: a count that went there is a bug the tests must see.
        u64::try_from(count).map_err(|_| PortError::Refused("negative count".into()))
    }

    async fn count_listed(
        &self,
        workspace_id: &str,
        (audience_id, since_rev): (&str, u64),
    ) -> Result<u64, PortError> {
        self.call("memberships.count_listed")?;
        // Only audiences that started before counts were kept, all of them one list.
        let list = (workspace_id.to_owned(), audience_id.to_owned(), false);
        let (members, _) = self.list_members(&list, since_rev, usize::MAX - 1, None);
        Ok(members.len() as u64)
    }

    async fn due(
        &self,
        shard: u32,
        until_ms: i64,
        after: Option<&(UserKey, i64)>,
        limit: usize,
    ) -> Result<(Vec<(UserKey, i64)>, bool), PortError> {
        self.call("memberships.due")?;
        let mut due: Vec<(UserKey, i64)> = lock(&self.states)
            .iter()
            .filter(|(key, _)| due_shard(key) == shard)
            .filter_map(|(key, state)| {
                let at = state.due_at()?;
                (at <= until_ms).then(|| (key.clone(), at))
            })
            // As the index orders them: by instant, then by key.
            .filter(|(key, at)| after.is_none_or(|(k, a)| (at, key) > (a, k)))
            .collect();
        due.sort_by(|(k1, a1), (k2, a2)| (a1, k1).cmp(&(a2, k2)));
        // As DynamoDB's `Limit`: a full page says more may follow, even when none does.
        let more = due.len() >= limit;
        due.truncate(limit);
        Ok((due, more))
    }

    async fn drop_members(
        &self,
        workspace_id: &str,
        audience_id: &str,
        rule_rev: u64,
        sharded: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<String>, PortError> {
        self.call("memberships.drop_members")?;
        let list_key = (workspace_id.to_owned(), audience_id.to_owned(), sharded);
        let mut lists = lock(&self.lists);
        let Some(list) = lists.get_mut(&list_key) else {
            return Ok(None);
        };
        let page: Vec<String> = list
            .keys()
            .filter(|id| after.is_none_or(|a| id.as_str() > a))
            .take(limit + 1)
            .cloned()
            .collect();
        let more = page.len() > limit;
        let mut states = lock(&self.states);
        for user_id in page.iter().take(limit) {
            let key = (workspace_id.to_owned(), user_id.clone());
            if let Some(state) = states.get_mut(&key) {
                if state
                    .members
                    .get(audience_id)
                    .is_some_and(|s| s.rule_rev <= rule_rev)
                {
                    state.members.remove(audience_id);
                    state.rev += 1;
                }
            }
            if list.get(user_id).is_some_and(|e| e.rule_rev <= rule_rev) {
                list.remove(user_id);
            }
        }
        Ok(more.then(|| page.get(limit - 1).cloned()).flatten())
    }
}

/// The audiences function's queues: build tasks as sent, parked users, time tasks.
#[derive(Clone, Default)]
pub struct MemoryBuilds {
    pub tasks: Arc<Mutex<VecDeque<BuildTask>>>,
    /// Replays the api scheduled (it shares the audiences' queue type in tests).
    pub replays: Arc<Mutex<Vec<ReplayTask>>>,
    pub parked: Arc<Mutex<VecDeque<UserKey>>>,
    pub time: Arc<Mutex<VecDeque<TimeTask>>>,
    pub faults: Faults,
}

impl TimeTasks for MemoryBuilds {
    async fn send_time(&self, tasks: &[TimeTask]) -> Result<(), PortError> {
        self.faults.check("time.send")?;
        lock(&self.time).extend(tasks.iter().copied());
        Ok(())
    }
}

impl MemoryBuilds {
    pub fn take(&self) -> Option<BuildTask> {
        lock(&self.tasks).pop_front()
    }

    /// The time tasks sent so far, taken off the queue.
    pub fn take_time(&self) -> Vec<TimeTask> {
        lock(&self.time).drain(..).collect()
    }

    /// The users parked so far, taken off the queue.
    pub fn take_parked(&self) -> Vec<UserKey> {
        lock(&self.parked).drain(..).collect()
    }
}

impl ParkedUsers for MemoryBuilds {
    async fn park(&self, users: &[UserKey]) -> Result<(), PortError> {
        self.faults.check("parked.park")?;
        lock(&self.parked).extend(users.iter().cloned());
        Ok(())
    }
}

impl ReplayTasks for MemoryBuilds {
    async fn schedule(&self, task: &ReplayTask) -> Result<(), PortError> {
        self.faults.check("replays.schedule")?;
        lock(&self.replays).push(task.clone());
        Ok(())
    }
}

impl BuildQueue for MemoryBuilds {
    async fn send(&self, task: &BuildTask) -> Result<(), PortError> {
        self.faults.check("builds.send")?;
        lock(&self.tasks).push_back(task.clone());
        Ok(())
    }
}

/// Attempt logs by (workspace, webhook id, line's place).
pub type AttemptLogs = std::collections::BTreeMap<(String, String, String), LoggedAttempt>;

/// Webhook endpoints by workspace and id, with the DynamoDB store's rules: a new one
/// only under the workspace's most, a replacement keeps its secrets and `created_at`.
#[derive(Clone, Default)]
pub struct MemoryWebhooks {
    pub endpoints: Arc<Mutex<std::collections::BTreeMap<(String, String), Endpoint>>>,
    /// The workspaces listed as having webhooks: added by every `put`, never taken
    /// out.
    pub listed: Arc<Mutex<std::collections::HashSet<String>>>,
    pub log: Arc<Mutex<AttemptLogs>>,
    /// Every disabling asked for, in order: what it required of the endpoint.
    pub disablings: Arc<Mutex<Vec<Disabling>>>,
    /// A `PUT` lands between a worker's read of the endpoint and its disabling (once).
    pub put_before_disabling: Arc<std::sync::atomic::AtomicBool>,
    pub journal: Journal,
    pub faults: Faults,
}

impl MemoryWebhooks {
    fn call(&self, name: &str) -> Result<(), PortError> {
        self.journal.note(name);
        self.faults.check(name)
    }
}

impl WebhookWorkspaces for MemoryWebhooks {
    async fn with_webhooks(&self) -> Result<std::collections::HashSet<String>, PortError> {
        self.call("webhooks.with_webhooks")?;
        Ok(lock(&self.listed).clone())
    }
}

impl Webhooks for MemoryWebhooks {
    async fn endpoints(&self, workspace_id: &str) -> Result<Vec<Endpoint>, PortError> {
        self.call("webhooks.endpoints")?;
        Ok(lock(&self.endpoints)
            .iter()
            .filter(|((w, _), _)| w == workspace_id)
            .map(|(_, endpoint)| endpoint.clone())
            .collect())
    }

    async fn endpoint(
        &self,
        workspace_id: &str,
        webhook_id: &str,
    ) -> Result<Option<Endpoint>, PortError> {
        self.call("webhooks.endpoint")?;
        let key = (workspace_id.to_owned(), webhook_id.to_owned());
        Ok(lock(&self.endpoints).get(&key).cloned())
    }

    async fn put(
        &self,
        workspace_id: &str,
        endpoint: &Endpoint,
        most: usize,
    ) -> Result<Stored, PortError> {
        self.call("webhooks.put")?;
        lock(&self.listed).insert(workspace_id.to_owned());
        let mut endpoints = lock(&self.endpoints);
        let key = (workspace_id.to_owned(), endpoint.webhook_id.clone());
        if let Some(found) = endpoints.get_mut(&key) {
            *found = Endpoint {
                secret: found.secret.clone(),
                previous_secret: found.previous_secret.clone(),
                created_at: found.created_at,
                ..endpoint.clone()
            };
            return Ok(Stored::Replaced(Box::new(found.clone())));
        }
        if endpoints.keys().filter(|(w, _)| w == workspace_id).count() >= most {
            return Ok(Stored::Full);
        }
        endpoints.insert(key, endpoint.clone());
        Ok(Stored::Created)
    }

    async fn rotate(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        secret: &str,
        previous_until: i64,
    ) -> Result<Option<Endpoint>, PortError> {
        self.call("webhooks.rotate")?;
        let key = (workspace_id.to_owned(), webhook_id.to_owned());
        Ok(lock(&self.endpoints).get_mut(&key).map(|found| {
            let previous = std::mem::replace(&mut found.secret, Secret(secret.to_owned()));
            found.previous_secret = Some((previous, previous_until));
            found.clone()
        }))
    }

    async fn delete(&self, workspace_id: &str, webhook_id: &str) -> Result<bool, PortError> {
        self.call("webhooks.delete")?;
        let key = (workspace_id.to_owned(), webhook_id.to_owned());
        Ok(lock(&self.endpoints).remove(&key).is_some())
    }

    async fn mark_failing(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        since: i64,
    ) -> Result<(), PortError> {
        self.call("webhooks.mark_failing")?;
        self.change(workspace_id, webhook_id, |found| {
            found.failing_since.get_or_insert(since);
            true
        });
        Ok(())
    }

    async fn mark_recovered(&self, workspace_id: &str, webhook_id: &str) -> Result<(), PortError> {
        self.call("webhooks.mark_recovered")?;
        self.change(workspace_id, webhook_id, |found| {
            found.failing_since = None;
            true
        });
        Ok(())
    }

    async fn disable(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        disabling: Disabling,
    ) -> Result<bool, PortError> {
        self.call("webhooks.disable")?;
        lock(&self.disablings).push(disabling);
        let put_meanwhile = self
            .put_before_disabling
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        Ok(self.change(workspace_id, webhook_id, |found| {
            if put_meanwhile {
                found.updated_at += 1;
            }
            let streak = disabling.failing_since;
            let as_read = found.updated_at == disabling.updated_at
                && (streak.is_none() || found.failing_since == streak);
            if found.disabled.is_some() || !as_read {
                return false;
            }
            found.disabled = Some(Disabled {
                reason: disabling.reason,
                at: disabling.at,
                announced: false,
            });
            true
        }))
    }

    async fn mark_announced(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        disabled_at: i64,
    ) -> Result<(), PortError> {
        self.call("webhooks.mark_announced")?;
        self.change(workspace_id, webhook_id, |found| {
            match &mut found.disabled {
                Some(disabled) if disabled.at == disabled_at => {
                    disabled.announced = true;
                    true
                }
                _ => false,
            }
        });
        Ok(())
    }
}

impl DeliveryLog for MemoryWebhooks {
    async fn record(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        attempt: &LoggedAttempt,
    ) -> Result<(), PortError> {
        self.call("webhooks.record")?;
        let place = log_place(attempt.at, &attempt.message_id);
        let key = (workspace_id.to_owned(), webhook_id.to_owned(), place);
        lock(&self.log).insert(key, attempt.clone());
        Ok(())
    }

    async fn attempts(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        range: &LogRange,
        limit: usize,
    ) -> Result<LogPage, PortError> {
        self.call("webhooks.attempts")?;
        let Some((from, to)) = range.places() else {
            return Ok(LogPage::default());
        };
        let log = lock(&self.log);
        let lines = log.iter().filter(|((w, h, place), _)| {
            w == workspace_id
                && h == webhook_id
                && (&from..=&to).contains(&place)
                && Some(place) != range.after.as_ref()
        });
        let mut lines: Box<dyn Iterator<Item = _>> = if range.oldest_first {
            Box::new(lines)
        } else {
            Box::new(lines.rev())
        };
        let attempts: Vec<(String, LoggedAttempt)> = lines
            .by_ref()
            .take(limit)
            .map(|((_, _, place), attempt)| (place.clone(), attempt.clone()))
            .collect();
        let more = lines.next().is_some();
        Ok(LogPage {
            next_after: more
                .then(|| attempts.last().map(|(place, _)| place.clone()))
                .flatten(),
            attempts: attempts.into_iter().map(|(_, attempt)| attempt).collect(),
        })
    }
}

impl MemoryWebhooks {
    /// Applies `change` to the endpoint if it is there; whether it changed it.
    fn change(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        change: impl FnOnce(&mut Endpoint) -> bool,
    ) -> bool {
        let key = (workspace_id.to_owned(), webhook_id.to_owned());
        lock(&self.endpoints).get_mut(&key).is_some_and(change)
    }
}
