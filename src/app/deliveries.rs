//! Webhook delivery (`docs/webhooks.md` §1–2): each (endpoint, user) is a lane. The
//! fan-out appends at a lane's tail; one worker at a time attempts its head, so a
//! later event waits while an earlier one is retried, and a dead endpoint holds only
//! its own lanes. Wakes (a queue's message, delayed for a retry) start the worker; a
//! lane's lease says one holds it, so appends wake one only when none does (or when
//! the lease is the appending message's own, taken by an append of it whose wake may
//! not have gone out).

use super::ports::{
    Appended, DeliveryLog, DeliveryStatus, Disabled, Disabling, Endpoint, Failed, Head, Lane,
    LaneHead, Lanes, LoggedAttempt, NewDelivery, PortError, Queued, ReplayTask, ReplayTasks,
    Sender, Users, Wakes, Webhooks,
};
use super::AppError;
use crate::contract::{
    delivery_body, delivery_order, disabled_event, with_profile, with_sequence, WebhookEvent,
    ENDPOINT_LANE,
};
use crate::domain::user_view;
use crate::domain::webhook::{
    health_change, message_id, next_wait, outcome, signature, DisabledReason, EventType,
    HealthChange, LogRange, Outcome, ATTEMPT_TIMEOUT, FAILING_DISABLES_AFTER,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

/// Sequence numbers an instance takes at once per endpoint: one write per hundred
/// deliveries on the endpoint's counter, not one each (`docs/webhooks.md` §2).
pub const SEQUENCE_BLOCK: u64 = 100;
/// Deliveries one wake attempts before handing the rest of its lane to a fresh wake:
/// an invocation's work stays bounded however long a lane grows.
pub const DELIVERIES_PER_WAKE: usize = 10;
/// How long a worker holds a lane without a word (an invocation's timeout and more):
/// past it, the next append wakes another.
pub const LANE_LEASE: Duration = Duration::from_secs(60);
/// How long an attempt whose profile could not be read waits for another try.
const PROFILE_READ_RETRY: Duration = Duration::from_secs(5);
/// A wake hands its lane to a fresh one rather than start an attempt (up to
/// `ATTEMPT_TIMEOUT`) with less than this much more of its invocation left.
const DEADLINE_MARGIN: Duration = Duration::from_secs(3);
/// How long an instance keeps a workspace's endpoints: a new or deleted endpoint
/// reaches the appends within this (`docs/webhooks.md` §5), and the heavy workspace's
/// events read its endpoints once per instance this often, not once each.
pub const ENDPOINTS_KEPT_FOR: Duration = Duration::from_secs(5);
/// Appends a lane's newer sequence sends back before the append gives up (each takes
/// a fresh block, higher than any the lane has seen; more than one is a race of three).
const SEQUENCE_TRIES: usize = 3;

/// Log lines a replay's page reads: each final one a lane append (a write or two).
pub const REPLAY_PAGE: usize = 100;

/// Milliseconds since the epoch: the system's clock in the function, a test's own.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;
/// A draw from `domain::webhook::JITTER`.
pub type Jitter = Arc<dyn Fn() -> f64 + Send + Sync>;

/// What a wake did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drained {
    pub delivered: usize,
    /// Given up after the schedule's last attempt, or their endpoint deleted or
    /// disabled.
    pub given_up: usize,
    /// Failed attempts, each waiting for its next.
    pub failed: usize,
    /// Attempts whose line the log did not take (throttled, say): delivery never waits
    /// on its log.
    pub unlogged: usize,
    /// Attempts put off because the profile they send could not be read.
    pub deferred: usize,
}

impl std::ops::AddAssign for Drained {
    fn add_assign(&mut self, other: Drained) {
        self.delivered += other.delivered;
        self.given_up += other.given_up;
        self.failed += other.failed;
        self.unlogged += other.unlogged;
        self.deferred += other.deferred;
    }
}

