//! The command line: the commands, their arguments, and the checks clap runs on them.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use vibefollow_users::domain::auth::Scope;

#[derive(Parser)]
#[command(name = "vfctl", about = "VibeFollow Users admin command")]
pub struct Cli {
    /// Talk to the local stack that `make dev` runs, instead of AWS.
    #[arg(long, global = true, conflicts_with = "stack")]
    pub local: bool,
    /// The deployed stack (default: samconfig.toml's default environment). Its outputs
    /// name the tables; without --stack, `API_KEYS_TABLE` in the environment names it.
    #[arg(long, global = true)]
    pub stack: Option<String>,
    /// AWS region of the stack (default: the standard AWS configuration's).
    #[arg(long, global = true)]
    pub region: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Load users through the API.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Change events of the local stack.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Webhook endpoints through the API, and a listener on this machine that prints
    /// the deliveries it verifies.
    Webhooks(WebhooksArgs),
    /// The dead-letter queues: upserts the consumer could not apply, audience build
    /// pages, users whose audiences could not be settled (parked), stream positions the
    /// audiences function could not read again.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// How many messages wait and when the oldest was enqueued (SQS deletes it 14 days
    /// after), as JSON; for `--queue parked`, the users too (ids only). It looks at the
    /// messages to find the oldest: each is hidden for a moment and released again.
    Status {
        #[arg(long, value_enum, default_value_t = DeadLetterQueue::Upserts)]
        queue: DeadLetterQueue,
    },
    /// Moves every message back to the queue it came from (SQS's message-move task, or
    /// receive-send-delete where the service has none, as locally); fix the cause
    /// first. Carrying a message out again is harmless: each is idempotent.
    Redrive {
        #[arg(long, value_enum, default_value_t = DeadLetterQueue::Upserts)]
        queue: DeadLetterQueue,
    },
}

/// A dead-letter queue of the stack.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum DeadLetterQueue {
    /// Upserts answered 202 that the consumer could not apply.
    Upserts,
    /// Audience build pages that failed five times (the audience stays building).
    Builds,
    /// Users whose audience memberships could not be settled five times.
    Parked,
    /// Positions of stream records the audiences function never settled, which it could
    /// not read again five times (the stream keeps records 24 hours).
    StreamFailures,
    /// Ticks EventBridge could not deliver to the audiences function. Status only: a
    /// tick carries nothing, and the next one that arrives settles whatever is due.
    Ticks,
}

impl DeadLetterQueue {
    /// The dead-letter queue and the queue it redrives to (none for ticks): each as (the
    /// local stack's variable, the deployed stack's output).
    pub fn resources(self) -> (Resource, Option<Resource>) {
        match self {
            DeadLetterQueue::Upserts => (
                ("DLQ_URL", "DeadLetterQueueUrl"),
                Some(("UPSERT_QUEUE_URL", "UpsertQueueUrl")),
            ),
            DeadLetterQueue::Builds => (
                (
                    "VF_AUDIENCE_BUILD_DLQ_URL",
                    "AudienceBuildDeadLetterQueueUrl",
                ),
                Some(("AUDIENCE_BUILD_QUEUE_URL", "AudienceBuildQueueUrl")),
            ),
            DeadLetterQueue::Parked => (
                ("VF_AUDIENCE_PARKED_QUEUE_URL", "AudienceParkedQueueUrl"),
                Some(("AUDIENCE_RETRY_QUEUE_URL", "AudienceRetryQueueUrl")),
            ),
            DeadLetterQueue::StreamFailures => (
                (
                    "VF_AUDIENCE_STREAM_FAILURE_DLQ_URL",
                    "AudienceStreamFailureDeadLetterQueueUrl",
                ),
                Some((
                    "AUDIENCE_STREAM_FAILURE_QUEUE_URL",
                    "AudienceStreamFailureQueueUrl",
                )),
            ),
            DeadLetterQueue::Ticks => (
                ("VF_AUDIENCE_TICK_DLQ_URL", "AudienceTickDeadLetterQueueUrl"),
                None,
            ),
        }
    }
}

/// A resource as (the local stack's variable, the deployed stack's output).
pub type Resource = (&'static str, &'static str);

#[derive(Subcommand)]
pub enum EventsCommand {
    /// Print change events as they reach the local stack's sink, one JSON object per
    /// line (the EventBridge envelope; `detail` is the change), until Ctrl-C. Needs
    /// --local: on AWS, add a rule on the stack's bus (output EventBusName) instead.
    Tail {
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Import a file of users through `POST /api/v1/users/batch`: NDJSON (one upsert
    /// body per line) or, for `*.csv`, a header `external_user_id,email,<trait>…` with
    /// typed trait columns (`seats:number`, `active:boolean`, `tags:json`). Resumable:
    /// run it again after a kill and it sends only what is left. Refused users go to
    /// FILE.rejected.ndjson; a JSON summary goes to stdout.
    Import(ImportArgs),
    /// How many users items are still in format 1 (profile as attributes) and how many
    /// there are, as JSON: each is rewritten in format 2 by its next write, nothing else
    /// moves them. One Scan of the table that only counts (a million items: under a cent).
    Formats,
}

/// Where the API is and the key to call it with (before or after the subcommand).
#[derive(Args)]
pub struct ApiArgs {
    /// The API's base URL (with --local: the local stack's).
    #[arg(long, global = true, env = "VIBEFOLLOW_BASE_URL")]
    pub url: Option<String>,
    /// An API key with the scopes the command needs (the environment variable keeps it
    /// out of the process list).
    #[arg(
        long,
        global = true,
        env = "VIBEFOLLOW_API_KEY",
        hide_env_values = true
    )]
    pub key: Option<String>,
}

