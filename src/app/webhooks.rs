//! Webhooks (contract, "Webhooks"): the endpoints a workspace subscribes, the api's
//! side. Delivery is built in the steps of `docs/webhooks.md` §7.

use super::ports::{
    Counters, DeliveryLog, Endpoint, LoggedAttempt, PortError, ReplayTask, ReplayTasks, Stored,
    Webhooks,
};
use super::rate_limit::RateLimiter;
use super::{AppError, Caller};
use crate::contract::{Page, Paged, ReplayRequest, RequestError, WebhookDefinition};
use crate::domain::webhook::{
    is_webhook_id, secret_from, LogRange, Secret, MAX_WEBHOOKS, PREVIOUS_SECRET_SIGNS_FOR,
    SECRET_BYTES,
};
use std::sync::Arc;

/// Where a new secret's random bytes come from: the OS's generator in the function, a
/// script in tests.
pub type Random = Arc<dyn Fn() -> Result<[u8; SECRET_BYTES], PortError> + Send + Sync>;

/// The operating system's generator.
pub fn os_random() -> Random {
    Arc::new(|| {
        use rand::TryRngCore;
        let mut bytes = [0; SECRET_BYTES];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|_| PortError::Unavailable("no random bytes".into()))?;
        Ok(bytes)
    })
}

/// What a `PUT` did: the endpoint, and whether it is new (then its secret is shown).
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribed {
    pub endpoint: Endpoint,
    pub created: bool,
}

/// A page of the workspace's endpoints, and the cursor of the next.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointsPage {
    pub endpoints: Vec<Endpoint>,
    pub next_cursor: Option<String>,
}

/// A page of an endpoint's attempt log, newest first, and the cursor of the next.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptsPage {
    pub attempts: Vec<LoggedAttempt>,
    pub next_cursor: Option<String>,
}

/// The api's webhook calls.
pub struct Subscriptions<W, C, R> {
    store: W,
    /// Where a replay's first page waits for the webhooks function.
    replays: R,
    limiter: Arc<RateLimiter<C>>,
    random: Random,
}

impl<W: Webhooks + DeliveryLog, C: Counters, R: ReplayTasks> Subscriptions<W, C, R> {
    /// Secrets from the OS's generator.
    pub fn new(store: W, replays: R, limiter: Arc<RateLimiter<C>>) -> Self {
        Self::with_random(store, replays, limiter, os_random())
    }

    pub fn with_random(store: W, replays: R, limiter: Arc<RateLimiter<C>>, random: Random) -> Self {
        Self {
            store,
            replays,
            limiter,
            random,
        }
    }

    /// Creates an endpoint (with a new secret) or replaces one's settings (its secrets
    /// kept). `reads_pii`: whether the caller's key may read profiles, which
    /// `"include": ["profile"]` sends.
    pub async fn put(
        &self,
        caller: &Caller,
        webhook_id: &str,
        definition: Result<WebhookDefinition, RequestError>,
        reads_pii: bool,
        now_ms: i64,
    ) -> Result<Subscribed, AppError> {
        self.limiter.admit(caller, now_ms, 1).await?;
        if !is_webhook_id(webhook_id) {
            return Err(RequestError::InvalidWebhookId.into());
        }
        let definition = definition?;
        if definition.include_profile && !reads_pii {
            return Err(AppError::ProfileNeedsPiiScope);
        }
        let endpoint = Endpoint {
            webhook_id: webhook_id.to_owned(),
            url: definition.url.into(),
            events: definition.events,
            audiences: definition.audiences,
            include_profile: definition.include_profile,
            secret: Secret(self.new_secret()?),
            previous_secret: None,
            created_at: now_ms,
            updated_at: now_ms,
            failing_since: None,
            disabled: None,
        };
        match self
            .store
            .put(&caller.workspace_id, &endpoint, MAX_WEBHOOKS)
            .await?
        {
            Stored::Created => Ok(Subscribed {
                endpoint,
                created: true,
            }),
            Stored::Replaced(endpoint) => Ok(Subscribed {
                endpoint: *endpoint,
                created: false,
            }),
            Stored::Full => Err(AppError::TooManyWebhooks),
        }
    }

    pub async fn get(
        &self,
        caller: &Caller,
        webhook_id: &str,
        now_ms: i64,
    ) -> Result<Endpoint, AppError> {
        self.admit(caller, webhook_id, now_ms).await?;
        self.found(&caller.workspace_id, webhook_id).await
    }