/// What a replay's page did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Replayed {
    /// Deliveries appended again.
    pub resent: usize,
    /// Whether a next page was scheduled.
    pub more: bool,
}

/// Per workspace, its endpoints and when they were read (ms).
type Subscribers = HashMap<String, (i64, Arc<[Endpoint]>)>;

pub struct Deliveries<W, L, K, S, U> {
    endpoints: W,
    lanes: L,
    wakes: K,
    sender: S,
    /// The profiles `include: ["profile"]` sends, read at each attempt.
    users: U,
    clock: Clock,
    jitter: Jitter,
    /// Per endpoint (workspace, webhook id), the sequence numbers left of this
    /// instance's block: next, end.
    blocks: Mutex<HashMap<(String, String), (u64, u64)>>,
    subscribers: Mutex<Subscribers>,
    /// [`DELIVERIES_PER_WAKE`]; fewer in tests, to run the hand-over often.
    per_wake: usize,
    /// Divides the schedule's waits and the failing allowance (`WEBHOOK_TIME_FACTOR`:
    /// 1 on AWS; more locally, to run days of retries in minutes).
    time_factor: f64,
}

/// An attempt as it went: its outcome, and for the log the answer's status or why none
/// came, and how long it took.
struct Attempted {
    outcome: Outcome,
    http_status: Option<u16>,
    error: Option<String>,
    /// `None` when nothing was sent.
    latency_ms: Option<i64>,
}

impl Attempted {
    /// None made: the endpoint is disabled.
    fn disabled() -> Self {
        Attempted {
            outcome: Outcome::Gone,
            http_status: None,
            error: Some("disabled".into()),
            latency_ms: None,
        }
    }
}

/// The body of `message` on `lane` at `sequence`.
fn event_body(lane: &Lane, message: &WebhookEvent, sequence: u64) -> String {
    delivery_body(
        message.event_type,
        &message.timestamp,
        &lane.webhook_id,
        sequence,
        &message.data,
    )
}

