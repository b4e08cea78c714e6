//! API key lookups, cached in the warm instance so most requests skip DynamoDB.

use crate::auth::ApiKeyRecord;
use crate::aws::AwsError;
use crate::store::ApiKeyStore;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Contract: a revoked key is refused within 60 s.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// Bounds memory under a flood of random keys; clearing is cheap and rare.
const MAX_ENTRIES: usize = 10_000;

pub struct KeyCache {
    store: ApiKeyStore,
    entries: Mutex<HashMap<String, (Instant, Option<ApiKeyRecord>)>>,
}

impl KeyCache {
    pub fn new(store: ApiKeyStore) -> Self {
        Self {
            store,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub async fn open_connection(&self) -> Result<(), AwsError> {
        self.store.open_connection().await
    }

    /// The live (not revoked) key with this hash, if any.
    pub async fn active_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>, AwsError> {
        if let Some(cached) = self.cached(hash) {
            return Ok(cached);
        }
        let record = self.store.get(hash).await?.filter(|record| !record.revoked);
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(hash.to_owned(), (Instant::now(), record.clone()));
        Ok(record)
    }

    fn cached(&self, hash: &str) -> Option<Option<ApiKeyRecord>> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries
            .get(hash)
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, record)| record.clone())
    }
}
