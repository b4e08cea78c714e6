//! The users table (`docs/architecture.md`): one item per user, written whole with a
//! condition on its version; the email index and the workspace index it pages.

mod document;
mod item;
mod legacy;
#[cfg(test)]
mod migration_tests;

use super::attributes::{from_attribute, to_attribute};
use super::{
    condition_held, get_by_key, get_n, get_s, n, s, user_shard, workspace_key, Item, MAX_BATCH_GET,
    PARTITION_KEY, TTL_ATTRIBUTE,
};
use crate::app::ports::{
    EmailMatches, PortError, StoredUser, UserKey, Users, WorkspaceUsers, WriteOutcome,
};
use crate::contract::{normalize_email, MAX_EMAIL_MATCHES};
use crate::domain::budget::{parse_stamp, stamp_text};
use crate::domain::{
    next_version, OnceWrite, OnceWrites, ProfileField, RejectReason, RejectedTrait, UserProfile,
};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, ReturnConsumedCapacity, Select};
use aws_sdk_dynamodb::Client;
pub(super) use item::stored_user;
pub use item::ProfileFormat;
use item::{email_key, item_from_user, user_from_item, workspace_of};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// How long a tombstone outlives its erasure: longer than a message can wait in the
/// queue (14 days) and then the dead-letter queue (14 more), both counted from acceptance.
pub const TOMBSTONE_TTL_SECS: i64 = 30 * 24 * 60 * 60;

/// The GSI that finds users by lower-cased email within a workspace. It projects keys
/// only and sorts by `pk`, so a lookup reads the first matches by external_user_id
/// and then the items themselves by key: users writes are not copied into the index.
pub const EMAIL_INDEX: &str = "email-lookup";
/// The index's partition key: workspace#lower-cased email.
pub const EMAIL_KEY: &str = "email_key";

/// The users table: one item per (workspace, external_user_id) under
/// `pk` = workspace#external_user_id, so a large workspace spreads over partitions.
#[derive(Clone)]
pub struct UserStore {
    client: Client,
    table: String,
    format: ProfileFormat,
}

impl UserStore {
    /// A store that writes profiles in format 2.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            format: ProfileFormat::default(),
        }
    }

    /// The same store, writing profiles in `format`.
    pub fn writing(self, format: ProfileFormat) -> Self {
        Self { format, ..self }
    }

    pub async fn open_connection(&self) -> Result<(), PortError> {
        super::open_connection(&self.client, &self.table).await
    }

    /// How many items still hold format 1 (`vfctl users formats`): a Scan of the whole
    /// table, eventually consistent, that counts only (DynamoDB filters; no item is
    /// sent). It reads every item once, by size: a million ~0.5 KB items ≈ 62,500 read
    /// units, under a cent. Tombstones written before format 2 (until they expire) and
    /// profiles past the document bound count as format 1 (`item.rs`).
    pub async fn count_formats(&self) -> Result<FormatCount, PortError> {
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .select(Select::Count)
            .filter_expression("attribute_exists(#stamps)")
            .expression_attribute_names("#stamps", legacy::STAMPS)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .into_paginator()
            .send();
        let mut count = FormatCount::default();
        while let Some(page) = pages.next().await {
            let out = page?;
            count.pages += 1;
            count.items += u64::try_from(out.scanned_count()).unwrap_or(0);
            count.format_1 += u64::try_from(out.count()).unwrap_or(0);
            count.read_units += out
                .consumed_capacity()
                .and_then(|c| c.capacity_units())
                .unwrap_or(0.0);
        }
        Ok(count)
    }
}

/// A user of a batch read, with its workspace. An unreadable item fails only its own
/// user: read as absent here, its write (made as a creation) fails its condition and
/// only that user's messages are retried; `get` names the cause.
fn batch_user(item: &Item) -> Option<(&str, StoredUser)> {
    let user = user_from_item(item).unwrap_or_else(|unreadable| {
        tracing::warn!(error = %unreadable, "a users item in a batch read is unreadable");
        None
    });
    Some((workspace_of(item)?, user?))
}

