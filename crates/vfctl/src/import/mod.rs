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
mod send;
mod source;

pub use source::{CsvOptions, Format};

use crate::error::CommandError;
use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use send::{Done, Sender};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
