//! The webhooks' side of the ports: the endpoints each workspace subscribes.

use super::PortError;
pub use crate::domain::webhook::DeliveryStatus;
use crate::domain::webhook::{DisabledReason, EventType, LogRange, Secret};
use std::collections::{BTreeSet, HashSet};
use std::future::Future;

/// An endpoint as stored (`docs/webhooks.md` §5).
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub webhook_id: String,
    pub url: String,
    pub events: BTreeSet<EventType>,
    /// Only these audiences' events, when given.
    pub audiences: Option<BTreeSet<String>>,
    pub include_profile: bool,
    /// Signs every delivery.
    pub secret: Secret,
    /// The secret before the last rotation, and until when (ms) it signs too.
    pub previous_secret: Option<(Secret, i64)>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Since when (ms) no attempt has had a 2xx; `None` while attempts succeed.
    pub failing_since: Option<i64>,
    /// Set once the endpoint is disabled; a `PUT` enables it again.
    pub disabled: Option<Disabled>,
}

/// An endpoint to disable, for `reason` at `at` (ms), and what must still hold of it as
/// the worker read it: its settings unchanged since `updated_at` (a `PUT` may have
/// pointed it elsewhere since the attempt that answered 410) and, for `failing`, the
/// streak since `failing_since` unbroken (a 2xx on another lane may have ended it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disabling {
    pub reason: DisabledReason,
    pub at: i64,
    pub updated_at: i64,
    pub failing_since: Option<i64>,
}

/// Why and when (ms) an endpoint was disabled, and whether its `webhook.disabled` has
/// reached the lanes of the workspace's other endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disabled {
    pub reason: DisabledReason,
    pub at: i64,
    pub announced: bool,
}

/// What storing an endpoint did.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// A new endpoint, with the secret it was given.
    Created,
    /// The endpoint was there: its settings replaced, its secrets and `created_at`
    /// kept. As it is now.
    Replaced(Box<Endpoint>),
    /// A new endpoint, but the workspace has the most it may have.
    Full,
}

/// Webhook endpoints, by workspace. Reads are strongly consistent.
pub trait Webhooks {
    /// The workspace's endpoints, by id (at most a few dozen: `MAX_WEBHOOKS`).
    fn endpoints(
        &self,
        workspace_id: &str,
    ) -> impl Future<Output = Result<Vec<Endpoint>, PortError>> + Send;

    fn endpoint(
        &self,
        workspace_id: &str,
        webhook_id: &str,
    ) -> impl Future<Output = Result<Option<Endpoint>, PortError>> + Send;

    /// Creates `endpoint` if the workspace has fewer than `most`, or replaces the
    /// settings (url, events, audiences, include, `updated_at`) of the one with its id;
    /// first lists the workspace among those with webhooks ([`WebhookWorkspaces`]).
    fn put(
        &self,
        workspace_id: &str,
        endpoint: &Endpoint,
        most: usize,
    ) -> impl Future<Output = Result<Stored, PortError>> + Send;

    /// Gives the endpoint a new secret, the current one signing until `previous_until`
    /// (an older previous one is dropped). The endpoint as it is now; `None` if there is
    /// none.
    fn rotate(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        secret: &str,
        previous_until: i64,
    ) -> impl Future<Output = Result<Option<Endpoint>, PortError>> + Send;

    /// Deletes the endpoint; `false` if there was none.
    fn delete(
        &self,
        workspace_id: &str,
        webhook_id: &str,
    ) -> impl Future<Output = Result<bool, PortError>> + Send;