/// The users table by item format, and what counting it cost.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct FormatCount {
    pub items: u64,
    /// Items whose profile is still attributes (format 1), rewritten by their next write.
    pub format_1: u64,
    pub pages: u64,
    /// As DynamoDB reported them (none locally).
    pub read_units: f64,
}

impl Users for UserStore {
    /// A strongly consistent read of one user.
    async fn get(
        &self,
        workspace_id: &str,
        external_user_id: &str,
    ) -> Result<Option<StoredUser>, PortError> {
        let key = workspace_key(workspace_id, external_user_id);
        let item = get_by_key(&self.client, &self.table, key, true).await?;
        Ok(item.as_ref().map(user_from_item).transpose()?.flatten())
    }

    /// Strongly consistent reads of many users in one call per 100 keys (BatchGetItem).
    /// Keys DynamoDB leaves unprocessed are read one by one.
    async fn get_many(
        &self,
        keys: &[(&str, &str)],
    ) -> Result<HashMap<UserKey, StoredUser>, PortError> {
        let mut found = HashMap::new();
        for chunk in keys.chunks(MAX_BATCH_GET) {
            let request_keys = chunk
                .iter()
                .map(|(workspace_id, id)| {
                    Item::from([(PARTITION_KEY.to_owned(), s(workspace_key(workspace_id, id)))])
                })
                .collect::<Vec<_>>();
            let keys_and_attributes = KeysAndAttributes::builder()
                .set_keys(Some(request_keys))
                .consistent_read(true)
                .build()
                .map_err(|e| PortError::Refused(e.to_string()))?;
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.table, keys_and_attributes)
                .send()
                .await?;
            for item in out
                .responses()
                .and_then(|r| r.get(&self.table))
                .into_iter()
                .flatten()
            {
                if let Some((workspace_id, user)) = batch_user(item) {
                    found.insert(
                        (workspace_id.to_owned(), user.external_user_id.clone()),
                        user,
                    );
                }
            }
            let unprocessed = out
                .unprocessed_keys()
                .and_then(|u| u.get(&self.table))
                .map(|k| k.keys().to_vec())
                .unwrap_or_default();
            for key in unprocessed {
                let Some(pk) = get_s(&key, PARTITION_KEY) else {
                    continue;
                };
                let item = get_by_key(&self.client, &self.table, pk.to_owned(), true).await?;
                if let Some((workspace_id, user)) = item.as_ref().and_then(batch_user) {
                    found.insert(
                        (workspace_id.to_owned(), user.external_user_id.clone()),
                        user,
                    );
                }
            }
        }
        Ok(found)
    }

    /// Writes the whole item if its version is still the one that was read.
    async fn put(&self, workspace_id: &str, user: &StoredUser) -> Result<WriteOutcome, PortError> {
        let request = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_from_user(workspace_id, user, self.format)?));
        let request = if user.version == 0 {
            request.condition_expression("attribute_not_exists(pk)")
        } else {
            // An item holds one of the two, by its format (`item.rs`).
            request
                .condition_expression(
                    "#version = :read_version OR #profile_version = :read_version",
                )
                .expression_attribute_names("#version", item::VERSION)
                .expression_attribute_names("#profile_version", item::PROFILE_VERSION)
                .expression_attribute_values(":read_version", n(user.version))
        };
        Ok(if condition_held(request.send().await)? {
            WriteOutcome::Written
        } else {
            WriteOutcome::Conflict
        })
    }

    /// Users of a workspace whose email matches, ignoring case: the first
    /// `MAX_EMAIL_MATCHES` by external_user_id, however many index pages that takes.
    async fn find_by_email(
        &self,
        workspace_id: &str,
        email: &str,
    ) -> Result<EmailMatches, PortError> {
        let wanted = email_key(workspace_id, email);
        let mut ids: Vec<String> = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(EMAIL_INDEX)
                .key_condition_expression("email_key = :k")
                .expression_attribute_values(":k", s(&wanted))
                .limit((MAX_EMAIL_MATCHES + 1 - ids.len()) as i32)
                .set_exclusive_start_key(start)
                .send()
                .await?;
            let prefix = workspace_key(workspace_id, "");
            ids.extend(out.items().iter().filter_map(|item| {
                Some(
                    get_s(item, PARTITION_KEY)?
                        .strip_prefix(&prefix)?
                        .to_owned(),
                )
            }));
            start = out.last_evaluated_key;
            if start.is_none() || ids.len() > MAX_EMAIL_MATCHES {
                break;
            }
        }
        let truncated = ids.len() > MAX_EMAIL_MATCHES;
        ids.truncate(MAX_EMAIL_MATCHES);
        let keys: Vec<(&str, &str)> = ids.iter().map(|id| (workspace_id, id.as_str())).collect();
        let mut found = self.get_many(&keys).await?;
        // The index lags the table: keep only users whose email still matches.
        let users = ids
            .iter()
            .filter_map(|id| found.remove(&(workspace_id.to_owned(), id.clone())))
            .filter(|user| {
                user.profile
                    .profile
                    .get(&ProfileField::Email)
                    .is_some_and(|stored| email_key(workspace_id, stored) == wanted)
            })
            .collect();
        Ok(EmailMatches { users, truncated })
    }
}

