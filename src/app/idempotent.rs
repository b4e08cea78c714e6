//! The Idempotency-Key around a write (contract, "Idempotency-Key"), for every route
//! that takes one: the claim beside the rate check, the write, the completion mark,
//! and a claim given back when the write did not happen, so the client's retry is
//! processed, not replayed.

use super::ports::{Counters, IdempotencyKeys, PortError};
use super::rate_limit::RateLimiter;
use super::{AppError, Caller};
use crate::domain::idempotency::{Claim, LOCK_MS};
use crate::domain::Stamp;
use std::future::Future;

/// What the write did, or what the key replayed.
pub struct Done {
    pub replayed: bool,
    /// Batch entries that could not be written (by index in the batch).
    pub unsent: Vec<usize>,
}

/// A write's request as the Idempotency-Key flow sees it.
pub struct Request<'a> {
    pub caller: &'a Caller,
    pub stamp: Stamp,
    /// Rate-limit tokens it takes.
    pub cost: u64,
    pub body_hash: &'a str,
    pub idempotency_key: Option<&'a str>,
}

/// Admits the request at its cost and runs `write` once per Idempotency-Key and body:
/// `write` gets the stamp to write with (a request that died after claiming the key
/// lends its own, so a second copy of its write is a duplicate) and returns the batch
/// entries it could not write. Fails only when nothing was written.
pub async fn once<K, C, W, F>(
    keys: &K,
    limiter: &RateLimiter<C>,
    request: Request<'_>,
    write: W,
) -> Result<Done, AppError>
where
    K: IdempotencyKeys,
    C: Counters,
    W: FnOnce(Stamp) -> F,
    F: Future<Output = Result<Vec<usize>, AppError>>,
{
    let Request {
        caller,
        mut stamp,
        cost,
        body_hash,
        idempotency_key,
    } = request;
    let workspace_id = caller.workspace_id.as_str();
    let Some(key) = idempotency_key else {
        limiter.admit(caller, stamp.accepted_at, cost).await?;
        return Ok(Done {
            replayed: false,
            unsent: write(stamp).await?,
        });
    };
    let ours = Held {
        keys,
        workspace_id,
        key,
        request_id: stamp.request_id.clone(),
        lock_until: stamp.accepted_at + LOCK_MS,
    };
    // The claim runs beside the rate check: one round trip instead of two. A claim
    // made for a request the limit refuses is given back, so it changes nothing.
    let (admitted, claim) = tokio::join!(
        limiter.admit(caller, stamp.accepted_at, cost),
        keys.claim(workspace_id, key, body_hash, &stamp)
    );
    if let Err(refused) = admitted {
        if let Ok(claim) = claim {
            if let Err(err) = ours.give_back(&claim).await {
                // The 429 stands: an unreleased key stops blocking its retries after
                // its lock (30 s).
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
            return Ok(Done {
                replayed: true,
                unsent: unsent.clone(),
            })
        }
        Claim::InFlight => return Err(AppError::IdempotencyKeyInUse),
        Claim::Reused => return Err(AppError::IdempotencyKeyReused),
    }
    // The record names the request that first claimed it (ours, or the one that died).
    let request_id = stamp.request_id.clone();
    let unsent = match write(stamp).await {
        Ok(unsent) => unsent,
        Err(err) => {
            // Nothing was written: the key goes back as it was found. Should that fail
            // too, the write's own error is the answer (a 503 the client retries); the
            // key frees itself when its lock runs out.
            if let Err(kept) = ours.give_back(&claim).await {
                tracing::warn!(request_id = %ours.request_id, error = %kept, "idempotency key not given back");
            }
            return Err(err);
        }
    };
    // Awaited, not spawned: Lambda freezes the instance once it answers, so a mark left
    // for later could wait for minutes while retries of this key get 409s.
    if let Err(err) = keys.complete(workspace_id, key, &request_id, &unsent).await {
        // The write is done: still a success. A retry waits out the lock, then writes
        // again with the original stamp, a duplicate that changes nothing.
        tracing::warn!(request_id = %request_id, error = %err, "idempotency key not marked done");
    }
    Ok(Done {
        replayed: false,
        unsent,
    })
}

/// The Idempotency-Key as this request holds it.
struct Held<'a, K> {
    keys: &'a K,
    workspace_id: &'a str,
    key: &'a str,
    request_id: String,
    /// The lock this request set when it claimed or took over the key.
    lock_until: i64,
}

impl<K: IdempotencyKeys> Held<'_, K> {
    /// Undoes a claim this request made and did not use: a key it recorded is
    /// forgotten; a key it took over from an abandoned request is abandoned again,
    /// with that request's stamp, so a retry takes it over at once.
    async fn give_back(&self, claim: &Claim) -> Result<(), PortError> {
        match claim {
            Claim::Claimed => {
                self.keys
                    .release(self.workspace_id, self.key, &self.request_id)
                    .await
            }
            Claim::Abandoned(_) => {
                self.keys
                    .reopen(self.workspace_id, self.key, self.lock_until)
                    .await
            }
            _ => Ok(()),
        }
    }
}
