//! API key lookups, cached in the warm instance so most requests skip DynamoDB. Keys
//! found and keys not found are cached apart, each bounded and least recently used out
//! first: a flood of random keys churns only the second, and the keys that work stay.

use crate::app::ports::{ApiKeys, PortError};
use crate::domain::auth::ApiKeyRecord;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Contract: a revoked key is refused within 60 s.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// Live keys one instance remembers (a workspace has a few; an instance serves many).
const KNOWN_ENTRIES: NonZeroUsize = NonZeroUsize::new(10_000).unwrap();
/// Unknown or revoked key hashes one instance remembers: ~100 bytes each.
const UNKNOWN_ENTRIES: NonZeroUsize = NonZeroUsize::new(10_000).unwrap();

/// Where a key's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Cached,
    Read,
}

pub struct KeyCache<K> {
    store: K,
    known: Mutex<LruCache<String, (Instant, ApiKeyRecord)>>,
    unknown: Mutex<LruCache<String, Instant>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<K: ApiKeys> KeyCache<K> {
    pub fn new(store: K) -> Self {
        Self {
            store,
            known: Mutex::new(LruCache::new(KNOWN_ENTRIES)),
            unknown: Mutex::new(LruCache::new(UNKNOWN_ENTRIES)),
        }
    }

    /// The live (not revoked) key with this hash, if any, and where the answer came from.
    pub async fn active_key(
        &self,
        hash: &str,
    ) -> Result<(Option<ApiKeyRecord>, Lookup), PortError> {
        let fresh = |at: &Instant| at.elapsed() < CACHE_TTL;
        if let Some((_, record)) = lock(&self.known).get(hash).filter(|(at, _)| fresh(at)) {
            return Ok((Some(record.clone()), Lookup::Cached));
        }
        if lock(&self.unknown).get(hash).is_some_and(fresh) {
            return Ok((None, Lookup::Cached));
        }
        let record = self.store.get(hash).await?.filter(|record| !record.revoked);
        let now = Instant::now();
        match &record {
            Some(record) => {
                lock(&self.unknown).pop(hash);
                lock(&self.known).put(hash.to_owned(), (now, record.clone()));
            }
            None => {
                lock(&self.known).pop(hash);
                lock(&self.unknown).put(hash.to_owned(), now);
            }
        }
        Ok((record, Lookup::Read))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::fakes::MemoryApiKeys;
    use crate::domain::auth::Scope;

    fn record(workspace_id: &str) -> ApiKeyRecord {
        ApiKeyRecord {
            key_id: "key_1".into(),
            workspace_id: workspace_id.into(),
            scopes: vec![Scope::UsersWrite],
            rate_limit: None,
            created_at: 0,
            revoked: false,
        }
    }

    #[tokio::test]
    async fn a_flood_of_unknown_keys_never_evicts_the_keys_that_work() {
        let store = MemoryApiKeys::default();
        store
            .records
            .lock()
            .unwrap()
            .insert("good".into(), record("ws"));
        let cache = KeyCache::new(store.clone());
        assert_eq!(cache.active_key("good").await.unwrap().1, Lookup::Read);
        for i in 0..3 * UNKNOWN_ENTRIES.get() {
            let (found, _) = cache.active_key(&format!("bad{i}")).await.unwrap();
            assert_eq!(found, None);
        }
        let (found, lookup) = cache.active_key("good").await.unwrap();
        assert_eq!(
            (found.map(|r| r.workspace_id), lookup),
            (Some("ws".into()), Lookup::Cached)
        );
        // The most recent unknown keys are answered from the cache too.
        let last = format!("bad{}", 3 * UNKNOWN_ENTRIES.get() - 1);
        assert_eq!(
            cache.active_key(&last).await.unwrap(),
            (None, Lookup::Cached)
        );
        assert_eq!(store.reads(), 1 + 3 * UNKNOWN_ENTRIES.get());
    }

    #[tokio::test]
    async fn a_revoked_key_is_no_key() {
        let store = MemoryApiKeys::default();
        let revoked = ApiKeyRecord {
            revoked: true,
            ..record("ws")
        };
        store.records.lock().unwrap().insert("gone".into(), revoked);
        let cache = KeyCache::new(store);
        assert_eq!(
            cache.active_key("gone").await.unwrap(),
            (None, Lookup::Read)
        );
        assert_eq!(
            cache.active_key("gone").await.unwrap(),
            (None, Lookup::Cached)
        );
    }
}
