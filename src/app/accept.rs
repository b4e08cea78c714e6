//! Accepting a write (contract: upsert, batch, erase). After the checks that need no
//! I/O: the rate check, the Idempotency-Key claim, the send, the completion mark, and
//! only then the answer. Lambda freezes an instance once it answers, so nothing that a
//! retry depends on is left for after it.

use super::ports::{Counters, IdempotencyKeys, PortError, UpsertQueue};
use super::rate_limit::RateLimiter;
use super::{AppError, Caller};
use crate::contract::{
    erase_hash, ErrorCode, FieldError, Rejected, RequestError, ValidBatch, ValidUpsert,
};
use crate::domain::idempotency::{Claim, LOCK_MS};
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

/// What the idempotent enqueue did.
struct Enqueued {
    replayed: bool,
    /// Batch entries that could not be enqueued (by index in the batch).
    unsent: Vec<usize>,
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
        let Enqueued { replayed, unsent } = self
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
        mut stamp: Stamp,
        cost: u64,
        body_hash: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Enqueued, AppError> {
        let workspace_id = caller.workspace_id.as_str();
        let Some(key) = idempotency_key else {
            self.limiter.admit(caller, stamp.accepted_at, cost).await?;
            let unsent = self.send(workspace_id, outgoing, &stamp).await?;
            return Ok(Enqueued {
                replayed: false,
                unsent,
            });
        };
        let ours = Held {
            workspace_id,
            key,
            request_id: stamp.request_id.clone(),
            lock_until: stamp.accepted_at + LOCK_MS,
        };
        // The claim runs beside the rate check: one round trip instead of two. A claim
        // made for a request the limit refuses is given back, so it changes nothing.
        let (admitted, claim) = tokio::join!(
            self.limiter.admit(caller, stamp.accepted_at, cost),
            self.keys.claim(workspace_id, key, body_hash, &stamp)
        );
        if let Err(refused) = admitted {
            if let Ok(claim) = claim {
                if let Err(err) = self.give_back(&ours, &claim).await {
                    // The 429 stands: an unreleased key stops blocking its retries
                    // after its lock (30 s).
                    tracing::warn!(request_id = %ours.request_id, error = %err, "idempotency key not given back after a 429");
                }
            }
            return Err(refused);
        }
        let claim = claim?;
        match &claim {
            Claim::Claimed => {}
            Claim::Abandoned(original) => stamp = original.clone(),
            Claim::Replay(unsent) => {
                return Ok(Enqueued {
                    replayed: true,
                    unsent: unsent.clone(),
                })
            }
            Claim::InFlight => return Err(AppError::IdempotencyKeyInUse),
            Claim::Reused => return Err(AppError::IdempotencyKeyReused),
        }
        let unsent = match self.send(workspace_id, outgoing, &stamp).await {
            Ok(unsent) => unsent,
            Err(err) => {
                // Nothing was enqueued: the key goes back as it was found, so the
                // client's retry is processed, not replayed.
                self.give_back(&ours, &claim).await?;
                return Err(err);
            }
        };
        // The record names the request that first claimed it (ours, or the one that died).
        let request_id = &stamp.request_id;
        // Awaited, not spawned: Lambda freezes the instance once it answers, so a mark
        // left for later could wait for minutes while retries of this key get 409s.
        if let Err(err) = self
            .keys
            .complete(workspace_id, key, request_id, &unsent)
            .await
        {
            // The write is in SQS: still a 202. A retry waits out the lock, then
            // re-enqueues with the original stamp, a duplicate the merge ignores.
            tracing::warn!(request_id = %request_id, error = %err, "idempotency key not marked done");
        }
        Ok(Enqueued {
            replayed: false,
            unsent,
        })
    }

    /// Undoes a claim this request made and did not use: a key it recorded is
    /// forgotten; a key it took over from an abandoned request is abandoned again,
    /// with that request's stamp, so a retry takes it over at once.
    async fn give_back(&self, ours: &Held<'_>, claim: &Claim) -> Result<(), PortError> {
        match claim {
            Claim::Claimed => {
                self.keys
                    .release(ours.workspace_id, ours.key, &ours.request_id)
                    .await
            }
            Claim::Abandoned(_) => {
                self.keys
                    .reopen(ours.workspace_id, ours.key, ours.lock_until)
                    .await
            }
            _ => Ok(()),
        }
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
                // Later entries of the batch win: their stamps sort after earlier ones'.
                let request_id = format!("{}.{index:04}", stamp.request_id);
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

/// The Idempotency-Key as this request holds it.
struct Held<'a> {
    workspace_id: &'a str,
    key: &'a str,
    request_id: String,
    /// The lock this request set when it claimed or took over the key.
    lock_until: i64,
}

#[cfg(test)]
#[path = "accept_tests.rs"]
mod tests;
