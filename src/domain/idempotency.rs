//! The Idempotency-Key rule (contract, "Idempotency-Key"): what a key already recorded
//! means for a request that carries it. Pure; the stores keep the record.

use super::Stamp;

/// How long a key is remembered (contract: 24 hours).
pub const RETENTION_SECS: i64 = 24 * 60 * 60;
/// How long an unfinished request holds its key. The api function's timeout is well
/// under this, so a live request never loses its lock.
pub const LOCK_MS: i64 = 30_000;

/// A recorded key: the request that claimed it and how far it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub body_hash: String,
    /// The stamp of the request that claimed the key.
    pub stamp: Stamp,
    /// The request enqueued its write (and the answer may have gone out).
    pub done: bool,
    /// Until when the claiming request holds the key (epoch ms).
    pub lock_until: i64,
    /// The batch entries a completed request could not enqueue.
    pub unsent: Vec<usize>,
    /// When the record stops counting (epoch s; TTL deletion lags).
    pub expires_at: i64,
}

impl KeyRecord {
    /// The record a request makes when it claims a free key.
    pub fn claimed(body_hash: &str, stamp: &Stamp) -> Self {
        Self {
            body_hash: body_hash.to_owned(),
            stamp: stamp.clone(),
            done: false,
            lock_until: stamp.accepted_at + LOCK_MS,
            unsent: Vec::new(),
            expires_at: stamp.accepted_at / 1000 + RETENTION_SECS,
        }
    }

    /// Whether the record still counts at `now_ms` (an expired one is as absent).
    pub fn live_at(&self, now_ms: i64) -> bool {
        self.expires_at >= now_ms / 1000
    }
}

/// What claiming an Idempotency-Key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is ours: process the request.
    Claimed,
    /// Already accepted with this body: answer the same again, enqueue nothing. Holds
    /// the batch entries that could not be enqueued the first time (none for others).
    Replay(Vec<usize>),
    /// Another request with this key is still being processed.
    InFlight,
    /// Used before with a different body.
    Reused,
    /// A request with this key died after recording it; we took over its lock and
    /// must enqueue again with its original stamp, so that if it did enqueue before
    /// dying the second copy is a duplicate the merge ignores.
    Abandoned(Stamp),
}

/// The rule for a key that is already recorded.
pub fn judge(existing: &KeyRecord, body_hash: &str, now_ms: i64) -> Claim {
    if existing.body_hash != body_hash {
        return Claim::Reused;
    }
    if existing.done {
        return Claim::Replay(existing.unsent.clone());
    }
    if existing.lock_until > now_ms {
        return Claim::InFlight;
    }
    Claim::Abandoned(existing.stamp.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(hash: &str, done: bool, lock_until: i64) -> KeyRecord {
        KeyRecord {
            body_hash: hash.into(),
            stamp: Stamp::new(5, "r1"),
            done,
            lock_until,
            unsent: Vec::new(),
            expires_at: i64::MAX,
        }
    }

    #[test]
    fn other_body_is_reused_whatever_the_state() {
        assert_eq!(judge(&record("h1", true, 0), "h2", 10), Claim::Reused);
        assert_eq!(judge(&record("h1", false, 99), "h2", 10), Claim::Reused);
    }

    #[test]
    fn done_replays_and_live_pending_is_in_flight() {
        assert_eq!(judge(&record("h", true, 0), "h", 10), Claim::Replay(vec![]));
        let partly_sent = KeyRecord {
            unsent: vec![3, 17],
            ..record("h", true, 0)
        };
        assert_eq!(judge(&partly_sent, "h", 10), Claim::Replay(vec![3, 17]));
        assert_eq!(judge(&record("h", false, 11), "h", 10), Claim::InFlight);
    }

    #[test]
    fn expired_pending_lock_is_abandoned_with_its_original_stamp() {
        let stamp = Stamp::new(5, "r1");
        assert_eq!(
            judge(&record("h", false, 10), "h", 10),
            Claim::Abandoned(stamp)
        );
    }
}