impl<W, L, K, S, U> Deliveries<W, L, K, S, U>
where
    W: Webhooks + DeliveryLog,
    L: Lanes,
    K: Wakes + ReplayTasks,
    S: Sender,
    U: Users,
{
    pub fn new(
        endpoints: W,
        lanes: L,
        wakes: K,
        sender: S,
        users: U,
        clock: Clock,
        jitter: Jitter,
    ) -> Self {
        Self {
            endpoints,
            lanes,
            wakes,
            sender,
            users,
            clock,
            jitter,
            blocks: Mutex::default(),
            subscribers: Mutex::default(),
            per_wake: DELIVERIES_PER_WAKE,
            time_factor: 1.0,
        }
    }

    /// Waits divided by `factor` (at least 1).
    pub fn with_time_factor(self, factor: f64) -> Self {
        Self {
            time_factor: factor.max(1.0),
            ..self
        }
    }

    #[cfg(test)]
    pub(crate) fn with_per_wake(self, per_wake: usize) -> Self {
        Self { per_wake, ..self }
    }

    /// The fan-out: appends a bus event to the lane of each enabled endpoint of its
    /// workspace that subscribes to it. Returns how many. A disabled one gets a line in
    /// its log instead, given up unsent, so that a replay after a `PUT` enabling it
    /// sends what it missed (best effort, as every line). If one append fails the
    /// event fails whole, and its intake message comes again: the lanes it reached get
    /// it twice, with one `webhook-id`.
    pub async fn fan_out(&self, event: &WebhookEvent) -> Result<usize, AppError> {
        let endpoints = self.subscribers(&event.workspace_id).await?;
        let lane = |endpoint: &Endpoint| Lane {
            workspace_id: event.workspace_id.clone(),
            webhook_id: endpoint.webhook_id.clone(),
            user_id: event.external_user_id.clone(),
        };
        let (enabled, disabled): (Vec<&Endpoint>, Vec<&Endpoint>) = endpoints
            .iter()
            .filter(|endpoint| subscribes(endpoint, event))
            .partition(|endpoint| endpoint.disabled.is_none());
        let lanes: Vec<Lane> = enabled.into_iter().map(lane).collect();
        let appends = lanes.iter().map(|lane| self.enqueue(lane, event));
        // An endpoint's own events (`webhook.disabled`) are not kept for a replay: one
        // would be the endpoint's own disabling.
        let missable = event.event_type != EventType::WebhookDisabled;
        let missed = disabled
            .into_iter()
            .filter(|_| missable)
            .map(|endpoint| self.miss(lane(endpoint), event));
        let (appended, missed) = futures::join!(
            futures::future::join_all(appends),
            futures::future::join_all(missed)
        );
        for appended in appended {
            appended?;
        }
        let mut count = lanes.len();
        for enabled_since in missed {
            count += enabled_since?;
        }
        Ok(count)
    }

    /// `event` for an endpoint the kept list shows disabled: read again (a `PUT` may
    /// have enabled it within the last [`ENDPOINTS_KEPT_FOR`]: then it is appended),
    /// else logged given up unsent, for a replay. Returns how many it appended.
    async fn miss(&self, lane: Lane, event: &WebhookEvent) -> Result<usize, AppError> {
        let endpoint = self
            .endpoints
            .endpoint(&lane.workspace_id, &lane.webhook_id)
            .await?;
        match endpoint {
            Some(endpoint) if endpoint.disabled.is_none() => {
                self.enqueue(&lane, event).await?;
                Ok(1)
            }
            Some(_) => {
                let unsent = Queued {
                    slot: 0,
                    message_id: message_id(&event.event_id),
                    sequence: 0,
                    order: event.user_version,
                    body: event_body(&lane, event, 0),
                };
                let now = (self.clock)();
                self.log(&lane, &unsent, now, Attempted::disabled(), None)
                    .await;
                Ok(0)
            }
            None => Ok(0),
        }
    }

    /// The workspace's endpoints, as read at most [`ENDPOINTS_KEPT_FOR`] ago.
    async fn subscribers(&self, workspace_id: &str) -> Result<Arc<[Endpoint]>, AppError> {
        let now = (self.clock)();
        let kept = self.subscribers_kept().get(workspace_id).cloned();
        if let Some((read_at, endpoints)) = kept {
            if now - read_at < millis(ENDPOINTS_KEPT_FOR) {
                return Ok(endpoints);
            }
        }
        let endpoints: Arc<[Endpoint]> = self.endpoints.endpoints(workspace_id).await?.into();
        self.subscribers_kept()
            .insert(workspace_id.to_owned(), (now, Arc::clone(&endpoints)));
        Ok(endpoints)
    }

    fn subscribers_kept(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `message` to its lane, the next `sequence` of the endpoint in its body,
    /// and wakes the lane's worker if none holds it (`append_wakes`). Returns the slot. Appended twice
    /// (the fan-out's message delivered again), it is delivered twice with one
    /// `webhook-id`: receivers drop the repeat.
    pub async fn enqueue(&self, lane: &Lane, message: &WebhookEvent) -> Result<u64, AppError> {
        let id = message_id(&message.event_id);
        let body = |sequence| event_body(lane, message, sequence);
        self.append_next(lane, &id, message.user_version, body)
            .await
    }

    /// Appends delivery `id` to its lane, its body made with the endpoint's next
    /// `sequence`, `order` placing it among the user's events, and wakes the lane's
    /// worker if none holds it (`append_wakes`). Returns the slot.
    async fn append_next(
        &self,
        lane: &Lane,
        id: &str,
        order: u64,
        body: impl Fn(u64) -> String,
    ) -> Result<u64, AppError> {
        let mut fresh_block = false;
        for _ in 0..SEQUENCE_TRIES {
            let sequence = self.next_sequence(lane, fresh_block).await?;
            let body = body(sequence);
            let now = (self.clock)();
            let lease_until = now + millis(LANE_LEASE);
            let delivery = NewDelivery {
                message_id: id,
                sequence,
                order,
                body: &body,
            };
            match self.lanes.append(lane, delivery, now, lease_until).await? {
                Appended::At { slot, wake } => {
                    if wake {
                        self.wakes.wake(lane, Duration::ZERO).await?;
                    }
                    return Ok(slot);
                }
                Appended::SequenceBehind => fresh_block = true,
            }
        }
        Err(PortError::Unavailable("sequence blocks raced".into()).into())
    }

    /// A replay's page (`POST …/{id}/replay`, `docs/webhooks.md` §5): the endpoint's
    /// final log lines (`delivered`, `given_up`) in the task's range, oldest first, each
    /// message appended again to its lane: the same `webhook-id` (a receiver that kept
    /// it drops the repeat), the endpoint's next `sequence`, the user's version placing
    /// it among what the lane holds. Then the next page is scheduled. Nothing is
    /// resent to an endpoint deleted or disabled since. A page that fails comes again
    /// whole: the lines it appended already are sent twice, under one `webhook-id`.
    pub async fn replay(&self, task: &ReplayTask) -> Result<Replayed, AppError> {
        let (workspace_id, webhook_id) = (&task.workspace_id, &task.webhook_id);
        // The api clamped `since_ms` to the endpoint's creation: one created after it
        // is another endpoint under the same id, which gets none of these.
        match self.endpoints.endpoint(workspace_id, webhook_id).await? {
            Some(endpoint)
                if endpoint.disabled.is_none() && endpoint.created_at <= task.since_ms => {}
            _ => return Ok(Replayed::default()),
        }
        let range = LogRange {
            since_ms: task.since_ms,
            until_ms: Some(task.until_ms),
            after: task.after.clone(),
            oldest_first: true,
        };
        let page = self
            .endpoints
            .attempts(workspace_id, webhook_id, &range, REPLAY_PAGE)
            .await?;
        let mut seen = HashSet::new();
        let mut by_user: BTreeMap<&str, Vec<&LoggedAttempt>> = BTreeMap::new();
        for line in &page.attempts {
            let chosen = match task.only {
                Some(only) => line.status == only,
                None => line.status != DeliveryStatus::Retrying,
            };
            if chosen && seen.insert(&line.message_id) {
                by_user.entry(&line.user_id).or_default().push(line);
            }
        }
        // Users side by side, each one's lines in the order they were logged.
        let users = by_user.into_iter().map(|(user_id, lines)| async move {
            let lane = Lane {
                workspace_id: workspace_id.clone(),
                webhook_id: webhook_id.clone(),
                user_id: user_id.to_owned(),
            };
            for line in &lines {
                // An endpoint's own event names no version: it goes first.
                let order = delivery_order(&line.body).unwrap_or(0);
                let body = |sequence| {
                    with_sequence(&line.body, sequence).unwrap_or_else(|| line.body.clone())
                };
                self.append_next(&lane, &line.message_id, order, body)
                    .await?;
            }
            Ok::<_, AppError>(lines.len())
        });
        let mut resent = 0;
        for appended in futures::future::join_all(users).await {
            resent += appended?;
        }
        if let Some(after) = &page.next_after {
            let next = ReplayTask {
                after: Some(after.clone()),
                ..task.clone()
            };
            self.wakes.schedule(&next).await?;
        }
        Ok(Replayed {
            resent,
            more: page.next_after.is_some(),
        })
    }

    /// A wake: attempts the lane's deliveries in order, at most
    /// [`DELIVERIES_PER_WAKE`], until one fails (its next attempt timed by a delayed
    /// wake) or none is left. A wake before the head's time sets its timer again (a
    /// wake sent twice, or after its sender failed, so none is lost). The deliveries
    /// behind the head are first put in the order of their users' versions: events
    /// the bus or the intake queue swapped reach the endpoint as the user changed.
    /// No attempt starts that could outlast `deadline_ms` (the invocation's): the lane
    /// goes to a fresh wake instead, so a slow endpoint never times the batch out.
    pub async fn drain(&self, lane: &Lane, deadline_ms: i64) -> Result<Drained, AppError> {
        let mut drained = Drained::default();
        for _ in 0..self.per_wake {
            let head = self.lanes.head(lane).await?;
            let next = match &head.next {
                None => return Ok(drained),
                Some(Head::Waiting(next)) => next.clone(),
                Some(Head::Expired(slot)) => {
                    drained.given_up += 1;
                    if !self.advance(lane, *slot).await? {
                        return Ok(drained);
                    }
                    continue;
                }
            };
            if let Some(arranged) = arrangement(&head, &next) {
                // Arranged or not (the lane changed meanwhile), the head is read again.
                self.lanes.arrange(lane, &head, &arranged).await?;
                continue;
            }
            let now = (self.clock)();
            if head.next_at > now {
                self.wakes.wake(lane, wait_until(now, head.next_at)).await?;
                return Ok(drained);
            }
            let endpoint = self
                .endpoints
                .endpoint(&lane.workspace_id, &lane.webhook_id)
                .await?;
            // Gone or disabled: nothing more is sent to it, the lane is emptied (a
            // `PUT` enabling it again starts afresh; `replay` resends what it missed).
            let endpoint = match endpoint {
                Some(endpoint) if endpoint.disabled.is_none() => endpoint,
                gone_or_disabled => {
                    if let Some(disabled) = gone_or_disabled.and_then(|e| e.disabled) {
                        self.announce(lane, disabled).await?;
                        let unsent = Attempted::disabled();
                        drained.unlogged += self.log(lane, &next, now, unsent, None).await;
                    }
                    drained.given_up += 1;
                    if !self.advance(lane, next.slot).await? {
                        return Ok(drained);
                    }
                    continue;
                }
            };
            let failed = head.attempts + 1;
            // A profile that cannot be read now puts the attempt off a few seconds:
            // neither an attempt nor a failure of the endpoint.
            let Ok(body) = self.body_to_send(lane, &endpoint, &next).await else {
                drained.deferred += 1;
                self.wakes.wake(lane, PROFILE_READ_RETRY).await?;
                return Ok(drained);
            };
            // Judged after the reads, which take time (a throttled one seconds): no
            // attempt starts that could outlast the invocation, and its timestamp and
            // latency are its own.
            let now = (self.clock)();
            if now.saturating_add(millis(ATTEMPT_TIMEOUT + DEADLINE_MARGIN)) > deadline_ms {
                self.wakes.wake(lane, Duration::ZERO).await?;
                return Ok(drained);
            }
            let attempted = self.attempt(&endpoint, &next.message_id, &body, now).await;
            let outcome = attempted.outcome;
            let disabled = self.record_health(lane, &endpoint, outcome, now).await?;
            let wait = match outcome {
                Outcome::Delivered => {
                    drained.delivered += 1;
                    None
                }
                // The attempt that disabled the endpoint (a 410, or 5 days failing).
                _ if disabled => {
                    drained.given_up += 1;
                    None
                }
                // Any other failure, a 410 that did not disable the endpoint among them
                // (a `PUT` re-pointed it since it was read, or another worker disabled
                // it: then the next wake gives the message up). Before the schedule's
                // last wait, the endpoint's `Retry-After` replaces the step; after it, the
                // message is given up.
                Outcome::Gone | Outcome::Retry { .. } => {
                    let after = match outcome {
                        Outcome::Retry { after } => after,
                        _ => None,
                    };
                    match next_wait(failed, (self.jitter)()) {
                        Some(step) => Some(after.unwrap_or(step.div_f64(self.time_factor))),
                        None => {
                            drained.given_up += 1;
                            None
                        }
                    }
                }
            };
            // The log line is written beside the lane's move, not before it: the log
            // is best effort and on no delivery's path.
            let line = self.log(lane, &next, now, attempted, wait);
            if let Some(wait) = wait {
                drained.failed += 1;
                let next_at = now + millis(wait);
                let lease_until = next_at + millis(LANE_LEASE);
                let failed = Failed {
                    attempts: failed,
                    next_at,
                    lease_until,
                };
                let moved = self.lanes.postpone(lane, next.slot, failed);
                let (unlogged, postponed) = futures::join!(line, moved);
                drained.unlogged += unlogged;
                if postponed? {
                    self.wakes.wake(lane, wait).await?;
                } else {
                    self.watch_other_worker(lane).await?;
                }
                return Ok(drained);
            }
            let (unlogged, more) = futures::join!(line, self.advance(lane, next.slot));
            drained.unlogged += unlogged;
            if !more? {
                return Ok(drained);
            }
        }
        // More wait: a fresh wake carries on.
        self.wakes.wake(lane, Duration::ZERO).await?;
        Ok(drained)
    }

    /// Writes what an attempt's `outcome` says of its endpoint's health (`docs/webhooks.md`
    /// §1): a failing streak started or ended, or the endpoint disabled (a 410, or five
    /// days with no 2xx), its disabling then announced. Whether this disabled it.
    async fn record_health(
        &self,
        lane: &Lane,
        endpoint: &Endpoint,
        outcome: Outcome,
        now: i64,
    ) -> Result<bool, AppError> {
        let (workspace_id, webhook_id) = (&lane.workspace_id, &lane.webhook_id);
        let allowance = FAILING_DISABLES_AFTER.div_f64(self.time_factor);
        match health_change(outcome, endpoint.failing_since, now, allowance) {
            HealthChange::Unchanged => {}
            HealthChange::Recovered => {
                self.endpoints
                    .mark_recovered(workspace_id, webhook_id)
                    .await?
            }
            HealthChange::StartedFailing(since) => {
                self.endpoints
                    .mark_failing(workspace_id, webhook_id, since)
                    .await?
            }
            HealthChange::Disable(reason) => {
                // Not disabled here if another worker did first (it announces), a `PUT`
                // changed the endpoint, or a 2xx ended the streak meanwhile (then the
                // message is retried as usual).
                let disabling = Disabling {
                    reason,
                    at: now,
                    updated_at: endpoint.updated_at,
                    failing_since: endpoint
                        .failing_since
                        .filter(|_| reason == DisabledReason::Failing),
                };
                let disabled = self
                    .endpoints
                    .disable(workspace_id, webhook_id, disabling)
                    .await?;
                if disabled {
                    let at = now;
                    let announced = false;
                    self.announce(
                        lane,
                        Disabled {
                            reason,
                            at,
                            announced,
                        },
                    )
                    .await?;
                }
                return Ok(disabled);
            }
        }
        Ok(false)
    }

    /// Hands the endpoint's `webhook.disabled` to the lanes of the workspace's other
    /// endpoints that take it, once per disabling: a worker that dies between the two
    /// writes leaves it unannounced, and the next worker on any of its lanes appends it
    /// again under the same id.
    async fn announce(&self, lane: &Lane, disabled: Disabled) -> Result<(), AppError> {
        if disabled.announced {
            return Ok(());
        }
        let (workspace_id, webhook_id) = (&lane.workspace_id, &lane.webhook_id);
        let event = disabled_event(workspace_id, webhook_id, disabled.reason, disabled.at);
        self.fan_out(&event).await?;
        self.endpoints
            .mark_announced(workspace_id, webhook_id, disabled.at)
            .await?;
        Ok(())
    }

    /// Moves the lane past `slot`; whether more wait for this worker.
    async fn advance(&self, lane: &Lane, slot: u64) -> Result<bool, AppError> {
        let lease_until = (self.clock)() + millis(LANE_LEASE);
        match self.lanes.advance(lane, slot, lease_until).await? {
            Some(more) => Ok(more),
            None => {
                self.watch_other_worker(lane).await?;
                Ok(false)
            }
        }
    }

    /// Another worker moved the lane (SQS gave a wake to two): this one leaves it to
    /// that one, and a wake after a lease finds the lane again should that one die
    /// (the message both had is gone once this one succeeds).
    async fn watch_other_worker(&self, lane: &Lane) -> Result<(), AppError> {
        Ok(self.wakes.wake(lane, LANE_LEASE).await?)
    }

    /// Writes an attempt (or a delivery given up unsent) to its endpoint's log; `wait`:
    /// until its next attempt, if there is one. Best effort: 1 if the line could not be
    /// written, counted in the batch's log line; the lane moves on regardless, so a
    /// throttled log never holds a retry back or sends a delivery twice.
    async fn log(
        &self,
        lane: &Lane,
        next: &Queued,
        at: i64,
        attempted: Attempted,
        wait: Option<Duration>,
    ) -> usize {
        let status = match (attempted.outcome, wait) {
            (Outcome::Delivered, _) => DeliveryStatus::Delivered,
            (_, Some(_)) => DeliveryStatus::Retrying,
            (_, None) => DeliveryStatus::GivenUp,
        };
        let line = LoggedAttempt {
            at,
            message_id: next.message_id.clone(),
            user_id: lane.user_id.clone(),
            sequence: next.sequence,
            body: next.body.clone(),
            status,
            http_status: attempted.http_status,
            error: attempted.error,
            latency_ms: attempted.latency_ms,
            next_attempt_at: wait.map(|wait| at + millis(wait)),
        };
        let written = self
            .endpoints
            .record(&lane.workspace_id, &lane.webhook_id, &line)
            .await;
        usize::from(written.is_err())
    }

    /// The body an attempt sends: as queued, and for an endpoint that asked for it
    /// (`include: ["profile"]`) with the user as a read shows it now, email and version
    /// included (`null` once erased), in `data.profile`. The log keeps the body as
    /// queued, so no table holds a profile a second time.
    async fn body_to_send(
        &self,
        lane: &Lane,
        endpoint: &Endpoint,
        next: &Queued,
    ) -> Result<String, AppError> {
        // An endpoint's own events (`webhook.disabled`) are about no user.
        if !endpoint.include_profile || lane.user_id == ENDPOINT_LANE {
            return Ok(next.body.clone());
        }
        let user = self.users.get(&lane.workspace_id, &lane.user_id).await?;
        let profile =
            user.filter(|user| user.profile.exists())
                .map_or(serde_json::Value::Null, |user| {
                    let mut view = user_view(&user.external_user_id, &user.profile, true);
                    view["version"] = user.version.into();
                    view
                });
        // A queued body is always one `delivery_body` made; were it not, it goes as is.
        Ok(with_profile(&next.body, profile).unwrap_or_else(|| next.body.clone()))
    }

    /// One attempt of `body`, signed now by the endpoint's secrets (the previous one
    /// too while it still signs). No answer is a failed attempt.
    async fn attempt(
        &self,
        endpoint: &Endpoint,
        message_id: &str,
        body: &str,
        now: i64,
    ) -> Attempted {
        let mut secrets = vec![endpoint.secret.0.as_str()];
        if let Some((previous, until)) = &endpoint.previous_secret {
            if *until > now {
                secrets.push(previous.0.as_str());
            }
        }
        let timestamp_s = now.div_euclid(1000);
        let Ok(signed) = signature(&secrets, message_id, timestamp_s, body) else {
            // A stored secret is always one the api made; were it not, no attempt can
            // succeed, and the schedule gives the message up.
            return Attempted {
                outcome: Outcome::Retry { after: None },
                http_status: None,
                error: Some("secret".into()),
                latency_ms: None,
            };
        };
        let headers = [
            ("content-type", "application/json".to_owned()),
            ("webhook-id", message_id.to_owned()),
            ("webhook-timestamp", timestamp_s.to_string()),
            ("webhook-signature", signed),
        ];
        let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(now).unwrap_or(0));
        let answer = self.sender.post(&endpoint.url, &headers, body).await;
        let latency_ms = Some((self.clock)() - now);
        match answer {
            Ok(reply) => Attempted {
                outcome: outcome(reply.status, reply.retry_after.as_deref(), at),
                http_status: Some(reply.status),
                error: None,
                latency_ms,
            },
            Err(no_answer) => Attempted {
                outcome: Outcome::Retry { after: None },
                http_status: None,
                error: Some(no_answer.into_code()),
                latency_ms,
            },
        }
    }

    /// The endpoint's next sequence number from this instance's block, or from a new
    /// block when `fresh` (a lane had seen a higher one) or the block is used up.
    async fn next_sequence(&self, lane: &Lane, fresh: bool) -> Result<u64, AppError> {
        let endpoint = (lane.workspace_id.clone(), lane.webhook_id.clone());
        let cached = {
            let mut blocks = self.blocks.lock().unwrap_or_else(PoisonError::into_inner);
            match blocks.get_mut(&endpoint) {
                Some((next, end)) if !fresh && *next < *end => {
                    *next += 1;
                    Some(*next - 1)
                }
                _ => None,
            }
        };
        if let Some(sequence) = cached {
            return Ok(sequence);
        }
        let first = self
            .lanes
            .sequence_block(&lane.workspace_id, &lane.webhook_id, SEQUENCE_BLOCK)
            .await?;
        self.blocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(endpoint, (first + 1, first + SEQUENCE_BLOCK));
        Ok(first)
    }
}