    /// The endpoint, or the error of one that is not there.
    async fn found(&self, workspace_id: &str, webhook_id: &str) -> Result<Endpoint, AppError> {
        self.store
            .endpoint(workspace_id, webhook_id)
            .await?
            .ok_or(AppError::WebhookNotFound)
    }

    /// The workspace's endpoints by id, a page at a time.
    pub async fn list(
        &self,
        caller: &Caller,
        page: Result<Page, RequestError>,
        now_ms: i64,
    ) -> Result<EndpointsPage, AppError> {
        self.limiter.admit(caller, now_ms, 1).await?;
        let page = page?;
        let all = self.store.endpoints(&caller.workspace_id).await?;
        let (endpoints, next_cursor) = page.cut(all, |e| &e.webhook_id, Paged::Webhooks);
        Ok(EndpointsPage {
            endpoints,
            next_cursor,
        })
    }

    /// A page of the endpoint's attempt log, newest first (30 days of it).
    pub async fn deliveries(
        &self,
        caller: &Caller,
        webhook_id: &str,
        page: Result<Page, RequestError>,
        now_ms: i64,
    ) -> Result<AttemptsPage, AppError> {
        self.admit(caller, webhook_id, now_ms).await?;
        let page = page?;
        let workspace_id = &caller.workspace_id;
        let endpoint = self.found(workspace_id, webhook_id).await?;
        // An endpoint made again under an old id shows none of its predecessor's lines.
        let range = LogRange {
            since_ms: endpoint.created_at,
            after: page.after,
            ..LogRange::default()
        };
        let found = self
            .store
            .attempts(workspace_id, webhook_id, &range, page.limit)
            .await?;
        let paged = Paged::Deliveries { webhook_id };
        Ok(AttemptsPage {
            attempts: found.attempts,
            next_cursor: found.next_after.map(|place| paged.cursor(&place)),
        })
    }

    /// Sends the endpoint's logged deliveries of a time range again, a page at a time
    /// by the webhooks function (`Deliveries::replay`). Returns the replay's id. A
    /// disabled endpoint is refused: it would give every one of them up unsent.
    pub async fn replay(
        &self,
        caller: &Caller,
        webhook_id: &str,
        request: Result<ReplayRequest, RequestError>,
        now_ms: i64,
    ) -> Result<String, AppError> {
        self.admit(caller, webhook_id, now_ms).await?;
        let request = request?;
        let workspace_id = &caller.workspace_id;
        let endpoint = self.found(workspace_id, webhook_id).await?;
        if endpoint.disabled.is_some() {
            return Err(AppError::WebhookDisabled);
        }
        let replay_id = format!("rpl_{}", hex::encode(&(self.random)()?[..12]));
        let task = ReplayTask {
            replay_id: replay_id.clone(),
            workspace_id: workspace_id.clone(),
            webhook_id: webhook_id.to_owned(),
            since_ms: request.since_ms.max(endpoint.created_at),
            until_ms: request.until_ms,
            only: request.only,
            after: None,
        };
        self.replays.schedule(&task).await?;
        Ok(replay_id)
    }

    /// Gives an endpoint a new secret; the current one signs for
    /// [`PREVIOUS_SECRET_SIGNS_FOR`] more.
    pub async fn rotate(
        &self,
        caller: &Caller,
        webhook_id: &str,
        now_ms: i64,
    ) -> Result<Endpoint, AppError> {
        self.admit(caller, webhook_id, now_ms).await?;
        let secret = self.new_secret()?;
        let previous_until = now_ms + PREVIOUS_SECRET_SIGNS_FOR.as_millis() as i64;
        self.store
            .rotate(&caller.workspace_id, webhook_id, &secret, previous_until)
            .await?
            .ok_or(AppError::WebhookNotFound)
    }

    /// Deletes an endpoint; deleting one that is not there is done already.
    pub async fn delete(
        &self,
        caller: &Caller,
        webhook_id: &str,
        now_ms: i64,
    ) -> Result<(), AppError> {
        self.admit(caller, webhook_id, now_ms).await?;
        self.store.delete(&caller.workspace_id, webhook_id).await?;
        Ok(())
    }

    /// The rate check, then an id no endpoint can have is one that is not there.
    async fn admit(&self, caller: &Caller, webhook_id: &str, now_ms: i64) -> Result<(), AppError> {
        self.limiter.admit(caller, now_ms, 1).await?;
        if !is_webhook_id(webhook_id) {
            return Err(AppError::WebhookNotFound);
        }
        Ok(())
    }

    fn new_secret(&self) -> Result<String, PortError> {
        Ok(secret_from(&(self.random)()?))
    }
}

#[cfg(test)]
#[path = "webhooks_tests.rs"]
mod tests;
