//! `vfctl`: admin command for API keys, and the importer customers run to load their
//! users. `--local` targets the `make dev` stack; otherwise a deployed stack, whose
//! table names come from its CloudFormation outputs (keys), or `--url` (import).

use aws_sdk_cloudformation::error::{DisplayErrorContext, ProvideErrorMetadata};
use clap::{Args, Parser, Subcommand};
use dlq::DeadLetters;
use error::CommandError;
use import::{import, CsvOptions, ImportOptions};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use vibefollow_users::aws::dynamodb::ApiKeyStore;
use vibefollow_users::aws::sdk_config;
use vibefollow_users::clock::now_millis;
use vibefollow_users::domain::auth::{generate_key, key_hash, key_id, ApiKeyRecord, Scope};
use vibefollow_users::domain::format_millis;

mod dlq;
mod error;
mod import;

/// Written by `dev/stack.py` while the local stack runs (in `VF_LOCAL_DIR` if set).
const LOCAL_ENV_FILE: &str = "stack.env";

#[derive(Parser)]
#[command(name = "vfctl", about = "VibeFollow Users admin command")]
struct Cli {
    /// Talk to the local stack that `make dev` runs, instead of AWS.
    #[arg(long, global = true, conflicts_with = "stack")]
    local: bool,
    /// The deployed stack (default: samconfig.toml's default environment). Its outputs
    /// name the tables; without --stack, `API_KEYS_TABLE` in the environment names it.
    #[arg(long, global = true)]
    stack: Option<String>,
    /// AWS region of the stack (default: the standard AWS configuration's).
    #[arg(long, global = true)]
    region: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Load users through the API.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Change events of the local stack.
    #[command(subcommand)]
    Events(EventsCommand),
    /// The dead-letter queues: upserts the consumer could not apply, audience build
    /// pages, users whose audiences could not be settled (parked), stream positions the
    /// audiences function could not read again.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Subcommand)]
enum DlqCommand {
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
enum DeadLetterQueue {
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
    fn resources(self) -> (Resource, Option<Resource>) {
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
type Resource = (&'static str, &'static str);

#[derive(Subcommand)]
enum EventsCommand {
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
enum UsersCommand {
    /// Import a file of users through `POST /api/v1/users/batch`: NDJSON (one upsert
    /// body per line) or, for `*.csv`, a header `external_user_id,email,<trait>…` with
    /// typed trait columns (`seats:number`, `active:boolean`, `tags:json`). Resumable:
    /// run it again after a kill and it sends only what is left. Refused users go to
    /// FILE.rejected.ndjson; a JSON summary goes to stdout.
    Import(ImportArgs),
}

#[derive(Args)]
struct ImportArgs {
    file: PathBuf,
    /// The API's base URL (with --local: the local stack's).
    #[arg(long, env = "VIBEFOLLOW_BASE_URL")]
    url: Option<String>,
    /// An API key with the users:write scope.
    #[arg(long, env = "VIBEFOLLOW_API_KEY", hide_env_values = true)]
    key: String,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
    /// Users per batch (a batch counts as one request per started 100 against the
    /// rate limit). Changing it between runs of one file starts over.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=1000))]
    batch_size: u16,
    /// CSV: the column whose RFC 3339 value is each row's `timestamp` (when the change
    /// happened at the source): an import never overwrites what changed since.
    #[arg(long, value_name = "NAME")]
    timestamp_column: Option<String>,
    /// CSV: trait columns that go to `set_once` (set only where the user has no value).
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    once_columns: Vec<String>,
}

#[derive(Subcommand)]
enum KeysCommand {
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
struct CreateArgs {
    #[arg(long, value_parser = workspace_id)]
    workspace: String,
    /// Comma-separated: users:write, users:read, users:read_pii, users:delete, audiences:write,
    /// audiences:read, segment:write (Segment's routes only: for a library's write key).
    #[arg(long, value_delimiter = ',', required = true)]
    scopes: Vec<Scope>,
    /// Requests per second for the workspace (at most 1.1x in one second, 2x over two).
    /// Without it the key
    /// follows the deployment's DEFAULT_RATE_LIMIT (100 unless the stack sets another).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rate_limit: Option<u32>,
    /// Create an `sk_test_` key instead of `sk_live_`.
    #[arg(long)]
    test: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("vfctl: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), CommandError> {
    if cli.local {
        load_local_env()?;
    }
    let command = match cli.command {
        Command::Users(UsersCommand::Import(args)) => return import_file(args, cli.local).await,
        Command::Events(EventsCommand::Tail { count }) => {
            return tail_events(cli.local, count).await
        }
        command => command,
    };
    let mut sdk = sdk_config().await.into_builder();
    if let Some(region) = &cli.region {
        sdk.set_region(Some(aws_config::Region::new(region.clone())));
    }
    let target = Target {
        sdk: sdk.build(),
        stack: cli.stack,
        local: cli.local,
    };
    match command {
        Command::Keys(command) => {
            let table = target
                .resource("API_KEYS_TABLE", "ApiKeysTableName")
                .await?;
            let store = ApiKeyStore::new(aws_sdk_dynamodb::Client::new(&target.sdk), table);
            match command {
                KeysCommand::Create(args) => create(&store, args).await,
                KeysCommand::List { workspace } => list(&store, &workspace).await,
                KeysCommand::Revoke { key } => revoke(&store, &key).await,
            }
        }
        Command::Dlq(command) => {
            let (DlqCommand::Status { queue: which } | DlqCommand::Redrive { queue: which }) =
                command;
            let ((dlq_var, dlq_output), source) = which.resources();
            let dlq = target.resource(dlq_var, dlq_output).await?;
            let queue = match (source, &command) {
                (Some((var, output)), _) => Some(target.resource(var, output).await?),
                (None, DlqCommand::Status { .. }) => None,
                (None, DlqCommand::Redrive { .. }) => return Err(
                    "a missed tick has nothing to redrive: the next tick settles whatever is due. Fix the cause (docs/runbooks.md, AudienceTickDeadLetterAlarm), check that ticks arrive, then purge the queue".into(),
                ),
            };
            let shows_users = matches!(which, DeadLetterQueue::Parked);
            let sqs = aws_sdk_sqs::Client::new(&target.sdk);
            let dead = DeadLetters::new(sqs, dlq, queue, shows_users);
            let answer = match command {
                DlqCommand::Status { .. } => dead.status(now_millis()).await.map(|s| json!(s)),
                DlqCommand::Redrive { .. } => dead.redrive().await.map(|r| json!(r)),
            };
            let answer = answer.map_err(CommandError::aws("the dead-letter queue"))?;
            println!("{answer}");
            Ok(())
        }
        Command::Users(_) | Command::Events(_) => unreachable!("handled above"),
    }
}

/// Where a command's resources are: the local stack, a deployed stack's outputs, or
/// the environment.
struct Target {
    sdk: aws_config::SdkConfig,
    stack: Option<String>,
    local: bool,
}

impl Target {
    /// A resource named by environment variable `variable` (the local stack sets them),
    /// or by the stack's output `output`. An explicit --stack wins over a name left in
    /// the environment.
    async fn resource(&self, variable: &str, output: &str) -> Result<String, CommandError> {
        match (&self.stack, std::env::var(variable)) {
            (Some(stack), _) => stack_output(&self.sdk, stack, output).await,
            (None, Ok(name)) => Ok(name),
            (None, Err(_)) if self.local => Err(CommandError::Setup(format!(
                "the local stack's environment names no {variable}"
            ))),
            (None, Err(_)) => stack_output(&self.sdk, &default_stack_name()?, output).await,
        }
    }
}

async fn create(store: &ApiKeyStore, args: CreateArgs) -> Result<(), CommandError> {
    let key = generate_key(args.test);
    let hash = key_hash(&key);
    let mut scopes = args.scopes;
    scopes.sort();
    scopes.dedup();
    let record = ApiKeyRecord {
        key_id: key_id(&hash),
        workspace_id: args.workspace,
        scopes,
        rate_limit: args.rate_limit,
        created_at: now_millis(),
        revoked: false,
    };
    store
        .put(&hash, &record)
        .await
        .map_err(CommandError::aws("the keys table"))?;
    eprintln!(
        "created {} for workspace {}",
        record.key_id, record.workspace_id
    );
    println!("{key}");
    Ok(())
}

async fn list(store: &ApiKeyStore, workspace: &str) -> Result<(), CommandError> {
    let mut keys = store
        .list(workspace)
        .await
        .map_err(CommandError::aws("the keys table"))?;
    keys.sort_by_key(|k| k.created_at);
    println!(
        "{:<22} {:<40} {:>10} {:<25} revoked",
        "key_id", "scopes", "rate_limit", "created"
    );
    for key in keys {
        let scopes: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
        let created = format_millis(key.created_at).unwrap_or_default();
        println!(
            "{:<22} {:<40} {:>10} {:<25} {}",
            key.key_id,
            scopes.join(","),
            key.rate_limit
                .map_or_else(|| "default".to_owned(), |rate| rate.to_string()),
            created,
            key.revoked
        );
    }
    Ok(())
}

async fn revoke(store: &ApiKeyStore, key: &str) -> Result<(), CommandError> {
    let target = if key.starts_with("sk_") {
        key_hash(key)
    } else {
        key.to_owned()
    };
    let revoked = store
        .revoke(&target)
        .await
        .map_err(CommandError::aws("the keys table"))?;
    if revoked {
        eprintln!("revoked; refused everywhere within 60 seconds");
        Ok(())
    } else {
        Err(CommandError::Setup("no such key".into()))
    }
}

async fn import_file(args: ImportArgs, local: bool) -> Result<(), CommandError> {
    let url = match (args.url, local) {
        (Some(url), _) => url,
        (None, true) => {
            std::env::var("VF_API_URL").unwrap_or_else(|_| "http://127.0.0.1:9000".into())
        }
        (None, false) => {
            return Err(CommandError::Setup(
                "no API URL: pass --url or set VIBEFOLLOW_BASE_URL".into(),
            ))
        }
    };
    let summary = import(ImportOptions {
        file: args.file.clone(),
        url,
        key: args.key,
        concurrency: args.concurrency.into(),
        batch_size: args.batch_size.into(),
        csv: CsvOptions {
            timestamp_column: args.timestamp_column,
            once_columns: args.once_columns,
        },
    })
    .await?;
    eprintln!(
        "imported {} users in {:.1} s ({} users/s): {} accepted, {} rejected{}; {} batches sent, {} done by an earlier run, {} replayed",
        summary.users,
        summary.seconds,
        summary.users_per_second,
        summary.accepted,
        summary.rejected,
        if summary.rejected > 0 { format!(" (see {}.rejected.ndjson)", args.file.display()) } else { String::new() },
        summary.batches,
        summary.skipped_batches,
        summary.replayed_batches,
    );
    println!(
        "{}",
        serde_json::to_string(&summary).map_err(|e| e.to_string())?
    );
    Ok(())
}

async fn tail_events(local: bool, count: Option<usize>) -> Result<(), CommandError> {
    if !local {
        return Err("events tail reads the local stack's sink (--local); on AWS, add a rule on the bus named by the stack's EventBusName output".into());
    }
    let sink = std::env::var("VF_EVENT_SINK_URL")
        .map_err(|_| "this local stack has no event sink: `make dev` starts one")?;
    let sqs = aws_sdk_sqs::Client::new(&sdk_config().await);
    let mut printed = 0;
    while count.is_none_or(|count| printed < count) {
        let received = sqs
            .receive_message()
            .queue_url(&sink)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .map_err(|e| CommandError::aws("the event sink")(e.into()))?;
        for message in received.messages() {
            if count.is_some_and(|count| printed >= count) {
                break;
            }
            println!("{}", message.body().unwrap_or_default());
            printed += 1;
            if let Some(handle) = message.receipt_handle() {
                sqs.delete_message()
                    .queue_url(&sink)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .map_err(|e| CommandError::aws("the event sink")(e.into()))?;
            }
        }
    }
    Ok(())
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

/// `stack_name` of samconfig.toml's default environment, as `sam deploy` uses it.
fn default_stack_name() -> Result<String, CommandError> {
    let text = std::fs::read_to_string("samconfig.toml")
        .map_err(|_| "no --stack given and no samconfig.toml here to take the default from")?;
    let config: toml::Table = text
        .parse()
        .map_err(|e| format!("samconfig.toml is not valid TOML: {e}"))?;
    config
        .get("default")
        .and_then(|default| default.get("global"))
        .and_then(|global| global.get("parameters"))
        .and_then(|parameters| parameters.get("stack_name"))
        .and_then(|name| name.as_str())
        .map(str::to_owned)
        .ok_or_else(|| "samconfig.toml names no default stack_name: pass --stack".into())
}

/// One output of a deployed stack, with errors that say what to do.
async fn stack_output(
    sdk: &aws_config::SdkConfig,
    stack: &str,
    output: &str,
) -> Result<String, CommandError> {
    let region = sdk
        .region()
        .map_or("(no region)".to_owned(), ToString::to_string);
    let described = aws_sdk_cloudformation::Client::new(sdk)
        .describe_stacks()
        .stack_name(stack)
        .send()
        .await
        .map_err(|err| {
            let message = err.as_service_error().and_then(|e| e.message()).unwrap_or_default();
            if message.contains("does not exist") {
                format!("stack {stack} not found in {region}: deploy it (`make deploy`), or pass --stack and --region")
            } else {
                format!("cannot read stack {stack} in {region}: {}", DisplayErrorContext(&err))
            }
        })?;
    described
        .stacks()
        .first()
        .into_iter()
        .flat_map(|s| s.outputs())
        .find(|o| o.output_key() == Some(output))
        .and_then(|o| o.output_value())
        .map(str::to_owned)
        .ok_or_else(|| {
            let message =
                format!("stack {stack} has no output {output}: is it a VibeFollow Users stack?");
            CommandError::Setup(message)
        })
}

fn load_local_env() -> Result<(), CommandError> {
    let dir = std::env::var("VF_LOCAL_DIR").unwrap_or_else(|_| ".local".to_owned());
    let path = format!("{dir}/{LOCAL_ENV_FILE}");
    let text = std::fs::read_to_string(&path)
        .map_err(|_| format!("{path} not found: start the local stack with `make dev` first"))?;
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        if let Some((name, value)) = line.split_once('=') {
            std::env::set_var(name.trim(), value.trim());
        }
    }
    Ok(())
}
