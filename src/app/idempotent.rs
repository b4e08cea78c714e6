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
        stamp,
        cost,
        body_hash,
        idempotency_key,
    } = request;
    let Some(key) = idempotency_key else {
        limiter.admit(caller, stamp.accepted_at, cost).await?;
        return Ok(Done {
            replayed: false,
            unsent: write(stamp).await?,
        });
    };
    let ours = Held {
        keys,
        workspace_id: caller.workspace_id.as_str(),
        key,
        request_id: stamp.request_id.clone(),
        lock_until: stamp.accepted_at + LOCK_MS,
    };
    let claim = ours
        .claim_admitted(limiter, caller, cost, body_hash, &stamp)
        .await?;
    if let Some(answer) = answer_without_writing(&claim) {
        return answer;
    }
    // A request that died after claiming the key lends its stamp.
    let stamp = match &claim {
        Claim::Abandoned(original) => original.clone(),
        _ => stamp,
    };
    // The record names the request that first claimed it (ours, or the one that died).
    let request_id = stamp.request_id.clone();
    let unsent = ours.write_or_give_back(&claim, stamp, write).await?;
    ours.mark_done(&request_id, &unsent).await;
    Ok(Done {
        replayed: false,
        unsent,
    })
}

/// The answer a claim gives without writing: the stored one replayed, or a key that is
/// busy or was used with another body. `None` when the key is ours to write with.
fn answer_without_writing(claim: &Claim) -> Option<Result<Done, AppError>> {
    match claim {
        Claim::Claimed | Claim::Abandoned(_) => None,
        Claim::Replay(unsent) => Some(Ok(Done {
            replayed: true,
            unsent: unsent.clone(),
        })),
        Claim::InFlight => Some(Err(AppError::IdempotencyKeyInUse)),
        Claim::Reused => Some(Err(AppError::IdempotencyKeyReused)),
    }
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
    /// Admits the request at its cost and claims the key. The claim runs beside the
    /// rate check: one round trip instead of two. A claim made for a request the limit
    /// refuses is given back, so it changes nothing.
    async fn claim_admitted<C: Counters>(
        &self,
        limiter: &RateLimiter<C>,
        caller: &Caller,
        cost: u64,
        body_hash: &str,
        stamp: &Stamp,
    ) -> Result<Claim, AppError> {
        let (admitted, claim) = tokio::join!(
            limiter.admit(caller, stamp.accepted_at, cost),
            self.keys
                .claim(self.workspace_id, self.key, body_hash, stamp)
        );
        if let Err(refused) = admitted {
            if let Ok(claim) = claim {
                if let Err(err) = self.give_back(&claim).await {
                    // The 429 stands: an unreleased key stops blocking its retries after
                    // its lock (30 s).
                    tracing::warn!(request_id = %self.request_id, error = %err, "idempotency key not given back after a 429");
                }
            }
            return Err(refused);
        }
        claim.map_err(AppError::from)
    }

    /// Runs `write` with `stamp` under the `claim`, giving the key back when it fails.
    async fn write_or_give_back<W, F>(
        &self,
        claim: &Claim,
        stamp: Stamp,
        write: W,
    ) -> Result<Vec<usize>, AppError>
    where
        W: FnOnce(Stamp) -> F,
        F: Future<Output = Result<Vec<usize>, AppError>>,
    {
        match write(stamp).await {
            Ok(unsent) => Ok(unsent),
            Err(err) => {
                // Nothing was written: the key goes back as it was found. Should that fail
                // too, the write's own error is the answer (a 503 the client retries); the
                // key frees itself when its lock runs out.
                if let Err(kept) = self.give_back(claim).await {
                    tracing::warn!(request_id = %self.request_id, error = %kept, "idempotency key not given back");
                }
                Err(err)
            }
        }
    }

    /// Marks the key done for `request_id`, all but the `unsent` batch entries.
    /// Awaited, not spawned: Lambda freezes the instance once it answers, so a mark left
    /// for later could wait for minutes while retries of this key get 409s.
    async fn mark_done(&self, request_id: &str, unsent: &[usize]) {
        if let Err(err) = self
            .keys
            .complete(self.workspace_id, self.key, request_id, unsent)
            .await
        {
            // The write is done: still a success. A retry waits out the lock, then writes
            // again with the original stamp, a duplicate that changes nothing.
            tracing::warn!(request_id = %request_id, error = %err, "idempotency key not marked done");
        }
    }

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
