//! Audiences (contract, "Audiences — the downstream view, live"). `Curate` is the api's
//! side: definitions, members, a user's audiences. The audiences function's side, which
//! keeps memberships exact, is `app::evaluate`; how: `docs/audiences.md`.

use super::idempotent::{once, Request};
use super::ports::{
    Audience, Audiences, BuildQueue, BuildTask, Counters, IdempotencyKeys, Memberships, PortError,
    Users,
};
use super::rate_limit::RateLimiter;
use super::{AppError, Caller};
use crate::contract::{
    body_hash, is_storable_user_id, AudienceDefinition, Page, Paged, RequestError,
};
use crate::domain::audience::{is_audience_id, MAX_AUDIENCES};
use crate::domain::membership::member_of;
use crate::domain::Stamp;
use std::sync::Arc;

/// An audience as `get` shows it: with its members counted.
#[derive(Debug, Clone, PartialEq)]
pub struct AudienceView {
    pub audience: Audience,
    pub members: u64,
}

/// A page of members: `(external_user_id, entered_at)`, and the cursor of the next.
#[derive(Debug, Clone, PartialEq)]
pub struct Members {
    pub members: Vec<(String, i64)>,
    pub next_cursor: Option<String>,
}

/// A page of the workspace's audiences, and the cursor of the next.
#[derive(Debug, Clone, PartialEq)]
pub struct AudiencesPage {
    pub audiences: Vec<Audience>,
    pub next_cursor: Option<String>,
}

/// The api's audience calls.
pub struct Curate<S, U, B, K, C> {
    store: S,
    users: U,
    builds: B,
    keys: K,
    limiter: Arc<RateLimiter<C>>,
}

/// A definition changes by a write conditional on the workspace's revision; one that
/// another writer outran reads again, at most this many times in all, then answers 503
/// with `Retry-After` rather than spin while others keep defining.
const MAX_DEFINITION_ATTEMPTS: usize = 5;

fn outrun() -> AppError {
    PortError::Unavailable("definitions kept changing".into()).into()
}