    /// Records the endpoint failing since `since`, unless a streak is recorded already
    /// (or the endpoint is gone).
    fn mark_failing(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        since: i64,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Ends the endpoint's failing streak (nothing if the endpoint is gone).
    fn mark_recovered(
        &self,
        workspace_id: &str,
        webhook_id: &str,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Disables the endpoint as `disabling` says, if it is there, enabled and still as
    /// the worker read it. Whether this call disabled it.
    fn disable(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        disabling: Disabling,
    ) -> impl Future<Output = Result<bool, PortError>> + Send;

    /// Records that the `webhook.disabled` of the endpoint's disabling at `disabled_at`
    /// reached the other endpoints' lanes (nothing if it was enabled again since).
    fn mark_announced(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        disabled_at: i64,
    ) -> impl Future<Output = Result<(), PortError>> + Send;
}

/// One line of an endpoint's attempt log (`docs/webhooks.md` §5): an attempt, or a
/// delivery given up unsent (its endpoint disabled: no `http_status`, no latency).
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedAttempt {
    /// When it started (ms); with `message_id`, its place in the log.
    pub at: i64,
    pub message_id: String,
    pub user_id: String,
    pub sequence: u64,
    /// The body as queued: as sent, but without the profile an `include` endpoint is
    /// sent (no table keeps a profile twice).
    pub body: String,
    pub status: DeliveryStatus,
    /// The endpoint's answer, if one came.
    pub http_status: Option<u16>,
    /// Why none came, by kind (`timeout`, `connect`, `address_refused`, …), or
    /// `disabled` for a delivery given up unsent.
    pub error: Option<String>,
    pub latency_ms: Option<i64>,
    pub next_attempt_at: Option<i64>,
}

/// A page of an attempt log, newest first, and where the next starts.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogPage {
    pub attempts: Vec<LoggedAttempt>,
    /// The last line's place (`Page::after` of the next page), when more are older.
    pub next_after: Option<String>,
}

/// Each endpoint's attempt log, kept 30 days.
pub trait DeliveryLog {
    fn record(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        attempt: &LoggedAttempt,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Up to `limit` lines of `range`, in its order.
    fn attempts(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        range: &LogRange,
        limit: usize,
    ) -> impl Future<Output = Result<LogPage, PortError>> + Send;
}

/// A replay's next page (`POST /api/v1/webhooks/{id}/replay`): the final lines (each
/// message's `delivered` or `given_up`) of the endpoint's log from `since_ms` to
/// `until_ms`, oldest first, past `after`, sent again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayTask {
    pub replay_id: String,
    pub workspace_id: String,
    pub webhook_id: String,
    pub since_ms: i64,
    pub until_ms: i64,
    /// Only the lines of this outcome; `None`: both.
    pub only: Option<DeliveryStatus>,
    pub after: Option<String>,
}

/// Where replays wait for the webhooks function: the wake queue.
pub trait ReplayTasks {
    fn schedule(&self, task: &ReplayTask) -> impl Future<Output = Result<(), PortError>> + Send;
}

/// The workspaces that have, or once had, a webhook endpoint: producers mark their
/// events for the bus rule that feeds delivery, so the events of workspaces without one
/// cost nothing downstream (`docs/webhooks.md` §5). `Webhooks::put` lists its workspace
/// before it stores the endpoint, and none is ever taken out: that could race with a new
/// endpoint and lose its events, and keeping it costs only a fan-out that finds none.
pub trait WebhookWorkspaces {
    fn with_webhooks(&self) -> impl Future<Output = Result<HashSet<String>, PortError>> + Send;
}

/// One (endpoint, user) lane (`docs/webhooks.md` §2): the deliveries of one endpoint
/// about one user, attempted one at a time, in the order they were appended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lane {
    pub workspace_id: String,
    pub webhook_id: String,
    pub user_id: String,
}

/// A delivery waiting in its lane: what each attempt sends, signed afresh.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    /// Its place in the lane: 1, 2, … in the order appended, then arranged.
    pub slot: u64,
    /// The `webhook-id` header.
    pub message_id: String,
    /// The endpoint's sequence number in `body`.
    pub sequence: u64,
    /// The user's version the event is of: a lane's deliveries go in this order.
    pub order: u64,
    /// The body as every attempt sends it, its `sequence` in it.
    pub body: String,
}

/// A delivery to append; its slot is the lane's to give.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewDelivery<'a> {
    pub message_id: &'a str,
    pub sequence: u64,
    pub order: u64,
    pub body: &'a str,
}

/// A lane's first delivery not done.
#[derive(Debug, Clone, PartialEq)]
pub enum Head {
    Waiting(Queued),
    /// Kept past its expiry (a week) before it could be delivered, and gone: its slot,
    /// for the worker to pass.
    Expired(u64),
}