/// The deliveries to write so that those behind the head go in the order of their
/// users' versions (appends keep theirs among equals); `None` when they do. The head
/// stays where it is: a worker may have sent it (and died, or lost its answer) without
/// the lane showing it. Slots and sequence numbers stay in place, so `sequence` still
/// rises along the lane; the deliveries move between them, each body carrying its new
/// slot's number.
fn arrangement(head: &LaneHead, next: &Queued) -> Option<Vec<Queued>> {
    // Only a run of slots with nothing missing (an expired delivery is passed in turn).
    let run: Vec<&Queued> = (next.slot + 1..)
        .zip(&head.behind)
        .take_while(|(slot, queued)| queued.slot == *slot)
        .map(|(_, queued)| queued)
        .collect();
    if run.windows(2).all(|pair| pair[0].order <= pair[1].order) {
        return None;
    }
    let mut sorted = run.clone();
    sorted.sort_by_key(|queued| queued.order);
    // A body that does not read as one (never: this function wrote it) stays put.
    run.iter()
        .zip(sorted)
        .filter(|(place, queued)| place.slot != queued.slot)
        .map(|(place, queued)| {
            Some(Queued {
                slot: place.slot,
                sequence: place.sequence,
                body: with_sequence(&queued.body, place.sequence)?,
                ..queued.clone()
            })
        })
        .collect()
}

/// Whether an endpoint takes an event (enabled or not): its type subscribed, and for
/// an audience event its audience among those the endpoint names, if it names any.
fn subscribes(endpoint: &Endpoint, event: &WebhookEvent) -> bool {
    let audience_taken = match (&endpoint.audiences, &event.audience_id) {
        (Some(only), Some(audience)) => only.contains(audience),
        _ => true,
    };
    endpoint.events.contains(&event.event_type) && audience_taken
}

fn millis(wait: Duration) -> i64 {
    i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)
}

fn wait_until(now: i64, at: i64) -> Duration {
    Duration::from_millis(u64::try_from(at - now).unwrap_or(0))
}

#[cfg(test)]
#[path = "deliveries_tests.rs"]
mod tests;
