//! Compiled rules kept between batches and invocations (contract, "Tenants never hurt
//! each other"): a workspace's definitions are read and parsed once per revision, and a
//! batch only reads the revision (one small item) to know they are current. Bounded by
//! the size of the rules it holds, so that a few workspaces with rules at the bounds
//! cannot fill a 128 MB function.

use super::ports::Definitions;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

/// Rule bytes (as JSON) the cache holds at most; a workspace over it alone is still
/// kept, as the only entry.
const RULE_BYTES: usize = 8 << 20;
/// Workspaces it holds at most.
const WORKSPACES: NonZeroUsize = NonZeroUsize::new(1_024).expect("not zero");

struct Entry {
    definitions: Arc<Definitions>,
    bytes: usize,
}

pub struct RuleCache {
    entries: Mutex<(LruCache<String, Entry>, usize)>,
    budget: usize,
}

impl Default for RuleCache {
    fn default() -> Self {
        Self::with_budget(RULE_BYTES)
    }
}

impl RuleCache {
    pub fn with_budget(budget: usize) -> Self {
        Self {
            entries: Mutex::new((LruCache::new(WORKSPACES), 0)),
            budget,
        }
    }

    /// The workspace's definitions if they are held at `revision`.
    pub fn get(&self, workspace_id: &str, revision: u64) -> Option<Arc<Definitions>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.0.get(workspace_id)?;
        (entry.definitions.revision == revision).then(|| entry.definitions.clone())
    }

    /// Holds definitions just read, unless newer ones are held already.
    pub fn put(&self, workspace_id: &str, definitions: Arc<Definitions>) {
        let bytes = definitions
            .audiences
            .iter()
            .map(|a| serde_json::to_vec(&a.rule_json).map_or(0, |json| json.len()))
            .sum();
        let mut guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (entries, held) = &mut *guard;
        if entries
            .peek(workspace_id)
            .is_some_and(|e| e.definitions.revision > definitions.revision)
        {
            return;
        }
        let entry = Entry { definitions, bytes };
        if let Some((_, old)) = entries.push(workspace_id.to_owned(), entry) {
            *held -= old.bytes;
        }
        *held += bytes;
        while *held > self.budget && entries.len() > 1 {
            if let Some((_, old)) = entries.pop_lru() {
                *held -= old.bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::ports::Audience;
    use crate::contract::parse_rule;
    use serde_json::json;

    fn definitions(revision: u64, rule_bytes: usize) -> Arc<Definitions> {
        let rule_json = json!({"field": "plan", "op": "eq", "value": "x".repeat(rule_bytes)});
        Arc::new(Definitions {
            revision,
            audiences: vec![Audience {
                audience_id: "a".into(),
                name: "a".into(),
                rule: parse_rule(&json!({"field": "plan", "op": "exists"})).unwrap(),
                rule_json,
                rule_rev: revision,
                since_rev: 1,
                building: None,
                updated_at: 0,
                counted: true,
                sharded: true,
            }],
        })
    }

    #[test]
    fn held_at_one_revision_and_never_replaced_by_an_older_read() {
        let cache = RuleCache::default();
        cache.put("ws", definitions(3, 10));
        assert!(cache.get("ws", 3).is_some());
        assert!(cache.get("ws", 4).is_none(), "a newer revision is a miss");
        cache.put("ws", definitions(2, 10));
        assert!(
            cache.get("ws", 3).is_some(),
            "a slower, older read is not kept"
        );
    }

    #[test]
    fn bounded_by_the_bytes_of_its_rules_least_recently_used_out_first() {
        let cache = RuleCache::with_budget(1_000);
        cache.put("a", definitions(1, 400));
        cache.put("b", definitions(1, 400));
        assert!(cache.get("a", 1).is_some());
        cache.put("c", definitions(1, 400));
        assert!(cache.get("b", 1).is_none(), "b was used least recently");
        assert!(cache.get("a", 1).is_some() && cache.get("c", 1).is_some());
        cache.put("huge", definitions(1, 5_000));
        assert!(cache.get("huge", 1).is_some(), "kept alone");
        assert!(cache.get("a", 1).is_none() && cache.get("c", 1).is_none());
    }
}