/// Where a lane stands: its first delivery not done, and how that one has gone so far.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LaneHead {
    pub next: Option<Head>,
    /// The deliveries right behind `next`, in slot order (a few: [`READ_AHEAD`]).
    pub behind: Vec<Queued>,
    /// Failed attempts of `next`.
    pub attempts: usize,
    /// When `next` may be attempted (ms since the epoch); 0: at once.
    pub next_at: i64,
    /// The lane's version as read: any change since moves it.
    pub version: u64,
}

/// Deliveries a head's read returns behind the head.
pub const READ_AHEAD: usize = 9;

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// At `slot`. `wake`: no worker holds the lane (its lease had lapsed, now taken for
    /// the appender): the appender wakes one.
    At { slot: u64, wake: bool },
    /// The lane holds a higher `sequence` already (another instance's newer block).
    SequenceBehind,
}

/// The lanes, each changed atomically (one item's condition, or one transaction).
/// A lane's lease says a worker holds it: an append wakes one only once it has lapsed
/// or when the lease is its own message's (`domain::webhook::append_wakes`), so a wake
/// lost after its append heals when the fan-out's message comes again (and SQS
/// delivers a wake again when its worker died).
pub trait Lanes {
    /// Takes a block of `count` sequence numbers of an endpoint; its first. A block
    /// taken later starts higher.
    fn sequence_block(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        count: u64,
    ) -> impl Future<Output = Result<u64, PortError>> + Send;

    /// Appends a delivery at the lane's tail if the lane's last sequence is lower than
    /// its own; takes the lease until `lease_until` (ms), for its message, if it had
    /// lapsed by `now` or was that message's already.
    fn append(
        &self,
        lane: &Lane,
        delivery: NewDelivery<'_>,
        now: i64,
        lease_until: i64,
    ) -> impl Future<Output = Result<Appended, PortError>> + Send;

    fn head(&self, lane: &Lane) -> impl Future<Output = Result<LaneHead, PortError>> + Send;

    /// Writes `deliveries` at their slots (a new order of some behind the head read with
    /// `head`) if the lane has not changed since `head` was read. The head's slot is
    /// never among them, so a worker's move of its head needs no other condition.
    fn arrange(
        &self,
        lane: &Lane,
        head: &LaneHead,
        deliveries: &[Queued],
    ) -> impl Future<Output = Result<bool, PortError>> + Send;

    /// Moves the lane past `slot` (delivered, or given up) if it is the lane's next;
    /// `None` if it was not (another worker moved it). `Some(true)`: more wait, the
    /// lease held until `lease_until`; `Some(false)`: none, the lease let go, so the
    /// next append wakes a worker.
    fn advance(
        &self,
        lane: &Lane,
        slot: u64,
        lease_until: i64,
    ) -> impl Future<Output = Result<Option<bool>, PortError>> + Send;

    /// Records the failed attempts of `slot` and when the next may start, if `slot` is
    /// still the lane's next.
    fn postpone(
        &self,
        lane: &Lane,
        slot: u64,
        failed: Failed,
    ) -> impl Future<Output = Result<bool, PortError>> + Send;
}

/// A head's failed attempts, and when its next may start (ms), the lease held until
/// `lease_until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    pub attempts: usize,
    pub next_at: i64,
    pub lease_until: i64,
}

/// Wakes a lane's worker: the fast queue's message, delayed up to 15 minutes; longer
/// waits a one-time schedule (`docs/webhooks.md` §1).
pub trait Wakes {
    fn wake(
        &self,
        lane: &Lane,
        after: std::time::Duration,
    ) -> impl Future<Output = Result<(), PortError>> + Send;
}

/// An endpoint's answer to an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    /// `Retry-After`, as sent.
    pub retry_after: Option<String>,
}

/// Sends one attempt (`net::WebhookClient` on AWS: SSRF guard, no redirect, 15 s).
pub trait Sender {
    /// POSTs `body` to `url`: the answer, or an error when none came (refused address,
    /// DNS, connect, TLS, timeout), its kind in the error.
    fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: &str,
    ) -> impl Future<Output = Result<Reply, PortError>> + Send;
}
