//! Load generator for the local stack (loopback only, bounded in count and time).
//!
//! Sends `--requests` upserts from `--clients` concurrent clients, optionally paced to
//! `--rate` requests per second, and reports accepted/s, POST latency and accepted →
//! visible latency (time from the 202 to the first GET that finds the user). Then it
//! measures the emulator's raw rate for the same AWS calls the api makes per request
//! (a conditional put and a send) at the same concurrency, so the result reads as a
//! ratio that holds on a noisy machine. Prints a table and writes JSON.

use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vibefollow_users::app::ports::{IdempotencyKeys, PortError, UpsertQueue};
use vibefollow_users::aws::dynamodb::{ApiKeyStore, IdempotencyStore};
use vibefollow_users::aws::sqs::SqsQueue;
use vibefollow_users::config::Resources;
use vibefollow_users::domain::auth::{generate_key, key_hash, key_id, ApiKeyRecord, Scope};
use vibefollow_users::domain::{Changes, ProfileField, Stamp, UpsertMessage, MESSAGE_VERSION};

#[derive(Parser)]
struct Args {
    #[arg(long, env = "VF_API_URL", default_value = "http://127.0.0.1:9000")]
    api: String,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Pace requests to this many per second (0: as fast as the clients go).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Measure accepted → visible for one request in this many.
    #[arg(long, default_value_t = 5)]
    visible_every: usize,
    /// Give up on the whole run after this many seconds.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
    #[arg(long, default_value = "target/bench/load.json")]
    out: String,
}

#[derive(Default)]
struct Results {
    post: Option<Histogram<u64>>,
    visible: Option<Histogram<u64>>,
    accepted: usize,
    other: usize,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

fn record(h: &mut Option<Histogram<u64>>, d: Duration) {
    let _ = h
        .get_or_insert_with(histogram)
        .record(d.as_micros().max(1) as u64);
}

fn ms(h: &Option<Histogram<u64>>, q: f64) -> f64 {
    h.as_ref()
        .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let setup = set_up().await?;

    // The raw rate first, then let the consumer drain the queue: moto's SendMessage
    // slows down as a queue fills, so both measurements start from an empty queue.
    let raw = raw_rate(
        &setup.dynamodb,
        &setup.sqs,
        &setup.resources,
        &setup.workspace,
        args.clients,
        200,
    )
    .await?;
    wait_until_drained(
        &setup.sqs,
        &setup.resources.upsert_queue_url,
        Duration::from_secs(60),
    )
    .await?;

    let (results, elapsed) = send_all(&args, &setup.run, &setup.key).await?;
    let report = Report {
        args: &args,
        results: &results,
        elapsed,
        accepted_per_s: results.accepted as f64 / elapsed.as_secs_f64(),
        raw,
    };
    report.write_json()?;
    report.print_table();
    Ok(())
}

/// The AWS clients, and a scratch workspace with a write key for this run.
struct Setup {
    resources: Resources,
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    run: String,
    workspace: String,
    key: String,
}

async fn set_up() -> Result<Setup, Box<dyn std::error::Error>> {
    let resources = Resources::from_env()?;
    let sdk = vibefollow_users::aws::sdk_config().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let workspace = format!("load-{run}");
    let key = store_key(&dynamodb, &resources, &workspace).await?;
    Ok(Setup {
        resources,
        dynamodb,
        sqs,
        run,
        workspace,
        key,
    })
}

/// A new key of `workspace` that may write and read users at a rate the run won't reach.
async fn store_key(
    dynamodb: &aws_sdk_dynamodb::Client,
    resources: &Resources,
    workspace: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let key = generate_key(true);
    let hash = key_hash(&key);
    let record_of_key = ApiKeyRecord {
        key_id: key_id(&hash),
        workspace_id: workspace.to_owned(),
        scopes: vec![Scope::UsersWrite, Scope::UsersRead],
        rate_limit: Some(100_000),
        created_at: 0,
        revoked: false,
    };
    ApiKeyStore::new(dynamodb.clone(), &resources.api_keys_table)
        .put(&hash, &record_of_key)
        .await?;
    Ok(key)
}

/// What every client shares to reach the api and record what it measures.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    api: String,
    key: String,
    results: Arc<Mutex<Results>>,
    /// The whole run gives up at this instant.
    deadline: Instant,
}