#[derive(Args)]
pub struct WebhooksArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub command: WebhooksCommand,
}

/// Each prints the API's `data` as JSON (a list one object per line).
#[derive(Subcommand)]
pub enum WebhooksCommand {
    /// The workspace's endpoints (webhooks:read).
    List,
    /// One endpoint, never its secret (webhooks:read).
    Get { id: String },
    /// Subscribe an endpoint or replace its settings (webhooks:write); a new one's
    /// secret is printed this once.
    Put {
        id: String,
        /// Where deliveries go: https (locally, http://127.0.0.1 too).
        target: String,
        /// Comma-separated: user.changed, user.deleted, audience.entered,
        /// audience.exited, webhook.disabled.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "user.changed,user.deleted,audience.entered,audience.exited,webhook.disabled"
        )]
        events: Vec<String>,
        /// Only these audiences' events (comma-separated ids).
        #[arg(long, value_delimiter = ',')]
        audiences: Vec<String>,
        /// Bodies carry the user's profile (a key that also holds users:read_pii).
        #[arg(long)]
        include_profile: bool,
    },
    /// Unsubscribe an endpoint (webhooks:write).
    Delete { id: String },
    /// A new signing secret, printed; the previous one signs 24 hours more
    /// (webhooks:write).
    RotateSecret { id: String },
    /// The attempt log, newest first, one line per attempt (webhooks:read).
    Deliveries {
        id: String,
        /// At most this many lines.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send a time range of the attempt log again (webhooks:write).
    Replay {
        id: String,
        /// RFC 3339, within the last 30 days.
        #[arg(long)]
        since: String,
        /// RFC 3339 (default: now).
        #[arg(long)]
        until: Option<String>,
        /// Only the deliveries `delivered` or only those `given_up`.
        #[arg(long, value_parser = ["delivered", "given_up"])]
        status: Option<String>,
    },
    /// Listen on 127.0.0.1 and print each delivery whose signature verifies, one JSON
    /// object per line (`webhook-id` and the body); answer 200, or 401 to one that does
    /// not verify. With --register, the endpoint is first pointed here (a local stack
    /// allows http://127.0.0.1) and its secret taken (a new one: rotated if it
    /// existed).
    Listen {
        /// 0: any free port (with --register).
        #[arg(long, default_value_t = 8787)]
        port: u16,
        /// The endpoint's secret (`whsec_…`); not needed with --register.
        #[arg(
            long,
            env = "VIBEFOLLOW_WEBHOOK_SECRET",
            hide_env_values = true,
            required_unless_present = "register"
        )]
        secret: Option<String>,
        /// The endpoint id to point at this listener, for every event type.
        #[arg(long, value_name = "ID")]
        register: Option<String>,
        /// Stop after this many distinct verified deliveries (by `webhook-id`; a repeat
        /// prints with `"repeat": true`); those arriving after are answered 503, so the
        /// service sends them again later.
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Args)]
pub struct ImportArgs {
    pub file: PathBuf,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Users per batch (a batch counts as one request per started 100 against the
    /// rate limit). Changing it between runs of one file starts over.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch_size: u16,
    /// CSV: the column whose RFC 3339 value is each row's `timestamp` (when the change
    /// happened at the source): an import never overwrites what changed since.
    #[arg(long, value_name = "NAME")]
    pub timestamp_column: Option<String>,
    /// CSV: trait columns that go to `set_once` (set only where the user has no value).
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub once_columns: Vec<String>,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key; prints the key alone on stdout (it is shown only once).
    Create(CreateArgs),
    /// List a workspace's keys (never the keys themselves).
    List {
        #[arg(long, value_parser = workspace_id)]
        workspace: String,
    },
    /// Revoke a key by its key id (`key_…`) or by the key itself.
    Revoke {
        #[arg(value_parser = key_or_key_id)]
        key: String,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    #[arg(long, value_parser = workspace_id)]
    pub workspace: String,
    /// Comma-separated: users:write, users:read, users:read_pii, users:delete, audiences:write,
    /// audiences:read, webhooks:write, webhooks:read, segment:write (Segment's routes only:
    /// for a library's write key).
    #[arg(long, value_delimiter = ',', required = true)]
    pub scopes: Vec<Scope>,
    /// Requests per second for the workspace (at most 1.1x in one second, 2x over two).
    /// Without it the key
    /// follows the deployment's DEFAULT_RATE_LIMIT (100 unless the stack sets another).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate_limit: Option<u32>,
    /// Create an `sk_test_` key instead of `sk_live_`.
    #[arg(long)]
    pub test: bool,
}

/// A workspace id: 1-64 of `[A-Za-z0-9_-]`.
fn workspace_id(workspace: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&workspace.len())
        && workspace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then(|| workspace.to_owned())
        .ok_or_else(|| format!("workspace id `{workspace}` must be 1-64 of [A-Za-z0-9_-]"))
}

/// A key id (`key_…`), a key (`sk_live_…`/`sk_test_…`) or a key's hash.
fn key_or_key_id(key: &str) -> Result<String, String> {
    let shaped = key.starts_with("key_") || key.starts_with("sk_") || key.len() == 64;
    shaped
        .then(|| key.to_owned())
        .ok_or_else(|| "expected a key id (key_…) or a key (sk_live_…/sk_test_…)".into())
}
