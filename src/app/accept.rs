//! Accepting a write (contract: upsert, batch, erase). After the checks that need no
//! I/O: the rate check, the Idempotency-Key claim, the send, the completion mark, and
//! only then the answer. Lambda freezes an instance once it answers, so nothing that a
//! retry depends on is left for after it.

use super::idempotent::{once, Done, Request};
use super::ports::{Counters, IdempotencyKeys, PortError, UpsertQueue};
use super::rate_limit::RateLimiter;
use super::{AppError, Caller};
use crate::contract::{
    erase_hash, ErrorCode, FieldError, Rejected, RequestError, ValidBatch, ValidUpsert,
};
use crate::domain::{Changes, Stamp, UpsertMessage};
use std::sync::Arc;

/// A write the checks found valid, and the Idempotency-Key it came with.
#[derive(Debug)]
pub struct Checked {
    pub write: Write,
    pub idempotency_key: Option<String>,
}

#[derive(Debug)]
pub enum Write {
    Upsert(ValidUpsert),
    Batch(ValidBatch),
    Erase { external_user_id: String },
}

/// What was accepted.
#[derive(Debug, PartialEq)]
pub enum Accepted {
    /// An upsert or an erasure.
    One { replayed: bool },
    /// A batch: every upsert accepted when `rejected` is empty.
    Batch {
        replayed: bool,
        accepted: usize,
        rejected: Vec<Rejected>,
    },
}

impl Accepted {
    /// Whether this answers a request accepted before (nothing was enqueued now).
    pub fn replayed(&self) -> bool {
        match self {
            Accepted::One { replayed } | Accepted::Batch { replayed, .. } => *replayed,
        }
    }
}

/// What an accepted write puts on the queue.
enum Outgoing {
    One {
        external_user_id: String,
        changes: Changes,
        /// When it happened at the source, if the upsert said.
        timestamp: Option<i64>,
        erase: bool,
    },
    /// A batch's valid upserts, each with its index in the batch.
    Batch(Vec<(usize, ValidUpsert)>),
}

pub struct Accept<K, Q, C> {
    keys: K,
    queue: Q,
    limiter: Arc<RateLimiter<C>>,
}

impl<K: IdempotencyKeys, Q: UpsertQueue, C: Counters> Accept<K, Q, C> {
    pub fn new(keys: K, queue: Q, limiter: Arc<RateLimiter<C>>) -> Self {
        Self {
            keys,
            queue,
            limiter,
        }
    }

    /// Accepts a checked write stamped `stamp` (its acceptance), or refuses it.
    pub async fn accept(
        &self,
        caller: &Caller,
        checked: Result<Checked, RequestError>,
        stamp: Stamp,
    ) -> Result<Accepted, AppError> {
        let Checked {
            write,
            idempotency_key,
        } = match checked {
            Ok(checked) => checked,
            // Found before any I/O, answered after the rate check that comes first in
            // the contract's order of checks: a 429 wins over it.
            Err(refused) => {
                self.limiter.admit(caller, stamp.accepted_at, 1).await?;
                return Err(refused.into());
            }
        };
        let key = idempotency_key.as_deref();
        let (outgoing, body_hash) = match write {
            Write::Batch(batch) => return self.batch(caller, batch, stamp, key).await,
            Write::Upsert(ValidUpsert {
                external_user_id,
                changes,
                timestamp,
                body_hash,
            }) => {
                let outgoing = Outgoing::One {
                    external_user_id,
                    changes,
                    timestamp,
                    erase: false,
                };
                (outgoing, body_hash)
            }
            Write::Erase { external_user_id } => {
                let body_hash = erase_hash(&external_user_id);
                // Contract: an erasure is stamped at its acceptance.
                let outgoing = Outgoing::One {
                    external_user_id,
                    changes: Changes::default(),
                    timestamp: None,
                    erase: true,
                };
                (outgoing, body_hash)
            }
        };
        let enqueued = self
            .enqueue(caller, outgoing, stamp, 1, &body_hash, key)
            .await?;
        Ok(Accepted::One {
            replayed: enqueued.replayed,
        })
    }

