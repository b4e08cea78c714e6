//! `vfctl users import FILE`: loads a file of users through `POST /api/v1/users/batch`.
//!
//! Resumable: batches are cut the same way on every run (see [`plan`]), each carries
//! an Idempotency-Key derived from the file's SHA-256 and its position, and
//! `FILE.checkpoint` records each batch once its answer is handled. A run started
//! again skips recorded batches; a batch that was in flight when the run died is sent
//! again with its key, and the API replays its first answer without enqueueing it
//! twice (keys are kept 24 hours). Refused users go to `FILE.rejected.ndjson` with
//! their line, errors and body.

mod plan;
mod source;

pub use source::{CsvOptions, Format};

use crate::error::CommandError;
use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use plan::{idempotency_key, Batch, Entry};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Attempts of one request before the run stops (it can be resumed).
const MAX_ATTEMPTS: u32 = 10;
/// Resends of the entries the API could not enqueue, before they count as refused.
const UNAVAILABLE_RESENDS: usize = 3;
const MAX_BACKOFF: Duration = Duration::from_secs(20);

pub struct ImportOptions {
    pub file: PathBuf,
    pub url: String,
    pub key: String,
    pub concurrency: usize,
    pub batch_size: usize,
    pub csv: CsvOptions,
}

/// What a run did; printed as one JSON line on stdout.
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    pub users: usize,
    pub accepted: usize,
    pub rejected: usize,
    pub batches: usize,
    /// Batches a previous run finished, not sent again.
    pub skipped_batches: usize,
    /// Batches the API answered as replays: sent before, enqueued once.
    pub replayed_batches: usize,
    pub seconds: f64,
    pub users_per_second: f64,
}

/// One batch's outcome.
struct Done {
    index: usize,
    users: usize,
    accepted: usize,
    replayed: bool,
    rejected: Vec<Value>,
}

pub async fn import(options: ImportOptions) -> Result<Summary, CommandError> {
    let started = Instant::now();
    let (file_sha256, lines) = fingerprint(&options.file)?;
    let format = Format::of(&options.file);
    // Other CSV options make other bodies from the same file: other batch keys.
    let file_sha256 = if options.csv == CsvOptions::default() {
        file_sha256
    } else {
        let described = serde_json::to_string(&options.csv).unwrap_or_default();
        hex::encode(Sha256::digest(format!("{file_sha256}\n{described}")))
    };
    let mut checkpoint = Checkpoint::open(
        &sibling(&options.file, "checkpoint"),
        &file_sha256,
        options.batch_size,
    )?;
    let mut rejected_file = RejectedFile::open(&sibling(&options.file, "rejected.ndjson"))?;
    let reader =
        BufReader::new(File::open(&options.file).map_err(CommandError::file(&options.file))?);
    let records = source::records(reader, format, &options.csv)?;
    let total = if format == Format::Csv {
        lines.saturating_sub(1)
    } else {
        lines
    };
    let progress = Progress::new(total as u64);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| CommandError::Setup(format!("no HTTP client: {e}")))?;
    let endpoint = format!("{}/api/v1/users/batch", options.url.trim_end_matches('/'));
    let done_before = checkpoint.done.clone();
    let skipped = std::cell::Cell::new((0, 0));
    let batches = plan::batches(records, options.batch_size).filter_map(|batch| match batch {
        Ok(batch) if done_before.contains(&batch.index) => {
            let (batches, users) = skipped.get();
            skipped.set((batches + 1, users + batch.users()));
            progress.skip(batch.users() as u64);
            None
        }
        other => Some(other),
    });
    let sender = Sender {
        client: &client,
        endpoint: &endpoint,
        key: &options.key,
        file_sha256: &file_sha256,
        batch_size: options.batch_size,
    };
    let mut summary = Summary::default();
    let mut outcomes = stream::iter(batches)
        .map(|batch| async { sender.send(batch?).await })
        .buffer_unordered(options.concurrency.max(1));
    while let Some(outcome) = outcomes.next().await {
        let done = outcome?;
        rejected_file.write(&done.rejected)?;
        checkpoint.record(&done)?;
        summary.batches += 1;
        summary.users += done.users;
        summary.accepted += done.accepted;
        summary.rejected += done.rejected.len();
        summary.replayed_batches += usize::from(done.replayed);
        progress.advance(done.users as u64, done.rejected.len());
    }
    drop(outcomes);
    progress.finish();
    let (skipped_batches, skipped_users) = skipped.get();
    summary.skipped_batches = skipped_batches;
    summary.users += skipped_users;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.users_per_second = (summary.users as f64 / summary.seconds.max(1e-9)).round();
    Ok(summary)
}

