//! Configuration from environment variables (set by `template.yaml` on AWS and by
//! `dev/stack.py` locally).

use crate::aws::dynamodb::ProfileFormat;
use crate::domain::auth::DEFAULT_RATE_LIMIT;
use crate::domain::rate_limit::DEFAULT_SHARD_RATE;
use crate::domain::webhook::Reach;

/// Names of the resources the functions use.
#[derive(Debug, Clone)]
pub struct Resources {
    /// `USERS_TABLE`: one item per (workspace, external_user_id).
    pub users_table: String,
    /// `IDEMPOTENCY_TABLE`: Idempotency-Key records, TTL 24 h.
    pub idempotency_table: String,
    /// `API_KEYS_TABLE`: SHA-256 of each API key → workspace, scopes, rate limit.
    pub api_keys_table: String,
    /// `RATE_LIMITS_TABLE`: per-workspace, per-second request counters.
    pub rate_limits_table: String,
    /// `UPSERT_QUEUE_URL`: the SQS queue accepted upserts go to.
    pub upsert_queue_url: String,
    /// `DEFAULT_RATE_LIMIT` (optional, default 100): requests per second for keys
    /// created without `--rate-limit`.
    pub default_rate_limit: u32,
    /// `RATE_LIMIT_SHARD_RATE` (optional, default 400): requests a second one shard of
    /// a workspace's rate-limit counter hands out; a key of a higher rate spreads over
    /// `ceil(rate / this)` shards (at most 16). 400 is sized to a DynamoDB partition's
    /// 1,000 write units; the local stack scales it with `VF_SCALE`, as it scales them.
    pub rate_limit_shard_rate: f64,
    /// `EVENT_BUS_NAME`: the EventBridge bus change events go to.
    pub event_bus_name: String,
    /// `AUDIENCES_TABLE`: audience definitions, and each workspace's definitions revision.
    pub audiences_table: String,
    /// `AUDIENCE_MEMBERS_TABLE`: each user's memberships and each audience's member list.
    pub audience_members_table: String,
    /// `AUDIENCE_BUILD_QUEUE_URL`: the SQS queue of audience build tasks.
    pub audience_build_queue_url: String,
    /// `AUDIENCE_RETRY_QUEUE_URL`: the SQS queue of users parked after their
    /// evaluation failed, settled again apart from their batch.
    pub audience_retry_queue_url: String,
    /// `AUDIENCE_TIME_QUEUE_URL`: the SQS queue of time tasks, one per partition of the
    /// users due, sent by the schedule's tick.
    pub audience_time_queue_url: String,
    /// `AUDIENCE_STREAM_FAILURE_QUEUE_URL`: the audiences stream mapping's on-failure
    /// destination, whose positions the function reads again.
    pub audience_stream_failure_queue_url: String,
    /// `AUDIENCE_TICK_SECONDS` (optional, default 60): how often the schedule ticks
    /// (template.yaml: `rate(1 minute)`); a tick's time tasks settle what falls due
    /// before the next.
    pub audience_tick_seconds: u64,
    /// `DUE_SETTLE_RATE` (optional, default 400): users a second one time task settles
    /// from its partition of the due index. Each moves its index entry once (2 write
    /// units): 800 of a partition's 1,000, the rest left to the stream's settles. The
    /// local stack scales it with `VF_SCALE`, as it scales them.
    pub due_settle_rate: f64,
    /// `WEBHOOKS_TABLE`: the webhook endpoints each workspace subscribes.
    pub webhooks_table: String,
    /// `WEBHOOK_WAKE_QUEUE_URL`: the SQS (fair) queue of wakes, each starting the
    /// worker of one (endpoint, user) lane; a retry's wake is delayed.
    pub webhook_wake_queue_url: String,
    /// `WEBHOOK_ALLOW_LOCAL` (optional; `true` only on the local stack, never in the
    /// template, hence not in [`Resources::ENV_VARS`]): webhooks may target
    /// `http://127.0.0.1` (a listener on the developer's machine). Private ranges stay
    /// refused either way.
    pub webhook_reach: Reach,
    /// `WEBHOOK_TIME_FACTOR` (optional, default 1; local runs only, never in the
    /// template): divides the retry schedule's waits and the five days of failures that
    /// disable an endpoint, so tests run them in seconds (3,600: 10 h → 10 s).
    pub webhook_time_factor: f64,
    /// `USERS_ITEM_FORMAT` (optional, default `2`): how the consumer writes a user's
    /// profile, `2` (one document) or `1` (attributes, what builds from before
    /// 2026-12-07 read): `1` only for the first deploy over such a stack
    /// (docs/runbooks.md). Both are read either way.
    pub users_item_format: ProfileFormat,
    /// `METRICS_NAMESPACE` (optional, default `VibeFollow/Users`): the CloudWatch
    /// namespace of the functions' embedded metrics, one per stack.
    pub metrics_namespace: String,
}