impl<S, U, B, K, C> Curate<S, U, B, K, C>
where
    S: Audiences + Memberships,
    U: Users,
    B: BuildQueue,
    K: IdempotencyKeys,
    C: Counters,
{
    pub fn new(store: S, users: U, builds: B, keys: K, limiter: Arc<RateLimiter<C>>) -> Self {
        Self {
            store,
            users,
            builds,
            keys,
            limiter,
        }
    }

    /// Creates or replaces an audience and starts its build; `true` when replayed.
    pub async fn define(
        &self,
        caller: &Caller,
        audience_id: &str,
        definition: Result<AudienceDefinition, RequestError>,
        idempotency_key: Option<&str>,
        stamp: Stamp,
    ) -> Result<bool, AppError> {
        let definition = match definition {
            Ok(definition) => definition,
            Err(refused) => {
                // The rate check comes first in the contract's order of checks.
                self.limiter.admit(caller, stamp.accepted_at, 1).await?;
                return Err(refused.into());
            }
        };
        let hash = body_hash(&serde_json::json!([
            "PUT",
            audience_id,
            definition.body_hash
        ]));
        let now_ms = stamp.accepted_at;
        let define = |_| async move {
            let workspace_id = caller.workspace_id.as_str();
            let mut attempts = 0..MAX_DEFINITION_ATTEMPTS;
            let audience = loop {
                attempts.next().ok_or_else(outrun)?;
                let found = self.store.list(workspace_id).await?;
                let previous = found
                    .audiences
                    .iter()
                    .find(|a| a.audience_id == audience_id);
                if previous.is_none() && found.audiences.len() >= MAX_AUDIENCES {
                    return Err(AppError::TooManyAudiences);
                }
                let rule_rev = found.revision + 1;
                let audience = Audience {
                    audience_id: audience_id.to_owned(),
                    name: definition.name.clone(),
                    rule_json: definition.rule_json.clone(),
                    rule: definition.rule.clone(),
                    rule_rev,
                    since_rev: previous.map_or(rule_rev, |p| p.since_rev),
                    building: Some(0),
                    updated_at: now_ms,
                    // A new audience starts counting; a replaced one keeps its way.
                    counted: previous.is_none_or(|p| p.counted),
                    sharded: previous.is_none_or(|p| p.sharded),
                };
                if self
                    .store
                    .define(workspace_id, &audience, found.revision)
                    .await?
                {
                    break audience;
                }
            };
            // Changes see the rule from now on; the build brings every existing user to it.
            self.start(workspace_id, &audience.audience_id, audience.rule_rev, None)
                .await?;
            Ok(Vec::new())
        };
        self.once(caller, stamp, &hash, idempotency_key, define)
            .await
    }

    /// Deletes an audience (if there is one) and drops its members; `true` when replayed.
    pub async fn delete(
        &self,
        caller: &Caller,
        audience_id: &str,
        idempotency_key: Option<&str>,
        stamp: Stamp,
    ) -> Result<bool, AppError> {
        if !is_audience_id(audience_id) {
            self.limiter.admit(caller, stamp.accepted_at, 1).await?;
            return Err(AppError::AudienceNotFound);
        }
        let hash = body_hash(&serde_json::json!(["DELETE", audience_id]));
        let delete = |_| async move {
            let workspace_id = caller.workspace_id.as_str();
            let mut attempts = 0..MAX_DEFINITION_ATTEMPTS;
            let (dropped_at, sharded) = loop {
                attempts.next().ok_or_else(outrun)?;
                let found = self.store.list(workspace_id).await?;
                let Some(sharded) = found
                    .audiences
                    .iter()
                    .find(|a| a.audience_id == audience_id)
                    .map(|a| a.sharded)
                else {
                    // As for users: deleting what is not there is done already.
                    return Ok(Vec::new());
                };
                if self
                    .store
                    .delete(workspace_id, audience_id, found.revision)
                    .await?
                {
                    break (found.revision + 1, sharded);
                }
            };
            self.start(workspace_id, audience_id, dropped_at, Some(sharded))
                .await?;
            Ok(Vec::new())
        };
        self.once(caller, stamp, &hash, idempotency_key, delete)
            .await
    }

    /// Queues the first task of a build, or of a drop (`dropped`: whether the deleted
    /// audience's list was sharded).
    async fn start(
        &self,
        workspace_id: &str,
        audience_id: &str,
        rule_rev: u64,
        dropped: Option<bool>,
    ) -> Result<(), PortError> {
        let task = BuildTask {
            workspace_id: workspace_id.to_owned(),
            audience_id: audience_id.to_owned(),
            rule_rev,
            cursor: None,
            drop: dropped.is_some(),
            sharded: dropped.unwrap_or(false),
        };
        self.builds.send(&task).await
    }

    /// A definition's change under the Idempotency-Key flow; `true` when replayed.
    async fn once<F, Fut>(
        &self,
        caller: &Caller,
        stamp: Stamp,
        hash: &str,
        idempotency_key: Option<&str>,
        change: F,
    ) -> Result<bool, AppError>
    where
        F: FnOnce(Stamp) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<usize>, AppError>>,
    {
        let request = Request {
            caller,
            stamp,
            cost: 1,
            body_hash: hash,
            idempotency_key,
        };
        let done = once(&self.keys, &self.limiter, request, change).await?;
        Ok(done.replayed)
    }

    pub async fn get(
        &self,
        caller: &Caller,
        audience_id: &str,
        now_ms: i64,
    ) -> Result<AudienceView, AppError> {
        self.limiter.admit(caller, now_ms, 1).await?;
        if !is_audience_id(audience_id) {
            return Err(AppError::AudienceNotFound);
        }
        let audience = self
            .store
            .get(&caller.workspace_id, audience_id)
            .await?
            .ok_or(AppError::AudienceNotFound)?;
        self.view(&caller.workspace_id, audience).await
    }

    /// The workspace's audiences, by id, a page at a time, without counts (`get` has
    /// each one's).
    pub async fn list(
        &self,
        caller: &Caller,
        page: Result<Page, RequestError>,
        now_ms: i64,
    ) -> Result<AudiencesPage, AppError> {
        self.limiter.admit(caller, now_ms, 1).await?;
        let page = page?;
        let all = self.store.list(&caller.workspace_id).await?.audiences;
        let (audiences, next_cursor) = page.cut(all, |a| &a.audience_id, Paged::Audiences);
        Ok(AudiencesPage {
            audiences,
            next_cursor,
        })
    }

    async fn view(&self, workspace_id: &str, audience: Audience) -> Result<AudienceView, AppError> {
        let started = (audience.audience_id.as_str(), audience.since_rev);
        let members = if audience.counted {
            self.store.count(workspace_id, started).await?
        } else {
            self.store.count_listed(workspace_id, started).await?
        };
        Ok(AudienceView { audience, members })
    }

    pub async fn members(
        &self,
        caller: &Caller,
        audience_id: &str,
        page: Result<Page, RequestError>,
        now_ms: i64,
    ) -> Result<Members, AppError> {
        self.limiter.admit(caller, now_ms, 1).await?;
        if !is_audience_id(audience_id) {
            return Err(AppError::AudienceNotFound);
        }
        let page = page?;
        let workspace_id = caller.workspace_id.as_str();
        let audience = self
            .store
            .get(workspace_id, audience_id)
            .await?
            .ok_or(AppError::AudienceNotFound)?;
        let (members, more) = self
            .store
            .members(workspace_id, &audience, page.limit, page.after.as_deref())
            .await?;
        let next_cursor = more
            .then(|| {
                let paged = Paged::Members { audience_id };
                members.last().map(|(id, _)| paged.cursor(id))
            })
            .flatten();
        Ok(Members {
            members,
            next_cursor,
        })
    }

    /// The audiences a user is in now, in id order: `(audience_id, entered_at)`; a user
    /// with no profile (never written, or erased) is not found, as `GET …/users/{id}`.
    pub async fn of_user(
        &self,
        caller: &Caller,
        external_user_id: &str,
        now_ms: i64,
    ) -> Result<Vec<(String, i64)>, AppError> {
        self.limiter.admit(caller, now_ms, 1).await?;
        if !is_storable_user_id(external_user_id) {
            return Err(RequestError::UserNotFound.into());
        }
        let workspace_id = caller.workspace_id.as_str();
        let (user, found, state) = tokio::join!(
            self.users.get(workspace_id, external_user_id),
            self.store.list(workspace_id),
            self.store.standing(workspace_id, external_user_id)
        );
        if !user?.is_some_and(|user| user.profile.exists()) {
            return Err(RequestError::UserNotFound.into());
        }
        let (found, state) = (found?, state?);
        Ok(found
            .audiences
            .iter()
            .filter_map(|audience| {
                member_of(&state, audience).map(|s| (audience.audience_id.clone(), s.entered_at))
            })
            .collect())
    }
}

#[cfg(test)]
#[path = "audiences_tests.rs"]
mod tests;
