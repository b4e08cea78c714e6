//! How an import file is cut into batches, and the names that make a run resumable:
//! the same file and batch size always give the same batches, each with an
//! Idempotency-Key derived from the file's content and the batch's position.

use super::source::{LocalRefusal, Record};
use crate::error::CommandError;
use vibefollow_users::contract::{MAX_BATCH_BODY_BYTES, MAX_BATCH_USERS, MAX_BODY_BYTES};

/// Bytes of `{"users":[]}` around the entries.
const ENVELOPE_BYTES: usize = 12;

/// The users of a batch: those sent, and those refused before sending (kept with their
/// batch, so the rejected file and the checkpoint move together).
#[derive(Debug, Default, PartialEq)]
pub struct Batch {
    pub index: usize,
    pub entries: Vec<Entry>,
    pub refused: Vec<(usize, LocalRefusal)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub line: usize,
    pub body: String,
}

impl Batch {
    pub fn users(&self) -> usize {
        self.entries.len() + self.refused.len()
    }

    /// The request body for some of its entries (all of them, or the ones to resend).
    pub fn body_of<'a>(entries: impl Iterator<Item = &'a Entry>) -> String {
        let mut body = String::from("{\"users\":[");
        for (i, entry) in entries.enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&entry.body);
        }
        body.push_str("]}");
        body
    }
}

/// The Idempotency-Key of batch `index` of the file whose SHA-256 is `file_sha256`.
pub fn idempotency_key(file_sha256: &str, batch_size: usize, index: usize) -> String {
    let file = file_sha256.get(..32).unwrap_or(file_sha256);
    format!("vfctl-import-{file}-{batch_size}-{index}")
}

/// Cuts records into batches of at most `batch_size` users and the route's byte limit.
pub fn batches(
    records: impl Iterator<Item = Result<Record, CommandError>>,
    batch_size: usize,
) -> impl Iterator<Item = Result<Batch, CommandError>> {
    let batch_size = batch_size.clamp(1, MAX_BATCH_USERS);
    let mut records = records.peekable();
    let mut index = 0;
    std::iter::from_fn(move || {
        let mut batch = Batch {
            index,
            ..Batch::default()
        };
        let mut bytes = ENVELOPE_BYTES;
        while let Some(next) = records.peek() {
            let size = match next {
                Ok(Record { body: Ok(body), .. }) => body.len() + 1,
                _ => 0,
            };
            let full = batch.users() == batch_size || bytes + size > MAX_BATCH_BODY_BYTES;
            if full && batch.users() > 0 {
                break;
            }
            let record = match records.next()? {
                Ok(record) => record,
                Err(err) => return Some(Err(err)),
            };
            match record.body {
                // The API would refuse it too; sending it would only cost bytes.
                Ok(body) if body.len() > MAX_BODY_BYTES => batch.refused.push((
                    record.line,
                    LocalRefusal {
                        code: "too_long",
                        message: "the upsert is over 32 KiB (32,768 bytes)".into(),
                    },
                )),
                Ok(body) => {
                    bytes += size;
                    batch.entries.push(Entry {
                        line: record.line,
                        body,
                    });
                }
                Err(refusal) => batch.refused.push((record.line, refusal)),
            }
        }
        if batch.users() == 0 {
            return None;
        }
        index += 1;
        Some(Ok(batch))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(line: usize, body: String) -> Result<Record, CommandError> {
        Ok(Record {
            line,
            body: Ok(body),
        })
    }

    fn sizes(batches: &[Batch]) -> Vec<(usize, usize)> {
        batches
            .iter()
            .map(|b| (b.entries.len(), b.refused.len()))
            .collect()
    }

    #[test]
    fn batches_are_cut_by_count_and_bytes_the_same_way_every_time() {
        let small = (1..=1050).map(|i| record(i, format!("{{\"external_user_id\":\"u{i}\"}}")));
        let cut: Vec<Batch> = batches(small, 500).collect::<Result<_, _>>().unwrap();
        assert_eq!(sizes(&cut), [(500, 0), (500, 0), (50, 0)]);
        assert_eq!((cut[1].index, cut[1].entries[0].line), (1, 501));

        let big = (1..=40).map(|i| record(i, "x".repeat(30_000)));
        let cut: Vec<Batch> = batches(big, 1000).collect::<Result<_, _>>().unwrap();
        assert_eq!(sizes(&cut), [(17, 0), (17, 0), (6, 0)]);
        for batch in &cut {
            assert!(Batch::body_of(batch.entries.iter()).len() <= MAX_BATCH_BODY_BYTES);
        }
    }

    #[test]
    fn refused_records_stay_with_their_batch_and_oversized_ones_are_refused() {
        let records = vec![
            record(1, "{}".into()),
            Ok(Record {
                line: 2,
                body: Err(LocalRefusal {
                    code: "invalid_json",
                    message: "x".into(),
                }),
            }),
            record(3, "y".repeat(MAX_BODY_BYTES + 1)),
            record(4, "{}".into()),
        ];
        let cut: Vec<Batch> = batches(records.into_iter(), 2)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(sizes(&cut), [(1, 1), (1, 1)]);
        assert_eq!(cut[1].refused[0].1.code, "too_long");
        assert_eq!(Batch::body_of(cut[1].entries.iter()), "{\"users\":[{}]}");
    }

    #[test]
    fn keys_name_the_file_the_batch_size_and_the_position() {
        let file = "ab".repeat(32);
        assert_eq!(
            idempotency_key(&file, 500, 7),
            format!("vfctl-import-{}-500-7", "ab".repeat(16))
        );
        assert_ne!(
            idempotency_key(&file, 500, 7),
            idempotency_key(&file, 400, 7)
        );
        assert!(idempotency_key(&file, 1000, 99_999).len() <= 255);
    }
}