/// `FILE.<suffix>`, beside the file.
fn sibling(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// The file's SHA-256 and its number of non-blank lines (for progress).
fn fingerprint(path: &Path) -> Result<(String, usize), CommandError> {
    let mut file = File::open(path).map_err(CommandError::file(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 16];
    let mut lines = 0;
    let mut blank = true;
    loop {
        let read = file.read(&mut buffer).map_err(CommandError::file(path))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        for &byte in &buffer[..read] {
            if byte == b'\n' {
                lines += usize::from(!blank);
                blank = true;
            } else if !byte.is_ascii_whitespace() {
                blank = false;
            }
        }
    }
    lines += usize::from(!blank);
    Ok((hex::encode(hasher.finalize()), lines))
}

struct Sender<'a> {
    client: &'a reqwest::Client,
    endpoint: &'a str,
    key: &'a str,
    file_sha256: &'a str,
    batch_size: usize,
}

impl Sender<'_> {
    async fn send(&self, batch: Batch) -> Result<Done, CommandError> {
        let mut rejected: Vec<Value> = batch
            .refused
            .iter()
            .map(|(line, refusal)| json!({"line": line, "errors": [{"code": refusal.code, "message": refusal.message}]}))
            .collect();
        let base_key = idempotency_key(self.file_sha256, self.batch_size, batch.index);
        let mut pending: Vec<&Entry> = batch.entries.iter().collect();
        let mut accepted = 0;
        let mut replayed = false;
        for resend in 0..=UNAVAILABLE_RESENDS {
            if pending.is_empty() {
                break;
            }
            // A resend of the unavailable ones is a new request: a key of its own.
            let key = if resend == 0 {
                base_key.clone()
            } else {
                format!("{base_key}-resend{resend}")
            };
            let (answer, was_replayed) = self
                .post(&key, Batch::body_of(pending.iter().copied()))
                .await?;
            replayed |= was_replayed && resend == 0;
            accepted += answer["data"]["accepted"].as_u64().unwrap_or(0) as usize;
            let mut unavailable: Vec<usize> = Vec::new();
            let mut refused_now: Vec<usize> = Vec::new();
            for refused in answer["data"]["rejected"].as_array().into_iter().flatten() {
                let Some(entry) = refused["index"]
                    .as_u64()
                    .and_then(|i| pending.get(i as usize))
                else {
                    return Err(CommandError::Api(format!(
                        "batch {}: the API answered an index it was not sent",
                        batch.index
                    )));
                };
                refused_now.push(refused["index"].as_u64().unwrap_or_default() as usize);
                let errors = &refused["errors"];
                let only_unavailable = errors
                    .as_array()
                    .is_some_and(|e| e.iter().all(|e| e["code"] == "unavailable"));
                if only_unavailable && resend < UNAVAILABLE_RESENDS {
                    unavailable.push(refused["index"].as_u64().unwrap_or_default() as usize);
                } else {
                    rejected.push(rejection(
                        entry,
                        errors,
                        refused["index"].as_u64().unwrap_or_default(),
                    ));
                }
            }
            if unavailable.is_empty() {
                break;
            }
            let users: Vec<Option<String>> = pending.iter().map(|e| user_of(e)).collect();
            let again = resend_set(&users, &unavailable, &refused_now);
            // Accepted entries sent again are counted again if accepted again.
            accepted = accepted.saturating_sub(again.len() - unavailable.len());
            pending = again.into_iter().map(|i| pending[i]).collect();
        }
        Ok(Done {
            index: batch.index,
            users: batch.users(),
            accepted,
            replayed,
            rejected,
        })
    }

    /// One request until it is answered 202 or 207: 429, 409 and 5xx and network
    /// errors are retried (Retry-After when given); any other answer stops the run.
    async fn post(
        &self,
        idempotency_key: &str,
        body: String,
    ) -> Result<(Value, bool), CommandError> {
        let mut last_error = String::new();
        for attempt in 0..MAX_ATTEMPTS {
            let sent = self
                .client
                .post(self.endpoint)
                .bearer_auth(self.key)
                .header("content-type", "application/json")
                .header("idempotency-key", idempotency_key)
                .body(body.clone())
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(err) => {
                    last_error = format!("request failed: {err}");
                    tokio::time::sleep(backoff(attempt, None)).await;
                    continue;
                }
            };
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let replayed = response.headers().contains_key("idempotent-replayed");
            let text = response.text().await.unwrap_or_default();
            match status {
                202 | 207 => {
                    let answer = serde_json::from_str(&text)
                        .map_err(|e| CommandError::Api(format!("answer is not JSON: {e}")))?;
                    return Ok((answer, replayed));
                }
                409 | 429 | 500..=599 => {
                    last_error = format!("HTTP {status}: {text}");
                    tokio::time::sleep(backoff(attempt, retry_after)).await;
                }
                _ => {
                    let refused = format!("the API refused a batch (HTTP {status}): {text}");
                    return Err(CommandError::Api(refused));
                }
            }
        }
        Err(CommandError::Api(format!(
            "gave up after {MAX_ATTEMPTS} attempts; run again to resume. Last: {last_error}"
        )))
    }
}