#[derive(Debug, thiserror::Error)]
#[error("environment variable {0} is not set")]
pub struct MissingVar(pub &'static str);

fn var(name: &'static str) -> Result<String, MissingVar> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or(MissingVar(name))
}

/// A rate a second, from `name`: finite and above zero, or none.
fn positive_rate(name: &'static str) -> Option<f64> {
    var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|rate: &f64| rate.is_finite() && *rate > 0.0)
}

/// `DUE_SETTLE_RATE`'s default (see [`Resources::due_settle_rate`]).
pub const DEFAULT_DUE_SETTLE_RATE: f64 = 400.0;

impl Resources {
    /// Every variable `from_env` reads; template.yaml must set exactly these.
    pub const ENV_VARS: [&'static str; 20] = [
        "USERS_TABLE",
        "USERS_ITEM_FORMAT",
        "IDEMPOTENCY_TABLE",
        "API_KEYS_TABLE",
        "RATE_LIMITS_TABLE",
        "UPSERT_QUEUE_URL",
        "EVENT_BUS_NAME",
        "DEFAULT_RATE_LIMIT",
        "RATE_LIMIT_SHARD_RATE",
        "METRICS_NAMESPACE",
        "AUDIENCES_TABLE",
        "AUDIENCE_MEMBERS_TABLE",
        "AUDIENCE_BUILD_QUEUE_URL",
        "AUDIENCE_RETRY_QUEUE_URL",
        "AUDIENCE_TIME_QUEUE_URL",
        "AUDIENCE_TICK_SECONDS",
        "DUE_SETTLE_RATE",
        "AUDIENCE_STREAM_FAILURE_QUEUE_URL",
        "WEBHOOKS_TABLE",
        "WEBHOOK_WAKE_QUEUE_URL",
    ];

    pub fn from_env() -> Result<Self, MissingVar> {
        Ok(Self {
            users_table: var("USERS_TABLE")?,
            users_item_format: var("USERS_ITEM_FORMAT")
                .ok()
                .and_then(|text| ProfileFormat::parse(&text))
                .unwrap_or_default(),
            idempotency_table: var("IDEMPOTENCY_TABLE")?,
            api_keys_table: var("API_KEYS_TABLE")?,
            rate_limits_table: var("RATE_LIMITS_TABLE")?,
            upsert_queue_url: var("UPSERT_QUEUE_URL")?,
            event_bus_name: var("EVENT_BUS_NAME")?,
            audiences_table: var("AUDIENCES_TABLE")?,
            audience_members_table: var("AUDIENCE_MEMBERS_TABLE")?,
            audience_build_queue_url: var("AUDIENCE_BUILD_QUEUE_URL")?,
            audience_retry_queue_url: var("AUDIENCE_RETRY_QUEUE_URL")?,
            audience_time_queue_url: var("AUDIENCE_TIME_QUEUE_URL")?,
            audience_stream_failure_queue_url: var("AUDIENCE_STREAM_FAILURE_QUEUE_URL")?,
            webhooks_table: var("WEBHOOKS_TABLE")?,
            webhook_wake_queue_url: var("WEBHOOK_WAKE_QUEUE_URL")?,
            webhook_reach: match var("WEBHOOK_ALLOW_LOCAL").as_deref() {
                Ok("true") => Reach::PublicAndLoopback,
                _ => Reach::Public,
            },
            webhook_time_factor: var("WEBHOOK_TIME_FACTOR")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|factor: &f64| factor.is_finite() && *factor >= 1.0)
                .unwrap_or(1.0),
            audience_tick_seconds: var("AUDIENCE_TICK_SECONDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|seconds| *seconds > 0)
                .unwrap_or(60),
            default_rate_limit: var("DEFAULT_RATE_LIMIT")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|rate| *rate > 0)
                .unwrap_or(DEFAULT_RATE_LIMIT),
            rate_limit_shard_rate: positive_rate("RATE_LIMIT_SHARD_RATE")
                .unwrap_or(DEFAULT_SHARD_RATE),
            due_settle_rate: positive_rate("DUE_SETTLE_RATE").unwrap_or(DEFAULT_DUE_SETTLE_RATE),
            metrics_namespace: var("METRICS_NAMESPACE")
                .unwrap_or_else(|_| crate::metrics::DEFAULT_NAMESPACE.to_owned()),
        })
    }
}