/// The GSI of a workspace's users by key (keys only), for audience builds: under
/// `workspace_shard` = `<workspace>#<n>`, one of [`WORKSPACE_SHARDS`] by user, so that
/// no one key takes every new user of a workspace (an import: 16 × 1,000 a second).
pub const WORKSPACE_USERS_INDEX: &str = "workspace-shard-users";
/// Its partition key.
const WORKSPACE_SHARD_KEY: &str = "workspace_shard";
/// Shards of a workspace's users.
const WORKSPACE_SHARDS: u64 = 16;
/// The GSI users created before the shards stay listed in, under `workspace_id` (one
/// key a workspace, no longer written for new users): builds page it first.
pub const UNSHARDED_USERS_INDEX: &str = "workspace-users";
/// Its partition key.
const UNSHARDED_KEY: &str = "workspace_id";

fn shard_key(workspace_id: &str, shard: u64) -> String {
    format!("{workspace_id}#{shard}")
}

/// A workspace's users are listed under one key from before the shards, then its
/// shards: a build pages them in that order. A user listed unsharded stays there, so
/// whichever way it is listed a build finds it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    Unsharded,
    Shard(u64),
}

impl Listing {
    fn next(self) -> Option<Self> {
        match self {
            Listing::Unsharded => Some(Listing::Shard(0)),
            Listing::Shard(n) if n + 1 < WORKSPACE_SHARDS => Some(Listing::Shard(n + 1)),
            Listing::Shard(_) => None,
        }
    }

    /// (its index's key attribute, the key's value).
    fn key(self, workspace_id: &str) -> (&'static str, String) {
        match self {
            Listing::Unsharded => (UNSHARDED_KEY, workspace_id.to_owned()),
            Listing::Shard(n) => (WORKSPACE_SHARD_KEY, shard_key(workspace_id, n)),
        }
    }
}

/// A build's cursor: where in which listing the last page ended. `#<n>|<pk>` in shard
/// n (`pk` empty: from its start), a bare `pk` in the unsharded one (the only form
/// before the shards, so a task queued by then goes on where it was).
fn parse_cursor(cursor: Option<&str>) -> (Listing, Option<&str>) {
    let Some(cursor) = cursor else {
        return (Listing::Unsharded, None);
    };
    let sharded = cursor
        .strip_prefix('#')
        .and_then(|rest| rest.split_once('|'))
        .and_then(|(n, pk)| Some((n.parse::<u64>().ok()?, pk)));
    match sharded {
        Some((n, pk)) => (Listing::Shard(n), Some(pk).filter(|pk| !pk.is_empty())),
        None => (Listing::Unsharded, Some(cursor).filter(|pk| !pk.is_empty())),
    }
}

fn cursor_text(listing: Listing, after: Option<&str>) -> String {
    let after = after.unwrap_or_default();
    match listing {
        Listing::Unsharded => after.to_owned(),
        Listing::Shard(n) => format!("#{n}|{after}"),
    }
}