    /// Accepts the valid upserts of a batch; the answer lists the others.
    async fn batch(
        &self,
        caller: &Caller,
        batch: ValidBatch,
        stamp: Stamp,
        idempotency_key: Option<&str>,
    ) -> Result<Accepted, AppError> {
        // Contract: one request per started 100 users.
        let cost = batch.entries.len().div_ceil(100) as u64;
        let ValidBatch { entries, body_hash } = batch;
        let mut rejected: Vec<Rejected> = Vec::new();
        let mut valid: Vec<(usize, ValidUpsert)> = Vec::new();
        for (index, entry) in entries.into_iter().enumerate() {
            match entry {
                Ok(upsert) => valid.push((index, upsert)),
                Err(errors) => rejected.push(Rejected::new(index, errors)),
            }
        }
        let accepted = valid.len();
        if accepted == 0 {
            self.limiter.admit(caller, stamp.accepted_at, cost).await?;
            return Ok(Accepted::Batch {
                replayed: false,
                accepted,
                rejected,
            });
        }
        let Done { replayed, unsent } = self
            .enqueue(
                caller,
                Outgoing::Batch(valid),
                stamp,
                cost,
                &body_hash,
                idempotency_key,
            )
            .await?;
        rejected.extend(unsent.iter().map(|&index| {
            let error = FieldError::new(
                ErrorCode::Unavailable,
                format!("users[{index}]"),
                "this upsert could not be enqueued; nothing of it was accepted, send it again",
            );
            Rejected::new(index, vec![error])
        }));
        rejected.sort_by_key(|r| r.index);
        Ok(Accepted::Batch {
            replayed,
            accepted: accepted - unsent.len(),
            rejected,
        })
    }

    /// The rate check, the Idempotency-Key, the send: the common end of every write.
    async fn enqueue(
        &self,
        caller: &Caller,
        outgoing: Outgoing,
        stamp: Stamp,
        cost: u64,
        body_hash: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Done, AppError> {
        let workspace_id = caller.workspace_id.as_str();
        let send = |stamp: Stamp| async move { self.send(workspace_id, outgoing, &stamp).await };
        let request = Request {
            caller,
            stamp,
            cost,
            body_hash,
            idempotency_key,
        };
        once(&self.keys, &self.limiter, request, send).await
    }

    /// Puts an accepted write on the queue with `stamp`; returns the batch entries
    /// that could not be enqueued. Fails only when nothing was enqueued.
    async fn send(
        &self,
        workspace_id: &str,
        outgoing: Outgoing,
        stamp: &Stamp,
    ) -> Result<Vec<usize>, AppError> {
        let upserts = match outgoing {
            Outgoing::One {
                external_user_id,
                changes,
                timestamp,
                erase,
            } => {
                // A takeover resends with the original acceptance; the source time is
                // the body's, the same in both.
                let stamp = stamp.clone().at_source(timestamp);
                let one = UpsertMessage::new(workspace_id, external_user_id, stamp, changes, erase);
                self.queue.send(&one).await?;
                return Ok(Vec::new());
            }
            Outgoing::Batch(upserts) => upserts,
        };
        let indices: Vec<usize> = upserts.iter().map(|(index, _)| *index).collect();
        let messages: Vec<UpsertMessage> = upserts
            .into_iter()
            .map(|(index, upsert)| {
                // Later entries of the batch win: their stamps sort after earlier ones'
                // (five digits: a Segment batch holds up to 16,600 messages).
                let request_id = format!("{}.{index:05}", stamp.request_id);
                let entry_stamp =
                    Stamp::new(stamp.accepted_at, request_id).at_source(upsert.timestamp);
                UpsertMessage::new(
                    workspace_id,
                    upsert.external_user_id,
                    entry_stamp,
                    upsert.changes,
                    false,
                )
            })
            .collect();
        let unsent = self.queue.send_all(&messages).await;
        let unsent_entries: Vec<usize> = unsent.messages.iter().map(|&m| indices[m]).collect();
        if let Some(error) = &unsent.error {
            tracing::warn!(request_id = %stamp.request_id, unsent = unsent_entries.len(), error = %error, "batch entries not enqueued");
        }
        if unsent_entries.len() == indices.len() {
            // Nothing accepted: a 503 the client retries whole, whatever SQS said.
            let code = unsent
                .error
                .map_or("no entry enqueued".into(), PortError::into_code);
            return Err(PortError::Unavailable(code).into());
        }
        Ok(unsent_entries)
    }
}

#[cfg(test)]
#[path = "accept_tests.rs"]
mod tests;