/// Which requests go out, and when.
#[derive(Clone)]
struct Schedule {
    /// The next request's number, shared by the clients.
    next: Arc<std::sync::atomic::AtomicUsize>,
    requests: usize,
    visible_every: usize,
    run: String,
    started: Instant,
    /// Between two requests when paced.
    interval: Option<Duration>,
}

/// Sends the requests from `args.clients` concurrent clients and waits for every
/// visibility probe; returns what was measured and how long the sending took.
async fn send_all(
    args: &Args,
    run: &str,
    key: &str,
) -> Result<(Results, Duration), Box<dyn std::error::Error>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let results = Arc::new(Mutex::new(Results::default()));
    let client = Client {
        http,
        api: args.api.clone(),
        key: key.to_owned(),
        results: results.clone(),
        deadline: Instant::now() + Duration::from_secs(args.max_seconds),
    };
    let schedule = Schedule {
        next: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        requests: args.requests,
        visible_every: args.visible_every,
        run: run.to_owned(),
        started: Instant::now(),
        interval: (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(args.rate))),
    };
    let workers: Vec<_> = (0..args.clients)
        .map(|_| tokio::spawn(send_from_one_client(client.clone(), schedule.clone())))
        .collect();
    let mut pollers = Vec::new();
    for worker in workers {
        pollers.extend(worker.await?);
    }
    let elapsed = schedule.started.elapsed();
    for poller in pollers {
        poller.await?;
    }
    let results = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    Ok((results, elapsed))
}

/// One client's loop: takes the next request until all are sent or the run's time is
/// up, and starts a visibility probe for one accepted request in `visible_every`.
/// Returns the probes it started.
async fn send_from_one_client(
    client: Client,
    schedule: Schedule,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut pollers = Vec::new();
    loop {
        let i = schedule
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if i >= schedule.requests || Instant::now() > client.deadline {
            return pollers;
        }
        if let Some(interval) = schedule.interval {
            tokio::time::sleep_until((schedule.started + interval * i as u32).into()).await;
        }
        let user = format!("u{}-{i}", schedule.run);
        let (accepted, accepted_at) = client.post(&user, i).await;
        if accepted && i % schedule.visible_every == 0 {
            pollers.push(tokio::spawn(client.clone().probe(user, accepted_at)));
        }
    }
}

impl Client {
    /// Upserts `user` as request `i` and records the POST's latency and outcome.
    /// Returns whether it was accepted, and when the answer came.
    async fn post(&self, user: &str, i: usize) -> (bool, Instant) {
        let body = json!({"external_user_id": user, "traits": {"plan": "load", "seq": i}});
        let sent = Instant::now();
        let response = self
            .http
            .post(format!("{}/api/v1/users", self.api))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await;
        let accepted_at = Instant::now();
        let accepted = matches!(&response, Ok(r) if r.status() == 202);
        let mut r = self.results.lock().unwrap_or_else(|p| p.into_inner());
        record(&mut r.post, accepted_at - sent);
        if accepted {
            r.accepted += 1
        } else {
            r.other += 1
        }
        (accepted, accepted_at)
    }