/// The `external_user_id` an entry's body names.
fn user_of(entry: &Entry) -> Option<String> {
    let body: Value = serde_json::from_str(&entry.body).ok()?;
    body["external_user_id"].as_str().map(str::to_owned)
}

/// What to send again after some entries (`unavailable`, indices into the batch as
/// sent) could not be enqueued: those, and every later accepted entry of the same users
/// (not the ones `refused` for their content). A resend is stamped anew, so a later
/// entry sent alone before it would otherwise lose to the earlier one ("later entries
/// win" holds for the resend too).
fn resend_set(users: &[Option<String>], unavailable: &[usize], refused: &[usize]) -> Vec<usize> {
    let mut first_unavailable: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::new();
    for &index in unavailable {
        if let Some(Some(user)) = users.get(index) {
            let first = first_unavailable.entry(user).or_insert(index);
            *first = (*first).min(index);
        }
    }
    (0..users.len())
        .filter(|&index| {
            unavailable.contains(&index)
                || !refused.contains(&index)
                    && users[index]
                        .as_deref()
                        .and_then(|user| first_unavailable.get(user))
                        .is_some_and(|&first| first < index)
        })
        .collect()
}

fn backoff(attempt: u32, retry_after_secs: Option<u64>) -> Duration {
    match retry_after_secs {
        Some(secs) => Duration::from_secs(secs).min(MAX_BACKOFF),
        None => (Duration::from_millis(200) * 2u32.saturating_pow(attempt)).min(MAX_BACKOFF),
    }
}

/// A refused user as the rejected file lists it: the line, the errors with paths of
/// the upsert itself (`email`, not `users[3].email`), and the body as sent.
fn rejection(entry: &Entry, errors: &Value, index: u64) -> Value {
    let prefix = format!("users[{index}]");
    let errors: Vec<Value> = errors
        .as_array()
        .into_iter()
        .flatten()
        .map(|error| {
            let mut error = error.clone();
            let own = error["field"]
                .as_str()
                .and_then(|field| field.strip_prefix(&prefix))
                .map(|rest| rest.trim_start_matches('.').to_owned());
            match own {
                Some(rest) if rest.is_empty() => {
                    if let Some(fields) = error.as_object_mut() {
                        fields.remove("field");
                    }
                }
                Some(rest) => error["field"] = json!(rest),
                None => {}
            }
            error
        })
        .collect();
    let body: Value = serde_json::from_str(&entry.body).unwrap_or(Value::Null);
    json!({"line": entry.line, "errors": errors, "body": body})
}

/// `FILE.checkpoint`: a header naming the file and batch size, then one line per
/// batch whose answer was handled.
struct Checkpoint {
    path: PathBuf,
    file: File,
    done: BTreeSet<usize>,
}

impl Checkpoint {
    fn open(path: &Path, file_sha256: &str, batch_size: usize) -> Result<Self, CommandError> {
        let header = json!({"file_sha256": file_sha256, "batch_size": batch_size});
        let mut done = BTreeSet::new();
        if let Ok(existing) = File::open(path) {
            let mut lines = BufReader::new(existing).lines().map_while(Result::ok);
            let found: Option<Value> = lines.next().and_then(|l| serde_json::from_str(&l).ok());
            if found.as_ref() != Some(&header) {
                return Err(CommandError::Setup(format!(
                    "{} belongs to another file or batch size: delete it to start over",
                    path.display()
                )));
            }
            // A line cut short by a kill is simply not a record.
            done.extend(lines.filter_map(|l| {
                serde_json::from_str::<Value>(&l).ok()?["batch"]
                    .as_u64()
                    .map(|b| b as usize)
            }));
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(CommandError::file(path))?;
        if done.is_empty() && file.metadata().map(|m| m.len() == 0).unwrap_or(true) {
            writeln!(file, "{header}").map_err(CommandError::file(path))?;
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            done,
        })
    }

    fn record(&mut self, done: &Done) -> Result<(), CommandError> {
        let line = json!({"batch": done.index, "accepted": done.accepted, "rejected": done.rejected.len()});
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.sync_data())
            .map_err(CommandError::file(&self.path))?;
        self.done.insert(done.index);
        Ok(())
    }
}

/// `FILE.rejected.ndjson`, appended to; a line already listed (a batch resent after
/// a kill) is not listed twice.
struct RejectedFile {
    path: PathBuf,
    file: File,
    listed: BTreeSet<u64>,
}