impl WorkspaceUsers for UserStore {
    /// A page of the listing the cursor is in (the next one with users, when it ends
    /// with none), then the items by key (strongly consistent): an index entry is
    /// written when a user is created, sorted by `pk`.
    async fn page(
        &self,
        workspace_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StoredUser>, Option<String>), PortError> {
        let (mut listing, after) = parse_cursor(cursor);
        let mut after = after.map(str::to_owned);
        loop {
            let (key, value) = listing.key(workspace_id);
            let start = after.map(|pk| {
                Item::from([
                    (key.to_owned(), s(&value)),
                    (PARTITION_KEY.to_owned(), s(pk)),
                ])
            });
            // Each index named as a constant (dev/check_iam.py reads them).
            let query = match listing {
                Listing::Unsharded => self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(UNSHARDED_USERS_INDEX),
                Listing::Shard(_) => self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(WORKSPACE_USERS_INDEX),
            };
            let out = query
                .key_condition_expression("#key = :key")
                .expression_attribute_names("#key", key)
                .expression_attribute_values(":key", s(value))
                .set_exclusive_start_key(start)
                .limit(limit as i32)
                .send()
                .await?;
            let ids: Vec<&str> = out
                .items()
                .iter()
                .filter_map(|item| {
                    get_s(item, PARTITION_KEY)?
                        .split_once('#')
                        .map(|(_, id)| id)
                })
                .collect();
            let next = match out
                .last_evaluated_key()
                .and_then(|k| get_s(k, PARTITION_KEY))
            {
                Some(pk) => Some((listing, Some(pk.to_owned()))),
                None => listing.next().map(|next| (next, None)),
            };
            if ids.is_empty() {
                match next {
                    Some((next, from)) => {
                        (listing, after) = (next, from);
                        continue;
                    }
                    None => return Ok((Vec::new(), None)),
                }
            }
            let keys: Vec<(&str, &str)> = ids.iter().map(|id| (workspace_id, *id)).collect();
            let mut found = self.get_many(&keys).await?;
            let users = ids
                .iter()
                .filter_map(|id| found.remove(&(workspace_id.to_owned(), (*id).to_owned())))
                .collect();
            let next = next.map(|(listing, from)| cursor_text(listing, from.as_deref()));
            return Ok((users, next));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_item_in_a_batch_read_is_left_out_alone() {
        let mut user = StoredUser::new("u1");
        user.profile.created_at = Some(1);
        let good = item_from_user("ws", &user, ProfileFormat::Document).unwrap();
        let (workspace_id, read) = batch_user(&good).unwrap();
        assert_eq!((workspace_id, read.external_user_id.as_str()), ("ws", "u1"));
        let mut damaged = good.clone();
        damaged.insert(
            item::PROFILE.to_owned(),
            AttributeValue::B(Blob::new(vec![2, 0])),
        );
        assert!(batch_user(&damaged).is_none());
        assert!(user_from_item(&damaged).is_err(), "a single read says why");
    }

    #[test]
    fn a_cursor_reads_back_where_it_was_and_one_from_before_the_shards_is_unsharded() {
        for (listing, after) in [
            (Listing::Shard(0), None),
            (Listing::Shard(15), Some("ws#a|b#c")),
            (Listing::Unsharded, Some("ws#u1")),
        ] {
            let text = cursor_text(listing, after);
            assert_eq!(parse_cursor(Some(&text)), (listing, after), "{text}");
        }
        assert_eq!(parse_cursor(None), (Listing::Unsharded, None));
        // A bare pk (a task queued before the shards), whatever its user id holds.
        assert_eq!(
            parse_cursor(Some("ws#u|7")),
            (Listing::Unsharded, Some("ws#u|7"))
        );
        let order: Vec<Listing> =
            std::iter::successors(Some(Listing::Unsharded), |l| l.next()).collect();
        assert_eq!(order.len() as u64, 1 + WORKSPACE_SHARDS);
        assert_eq!(order[1], Listing::Shard(0));
    }
}