    /// The visibility probe: polls until the api finds `user`, then records the time
    /// since `accepted_at`; gives up at the run's deadline.
    async fn probe(self, user: String, accepted_at: Instant) {
        while Instant::now() < self.deadline {
            let found = self
                .http
                .get(format!("{}/api/v1/users/{user}", self.api))
                .bearer_auth(&self.key)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if found {
                let mut r = self.results.lock().unwrap_or_else(|p| p.into_inner());
                record(&mut r.visible, accepted_at.elapsed());
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The run's outcome, as JSON and as a table.
struct Report<'a> {
    args: &'a Args,
    results: &'a Results,
    /// How long the sending took.
    elapsed: Duration,
    accepted_per_s: f64,
    /// The emulator's raw rate, conditional put + send per second.
    raw: f64,
}

impl Report<'_> {
    fn write_json(&self) -> Result<(), Box<dyn std::error::Error>> {
        let (args, r, raw) = (self.args, self.results, self.raw);
        let summary = json!({
            "clients": args.clients,
            "requests": args.requests,
            "paced_rate": args.rate,
            "accepted": r.accepted,
            "not_accepted": r.other,
            "seconds": self.elapsed.as_secs_f64(),
            "accepted_per_s": self.accepted_per_s,
            "post_ms": {"p50": ms(&r.post, 0.5), "p99": ms(&r.post, 0.99)},
            "visible_ms": {"p50": ms(&r.visible, 0.5), "p99": ms(&r.visible, 0.99),
                            "samples": r.visible.as_ref().map_or(0, |h| h.len())},
            "emulator_raw_put_send_per_s": raw,
            "throughput_ratio": self.accepted_per_s / raw,
        });
        if let Some(dir) = std::path::Path::new(&args.out).parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&args.out, serde_json::to_string_pretty(&summary)?)?;
        Ok(())
    }

    fn print_table(&self) {
        let (args, r, raw, accepted_per_s) =
            (self.args, self.results, self.raw, self.accepted_per_s);
        println!("| measure | value |\n|---|---|");
        println!(
            "| requests (clients, pace) | {} ({}, {}) |",
            args.requests,
            args.clients,
            if args.rate > 0 {
                format!("{}/s", args.rate)
            } else {
                "unpaced".into()
            }
        );
        println!("| accepted / not accepted | {} / {} |", r.accepted, r.other);
        println!("| accepted/s | {accepted_per_s:.1} |");
        println!(
            "| POST latency p50 / p99 | {:.1} / {:.1} ms |",
            ms(&r.post, 0.5),
            ms(&r.post, 0.99)
        );
        println!(
            "| accepted → visible p50 / p99 | {:.1} / {:.1} ms |",
            ms(&r.visible, 0.5),
            ms(&r.visible, 0.99)
        );
        println!("| emulator raw rate, conditional put + send | {raw:.1}/s |");
        println!(
            "| throughput ratio (accepted/s ÷ raw) | {:.2} |",
            accepted_per_s / raw
        );
    }
}

async fn wait_until_drained(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    timeout: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let out = sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await?;
        let attributes = out.attributes().cloned().unwrap_or_default();
        let count = |name: &A| {
            attributes
                .get(name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if count(&A::ApproximateNumberOfMessages) + count(&A::ApproximateNumberOfMessagesNotVisible)
            == 0
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the queue did not drain".into())
}

/// Pairs of (conditional put, send) per second that the emulator sustains at the same
/// concurrency: the AWS work of one POST with an Idempotency-Key. The messages are
/// real upserts of a scratch workspace, so the consumer drains them as usual.
async fn raw_rate(
    dynamodb: &aws_sdk_dynamodb::Client,
    sqs: &aws_sdk_sqs::Client,
    resources: &Resources,
    workspace: &str,
    clients: usize,
    pairs: usize,
) -> Result<f64, Box<dyn std::error::Error>> {
    let idempotency = IdempotencyStore::new(dynamodb.clone(), &resources.idempotency_table);
    let queue = SqsQueue::new(sqs.clone(), &resources.upsert_queue_url);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (idempotency, queue, next, workspace) = (
                idempotency.clone(),
                queue.clone(),
                next.clone(),
                workspace.to_owned(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= pairs {
                        return Ok::<_, PortError>(());
                    }
                    let stamp = Stamp::new(1_795_773_600_000 + i as i64, format!("raw-{i}"));
                    idempotency
                        .claim(&workspace, &format!("raw-{i}"), "hash", &stamp)
                        .await?;
                    let mut changes = Changes::default();
                    changes
                        .profile
                        .insert(ProfileField::Plan, Some("raw".into()));
                    let message = UpsertMessage {
                        version: MESSAGE_VERSION,
                        workspace_id: workspace.clone(),
                        external_user_id: format!("raw-{i}"),
                        stamp,
                        changes,
                        erase: false,
                    };
                    queue.send(&message).await?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(pairs as f64 / started.elapsed().as_secs_f64())
}
