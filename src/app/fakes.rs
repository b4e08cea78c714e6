//! The ports in memory, for the use-case tests: each keeps what the AWS adapter would
//! store, follows the same conditional rules, writes what it was asked into a shared
//! journal (so a test can check the order of calls), and fails on demand.

use super::ports::*;
use crate::app::rate_limit::{burst, pair_limit};
use crate::domain::auth::ApiKeyRecord;
use crate::domain::change::ChangeEvent;
use crate::domain::idempotency::{judge, Claim, KeyRecord, LOCK_MS};
use crate::domain::{Stamp, UpsertMessage};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

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
}

/// Failures a test lines up for a port's calls, by call name, in order; a call with
/// nothing lined up succeeds.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<HashMap<String, VecDeque<PortError>>>>);

impl Faults {
    /// The next `count` calls named `call` fail with `error`.
    pub fn fail(&self, call: &str, error: PortError, count: usize) {
        lock(&self.0)
            .entry(call.to_owned())
            .or_default()
            .extend(std::iter::repeat_n(error, count));
    }

    fn check(&self, call: &str) -> Result<(), PortError> {
        match lock(&self.0).get_mut(call).and_then(VecDeque::pop_front) {
            Some(error) => Err(error),
            None => Ok(()),
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
            found.lock_until = now_ms + LOCK_MS;
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

impl UpsertQueue for MemoryQueue {
    async fn send(&self, message: &UpsertMessage) -> Result<(), PortError> {
        self.journal.note("queue.send");
        self.faults.check("queue.send")?;
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
            if refuse.contains(&index) {
                unsent.messages.push(index);
                unsent.error = Some(unavailable());
            } else {
                lock(&self.sent).push(message.clone());
            }
        }
        unsent
    }
}

/// The rate counters, with the DynamoDB store's conditional rules.
#[derive(Default)]
pub struct MemoryCounters(Mutex<HashMap<String, Counter>>);

impl Counters for Arc<MemoryCounters> {
    async fn take(
        &self,
        workspace_id: &str,
        window: i64,
        tokens: u64,
        rate: u32,
    ) -> Result<Result<(), Option<Counter>>, PortError> {
        let mut counters = lock(&self.0);
        let found = counters.get(workspace_id).copied();
        match counters.get_mut(workspace_id) {
            Some(c)
                if c.window == window
                    && c.used + tokens <= burst(rate)
                    && c.used + c.previous + tokens <= pair_limit(rate) =>
            {
                c.used += tokens;
                Ok(Ok(()))
            }
            _ => Ok(Err(found)),
        }
    }

    async fn start_window(
        &self,
        workspace_id: &str,
        found: Option<Counter>,
        window: i64,
        tokens: u64,
    ) -> Result<bool, PortError> {
        let mut counters = lock(&self.0);
        // As the DynamoDB condition: the same window with the same tokens taken.
        let current = counters.get(workspace_id).map(|c| (c.window, c.used));
        if current != found.map(|c| (c.window, c.used)) {
            return Ok(false);
        }
        let previous = found
            .filter(|c| c.window == window - 1)
            .map_or(0, |c| c.used);
        counters.insert(
            workspace_id.to_owned(),
            Counter {
                window,
                used: tokens,
                previous,
            },
        );
        Ok(true)
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
        written.version += 1;
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
pub struct MemoryApiKeys(
    pub Arc<Mutex<HashMap<String, ApiKeyRecord>>>,
    Arc<Mutex<usize>>,
);

impl MemoryApiKeys {
    pub fn reads(&self) -> usize {
        *lock(&self.1)
    }
}

impl ApiKeys for MemoryApiKeys {
    async fn get(&self, hash: &str) -> Result<Option<ApiKeyRecord>, PortError> {
        *lock(&self.1) += 1;
        Ok(lock(&self.0).get(hash).cloned())
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