impl RejectedFile {
    fn open(path: &Path) -> Result<Self, CommandError> {
        let listed = File::open(path)
            .map(|existing| {
                BufReader::new(existing)
                    .lines()
                    .map_while(Result::ok)
                    .filter_map(|l| serde_json::from_str::<Value>(&l).ok()?["line"].as_u64())
                    .collect()
            })
            .unwrap_or_default();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(CommandError::file(path))?;
        Ok(Self {
            path: path.to_owned(),
            file,
            listed,
        })
    }

    fn write(&mut self, rejected: &[Value]) -> Result<(), CommandError> {
        for entry in rejected {
            let line = entry["line"].as_u64().unwrap_or_default();
            if self.listed.insert(line) {
                writeln!(self.file, "{entry}").map_err(CommandError::file(&self.path))?;
            }
        }
        self.file
            .sync_data()
            .map_err(CommandError::file(&self.path))
    }
}

/// A progress bar on a terminal; a plain line every few seconds otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    started: Instant,
    state: std::sync::Mutex<(u64, u64, usize, Instant)>,
}

const PLAIN_EVERY: Duration = Duration::from_secs(2);

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} users  {per_sec}  ETA {eta}  {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            total,
            started: now,
            state: std::sync::Mutex::new((0, 0, 0, now)),
        }
    }

    /// Users a previous run already imported.
    fn skip(&self, users: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 += users;
        state.1 += users;
        if let Some(bar) = &self.bar {
            bar.inc(users);
        }
    }

    fn advance(&self, users: u64, rejected: usize) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 += users;
        state.2 += rejected;
        let (done, skipped, rejected, last) = *state;
        if let Some(bar) = &self.bar {
            bar.inc(users);
            bar.set_message(format!("rejected {rejected}"));
        } else if last.elapsed() >= PLAIN_EVERY {
            state.3 = Instant::now();
            let rate = (done - skipped) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            let left = self.total.saturating_sub(done) as f64 / rate.max(1e-9);
            let percent = done as f64 * 100.0 / self.total.max(1) as f64;
            eprintln!(
                "imported {done}/{} users ({percent:.0} %), {rate:.0} users/s, rejected {rejected}, ETA {left:.0} s",
                self.total
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resend_carries_the_later_entries_of_the_same_users() {
        let users: Vec<Option<String>> = ["a", "b", "a", "c", "a", "b"]
            .iter()
            .map(|u| Some((*u).to_owned()))
            .collect();
        assert_eq!(resend_set(&users, &[2], &[2]), vec![2, 4]);
        assert_eq!(resend_set(&users, &[1, 3], &[1, 3]), vec![1, 3, 5]);
        // A later entry refused for its content is not sent again.
        assert_eq!(resend_set(&users, &[0], &[0, 4]), vec![0, 2]);
        assert_eq!(resend_set(&users, &[], &[]), Vec::<usize>::new());
        assert_eq!(resend_set(&[None, None], &[0], &[0]), vec![0]);
    }

    #[test]
    fn rejected_errors_lose_the_batch_prefix() {
        let entry = Entry {
            line: 7,
            body: r#"{"external_user_id":""}"#.into(),
        };
        let errors = json!([
            {"code": "empty", "field": "users[3].external_user_id", "message": "m"},
            {"code": "invalid_type", "field": "users[3]", "message": "m"},
        ]);
        assert_eq!(
            rejection(&entry, &errors, 3),
            json!({"line": 7, "body": {"external_user_id": ""}, "errors": [
                {"code": "empty", "field": "external_user_id", "message": "m"},
                {"code": "invalid_type", "message": "m"},
            ]})
        );
    }

    #[test]
    fn fingerprint_counts_non_blank_lines() {
        let dir = std::env::temp_dir().join(format!("vf-import-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users.ndjson");
        std::fs::write(&path, "{}\n\n  \n{}\n{}").unwrap();
        let (sha, lines) = fingerprint(&path).unwrap();
        assert_eq!((sha.len(), lines), (64, 3));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_checkpoint_of_another_file_is_refused_and_a_torn_line_ignored() {
        let dir = std::env::temp_dir().join(format!("vf-checkpoint-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users.ndjson.checkpoint");
        let mut first = Checkpoint::open(&path, "aaaa", 500).unwrap();
        first
            .record(&Done {
                index: 2,
                users: 500,
                accepted: 500,
                replayed: false,
                rejected: vec![],
            })
            .unwrap();
        drop(first);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"batch\":")
            .unwrap();
        assert_eq!(
            Checkpoint::open(&path, "aaaa", 500).unwrap().done,
            BTreeSet::from([2])
        );
        assert!(Checkpoint::open(&path, "bbbb", 500).is_err());
        assert!(Checkpoint::open(&path, "aaaa", 400).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
