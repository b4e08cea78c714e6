//! The audiences and audience-members tables (`docs/audiences.md`, "Tables").
//!
//! Audiences: `pk` = workspace, `sk` = audience id, and one item `sk` = `#definitions`
//! holding the workspace's definitions revision, which every define and delete moves
//! on in the same transaction. Members: `pk` = `u#<workspace>#<user>`, `sk` = `state`
//! (the user's standings, pending decisions, next due instant, optimistic `rev`), and
//! `pk` = `a#<workspace>#<audience>`, `sk` = user (the member list, in id order: each
//! entry carries the `rev` of the state commit that wrote it, and a removal leaves a
//! `gone` entry for a day, so that a decision carried out late never undoes a newer one),
//! and `pk` = `n#<workspace>#<audience>#<since_rev>#<shard>`, `sk` = `count` (the member
//! count, in 16 shards by user so that no one key takes every change of a large
//! audience: each moves in the same transaction as the entry that changes sides).

use super::{
    condition, get_n, get_s, n, s, workspace_key, Condition, Item, PARTITION_KEY, TTL_ATTRIBUTE,
};
use crate::app::ports::{
    Audience, Audiences, BuildRecord, BuildStep, Definitions, Memberships, PortError, Standing,
    UserAudiences, UserKey,
};
use crate::contract::parse_rule;
use crate::domain::audience::MembershipEvent;
use crate::domain::membership::GONE_KEPT_SECS;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::KeysAndAttributes;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, Put, ReturnValuesOnConditionCheckFailure, Select, TransactWriteItem,
    Update,
};
use aws_sdk_dynamodb::Client;
use futures::future::join_all;
use std::collections::BTreeMap;

const SORT_KEY: &str = "sk";
/// The definitions revision's item in a workspace's partition (audience ids never
/// start with `#`).
const DEFINITIONS: &str = "#definitions";
const STATE: &str = "state";
/// A list entry that is a member now, of the audience that started at `:since`.
const MEMBER: &str = "attribute_not_exists(gone) AND rule_rev >= :since";
/// An entry an older commit (`rev < :rev`) wrote: a member of the audience…
const WAS_MEMBER: &str = "rev < :rev AND attribute_not_exists(gone) AND rule_rev >= :since";
/// …or not one (no entry, a `gone` one, or one of a deleted audience of the same id).
const WAS_NOT_MEMBER: &str =
    "attribute_not_exists(pk) OR (rev < :rev AND (attribute_exists(gone) OR rule_rev < :since))";
/// Member counts spread over this many keys per audience.
const COUNT_SHARDS: u64 = 16;
const COUNT: &str = "count";
/// Tries of one entry's write when its entry changes between the two conditions.
const ENTRY_ATTEMPTS: usize = 4;
/// The sparse index of state items by the instant they are due.
pub const DUE_INDEX: &str = "due";
/// Due items spread over this many index partitions, by user: each a time task of its
/// own, so that no global limit caps the time moves of a minute and no one key of the
/// index takes them all (`docs/scale.md`). Items written when there were 10 are in the
/// first 10.
const DUE_SHARDS: u32 = 64;
/// Conditional writes of member-list entries in flight at once.
const LIST_LANES: usize = 16;

#[derive(Clone)]
pub struct AudienceStore {
    client: Client,
    audiences: String,
    members: String,
}

impl AudienceStore {
    pub fn new(client: Client, audiences: &str, members: &str) -> Self {
        Self {
            client,
            audiences: audiences.to_owned(),
            members: members.to_owned(),
        }
    }

    fn key(pk: String, sk: &str) -> Item {
        Item::from([
            (PARTITION_KEY.to_owned(), s(pk)),
            (SORT_KEY.to_owned(), s(sk)),
        ])
    }

    /// The definitions revision moved from `revision` to `to`, as a transaction item.
    fn move_revision(
        &self,
        workspace_id: &str,
        revision: u64,
        to: u64,
    ) -> Result<TransactWriteItem, PortError> {
        let update = Update::builder()
            .table_name(&self.audiences)
            .set_key(Some(Self::key(workspace_id.to_owned(), DEFINITIONS)))
            .update_expression("SET revision = :to")
            .expression_attribute_values(":to", n(to));
        let update = if revision == 0 {
            update.condition_expression("attribute_not_exists(pk)")
        } else {
            update
                .condition_expression("revision = :from")
                .expression_attribute_values(":from", n(revision))
        };
        Ok(TransactWriteItem::builder()
            .update(built(update.build())?)
            .build())
    }

    /// Runs a transaction; `false` when a condition failed or another transaction
    /// held an item (both mean: read again).
    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<bool, PortError> {
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(failure)) => {
                let status = failure.raw().status().as_u16();
                match failure.into_err() {
                    TransactWriteItemsError::TransactionCanceledException(canceled) => {
                        let refusal = canceled
                            .cancellation_reasons()
                            .iter()
                            .filter_map(|reason| reason.code())
                            .find(|code| {
                                !matches!(
                                    *code,
                                    "None" | "ConditionalCheckFailed" | "TransactionConflict"
                                )
                            });
                        match refusal {
                            // Throttled: worth retrying, as any throttled call.
                            Some(code @ ("ThrottlingError" | "ProvisionedThroughputExceeded")) => {
                                Err(PortError::Unavailable(code.to_owned()))
                            }
                            Some(code) => Err(PortError::Refused(code.to_owned())),
                            None => Ok(false),
                        }
                    }
                    other => Err(crate::aws::service_error(&other, status)),
                }
            }
            Err(err) => Err(err.into()),
        }
    }

    fn state_key(workspace_id: &str, external_user_id: &str) -> Item {
        Self::key(
            format!("u#{}", workspace_key(workspace_id, external_user_id)),
            STATE,
        )
    }

    fn list_pk(workspace_id: &str, audience_id: &str) -> String {
        format!("a#{}", workspace_key(workspace_id, audience_id))
    }
}

fn built<T>(result: Result<T, aws_sdk_dynamodb::error::BuildError>) -> Result<T, PortError> {
    result.map_err(|_| PortError::Refused("request not built".into()))
}

fn negative_count() -> PortError {
    PortError::Refused("negative member count".into())
}

fn audience_from_item(item: &Item) -> Option<Audience> {
    let rule_json: serde_json::Value = serde_json::from_str(get_s(item, "rule")?).ok()?;
    Some(Audience {
        audience_id: get_s(item, SORT_KEY)?.to_owned(),
        name: get_s(item, "name")?.to_owned(),
        rule: parse_rule(&rule_json).ok()?,
        rule_json,
        rule_rev: get_n(item, "rule_rev")?,
        since_rev: get_n(item, "since_rev")?,
        building: get_n(item, "building"),
        updated_at: get_n(item, "updated_at")?,
        counted: item.get("counted").and_then(|v| v.as_bool().ok()) == Some(&true),
    })
}

/// Which of `shards` a user's items go to: stable across builds and machines (not
/// `DefaultHasher`'s random keys), FNV-1a.
fn user_shard(workspace_id: &str, external_user_id: &str, shards: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in workspace_id
        .bytes()
        .chain([b'#'])
        .chain(external_user_id.bytes())
    {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash % shards
}

fn due_shard(workspace_id: &str, external_user_id: &str) -> String {
    user_shard(workspace_id, external_user_id, u64::from(DUE_SHARDS)).to_string()
}

/// The key of one shard of an audience's member count.
fn count_key(workspace_id: &str, (audience_id, since_rev): (&str, u64), shard: u64) -> Item {
    AudienceStore::key(
        format!(
            "n#{}#{since_rev}#{shard}",
            workspace_key(workspace_id, audience_id)
        ),
        COUNT,
    )
}

fn state_item(
    workspace_id: &str,
    external_user_id: &str,
    state: &UserAudiences,
) -> Result<Item, PortError> {
    let mut item = AudienceStore::state_key(workspace_id, external_user_id);
    item.insert("rev".into(), n(state.rev));
    item.insert("user_version".into(), n(state.user_version));
    let members = state
        .members
        .iter()
        .map(|(audience_id, standing)| {
            let standing = Item::from([
                ("entered_at".to_owned(), n(standing.entered_at)),
                ("rule_rev".to_owned(), n(standing.rule_rev)),
            ]);
            (audience_id.clone(), AttributeValue::M(standing))
        })
        .collect();
    item.insert("members".into(), AttributeValue::M(members));
    if !state.pending.is_empty() {
        let pending = serde_json::to_string(&state.pending)
            .map_err(|_| PortError::Refused("pending events not encoded".into()))?;
        item.insert("pending".into(), s(pending));
    }
    if let Some(next_due) = state.next_due {
        item.insert("next_due".into(), n(next_due));
    }
    if let Some(at) = state.due_at() {
        item.insert("due_at".into(), n(at));
        item.insert(
            "due_shard".into(),
            s(due_shard(workspace_id, external_user_id)),
        );
    }
    Ok(item)
}

fn state_from_item(item: &Item) -> UserAudiences {
    let members = item
        .get("members")
        .and_then(|m| m.as_m().ok())
        .into_iter()
        .flatten()
        .filter_map(|(audience_id, standing)| {
            let standing = standing.as_m().ok()?;
            Some((
                audience_id.clone(),
                Standing {
                    entered_at: get_n(standing, "entered_at")?,
                    rule_rev: get_n(standing, "rule_rev")?,
                },
            ))
        })
        .collect::<BTreeMap<_, _>>();
    let pending: Vec<MembershipEvent> = get_s(item, "pending")
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    UserAudiences {
        rev: get_n(item, "rev").unwrap_or(0),
        user_version: get_n(item, "user_version").unwrap_or(0),
        members,
        pending,
        next_due: get_n(item, "next_due"),
    }
}

impl Audiences for AudienceStore {
    async fn list(&self, workspace_id: &str) -> Result<Definitions, PortError> {
        let mut found = Definitions::default();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.audiences)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(workspace_id))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await?;
            for item in out.items() {
                if get_s(item, SORT_KEY) == Some(DEFINITIONS) {
                    found.revision = get_n(item, "revision").unwrap_or(0);
                } else if let Some(audience) = audience_from_item(item) {
                    found.audiences.push(audience);
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(found);
            }
        }
    }

    async fn revision(&self, workspace_id: &str) -> Result<u64, PortError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.audiences)
            .set_key(Some(Self::key(workspace_id.to_owned(), DEFINITIONS)))
            .consistent_read(true)
            .send()
            .await?;
        Ok(out
            .item
            .as_ref()
            .and_then(|item| get_n(item, "revision"))
            .unwrap_or(0))
    }

    async fn get(
        &self,
        workspace_id: &str,
        audience_id: &str,
    ) -> Result<Option<Audience>, PortError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.audiences)
            .set_key(Some(Self::key(workspace_id.to_owned(), audience_id)))
            .consistent_read(true)
            .send()
            .await?;
        Ok(out.item.as_ref().and_then(audience_from_item))
    }

    async fn define(
        &self,
        workspace_id: &str,
        audience: &Audience,
        revision: u64,
    ) -> Result<bool, PortError> {
        let mut item = Self::key(workspace_id.to_owned(), &audience.audience_id);
        item.insert("name".into(), s(&audience.name));
        item.insert("rule".into(), s(audience.rule_json.to_string()));
        item.insert("rule_rev".into(), n(audience.rule_rev));
        item.insert("since_rev".into(), n(audience.since_rev));
        item.insert("updated_at".into(), n(audience.updated_at));
        if let Some(scanned) = audience.building {
            item.insert("building".into(), n(scanned));
        }
        if audience.counted {
            item.insert("counted".into(), AttributeValue::Bool(true));
        }
        let put = Put::builder()
            .table_name(&self.audiences)
            .set_item(Some(item));
        self.transact(vec![
            self.move_revision(workspace_id, revision, audience.rule_rev)?,
            TransactWriteItem::builder()
                .put(built(put.build())?)
                .build(),
        ])
        .await
    }

    async fn delete(
        &self,
        workspace_id: &str,
        audience_id: &str,
        revision: u64,
    ) -> Result<bool, PortError> {
        let delete = Delete::builder()
            .table_name(&self.audiences)
            .set_key(Some(Self::key(workspace_id.to_owned(), audience_id)));
        self.transact(vec![
            self.move_revision(workspace_id, revision, revision + 1)?,
            TransactWriteItem::builder()
                .delete(built(delete.build())?)
                .build(),
        ])
        .await
    }

    async fn record_build(
        &self,
        workspace_id: &str,
        audience_id: &str,
        rule_rev: u64,
        step: &BuildStep,
    ) -> Result<BuildRecord, PortError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.audiences)
            .set_key(Some(Self::key(workspace_id.to_owned(), audience_id)))
            .expression_attribute_values(":rev", n(rule_rev))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let update = match &step.from {
            Some(from) => update
                .condition_expression("rule_rev = :rev AND attribute_exists(building) AND build_cursor = :from")
                .expression_attribute_values(":from", s(from)),
            None => update.condition_expression(
                "rule_rev = :rev AND attribute_exists(building) AND attribute_not_exists(build_cursor)",
            ),
        };
        let update = match &step.to {
            Some(to) => update
                .update_expression("SET building = building + :n, build_cursor = :to")
                .expression_attribute_values(":n", n(step.scanned))
                .expression_attribute_values(":to", s(to)),
            None => update.update_expression("REMOVE building, build_cursor"),
        };
        match condition(update.send().await)? {
            Condition::Held => Ok(BuildRecord::Recorded),
            Condition::Failed(item) => {
                let item = item.filter(|item| get_n::<u64>(item, "rule_rev") == Some(rule_rev));
                Ok(match item {
                    None => BuildRecord::Replaced,
                    Some(item) if !item.contains_key("building") => BuildRecord::AlreadyAt(None),
                    Some(item) => {
                        BuildRecord::AlreadyAt(get_s(&item, "build_cursor").map(str::to_owned))
                    }
                })
            }
        }
    }
}

impl Memberships for AudienceStore {
    const DUE_SHARDS: u32 = DUE_SHARDS;

    async fn standing(
        &self,
        workspace_id: &str,
        external_user_id: &str,
    ) -> Result<UserAudiences, PortError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.members)
            .set_key(Some(Self::state_key(workspace_id, external_user_id)))
            .consistent_read(true)
            .send()
            .await?;
        Ok(out.item.as_ref().map(state_from_item).unwrap_or_default())
    }

    async fn commit(
        &self,
        workspace_id: &str,
        external_user_id: &str,
        next: &UserAudiences,
    ) -> Result<bool, PortError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.members)
            .set_item(Some(state_item(workspace_id, external_user_id, next)?));
        let put = if next.rev <= 1 {
            put.condition_expression("attribute_not_exists(pk)")
        } else {
            put.condition_expression("rev = :rev AND user_version <= :v")
                .expression_attribute_values(":rev", n(next.rev - 1))
                .expression_attribute_values(":v", n(next.user_version))
        };
        Ok(matches!(condition(put.send().await)?, Condition::Held))
    }

    async fn write_entries(
        &self,
        workspace_id: &str,
        external_user_id: &str,
        rev: u64,
        decisions: &[MembershipEvent],
    ) -> Result<(), PortError> {
        let expires_at = crate::clock::now_millis() / 1000 + GONE_KEPT_SECS;
        for chunk in decisions.chunks(LIST_LANES) {
            let writes = chunk.iter().map(|decision| {
                self.write_entry(workspace_id, external_user_id, rev, decision, expires_at)
            });
            for written in join_all(writes).await {
                written?;
            }
        }
        Ok(())
    }

    async fn clear_pending(
        &self,
        workspace_id: &str,
        external_user_id: &str,
        rev: u64,
        next_due: Option<i64>,
    ) -> Result<(), PortError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.members)
            .set_key(Some(Self::state_key(workspace_id, external_user_id)))
            .condition_expression("rev = :rev")
            .expression_attribute_values(":rev", n(rev));
        let update = match next_due {
            Some(at) => update
                .update_expression("REMOVE pending SET due_at = :at, due_shard = :shard")
                .expression_attribute_values(":at", n(at))
                .expression_attribute_values(
                    ":shard",
                    s(due_shard(workspace_id, external_user_id)),
                ),
            None => update.update_expression("REMOVE pending, due_at, due_shard"),
        };
        // A newer commit since: it carries its own pending events and due instant.
        condition(update.send().await)?;
        Ok(())
    }

    async fn members(
        &self,
        workspace_id: &str,
        audience: (&str, u64),
        limit: usize,
        after: Option<&str>,
    ) -> Result<(Vec<(String, i64)>, bool), PortError> {
        // One more than asked: whether another page follows.
        let (entries, _) = self
            .list_entries(
                workspace_id,
                (audience.0, Some(audience.1)),
                after,
                limit + 1,
            )
            .await?;
        let mut members: Vec<(String, i64)> = entries
            .iter()
            .filter_map(|item| {
                Some((
                    get_s(item, SORT_KEY)?.to_owned(),
                    get_n(item, "entered_at")?,
                ))
            })
            .collect();
        let more = members.len() > limit;
        members.truncate(limit);
        Ok((members, more))
    }

    async fn count(&self, workspace_id: &str, audience: (&str, u64)) -> Result<u64, PortError> {
        let keys = (0..COUNT_SHARDS).map(|shard| count_key(workspace_id, audience, shard));
        let mut wanted = KeysAndAttributes::builder()
            .set_keys(Some(keys.collect()))
            .consistent_read(true);
        let mut count: i64 = 0;
        // BatchGetItem may leave keys unprocessed (throttled): asked again until none.
        for _ in 0..COUNT_SHARDS {
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.members, built(wanted.build())?)
                .send()
                .await?;
            let items = out
                .responses
                .into_iter()
                .flatten()
                .flat_map(|(_, items)| items);
            count += items
                .map(|item| get_n::<i64>(&item, "n").unwrap_or(0))
                .sum::<i64>();
            match out
                .unprocessed_keys
                .and_then(|mut left| left.remove(&self.members))
            {
                Some(left) => {
                    wanted = KeysAndAttributes::builder()
                        .set_keys(Some(left.keys))
                        .consistent_read(true)
                }
                None => return u64::try_from(count).map_err(|_| negative_count()),
            }
        }
        Err(PortError::Unavailable("count shards unprocessed".into()))
    }

    async fn count_listed(
        &self,
        workspace_id: &str,
        (audience_id, since_rev): (&str, u64),
    ) -> Result<u64, PortError> {
        let mut count = 0;
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.members)
                .key_condition_expression("pk = :pk")
                .filter_expression(MEMBER)
                .expression_attribute_values(":pk", s(Self::list_pk(workspace_id, audience_id)))
                .expression_attribute_values(":since", n(since_rev))
                .select(Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await?;
            count += out.count.max(0) as u64;
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(count);
            }
        }
    }

    async fn due(
        &self,
        shard: u32,
        until_ms: i64,
        after: Option<&(UserKey, i64)>,
        limit: usize,
    ) -> Result<(Vec<(UserKey, i64)>, bool), PortError> {
        let start = after.map(|((workspace_id, user_id), at)| {
            let mut key = Self::state_key(workspace_id, user_id);
            key.insert("due_shard".into(), s(shard.to_string()));
            key.insert("due_at".into(), n(*at));
            key
        });
        let out = self
            .client
            .query()
            .table_name(&self.members)
            .index_name(DUE_INDEX)
            .key_condition_expression("due_shard = :shard AND due_at <= :until")
            .expression_attribute_values(":shard", s(shard.to_string()))
            .expression_attribute_values(":until", n(until_ms))
            .set_exclusive_start_key(start)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await?;
        let due = out
            .items()
            .iter()
            .filter_map(|item| {
                let (workspace_id, user_id) = get_s(item, PARTITION_KEY)?
                    .strip_prefix("u#")?
                    .split_once('#')?;
                let at = get_n(item, "due_at")?;
                Some(((workspace_id.to_owned(), user_id.to_owned()), at))
            })
            .collect();
        Ok((due, out.last_evaluated_key.is_some()))
    }

    async fn drop_members(
        &self,
        workspace_id: &str,
        audience_id: &str,
        rule_rev: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<String>, PortError> {
        let (entries, more) = self
            .list_entries(workspace_id, (audience_id, None), after, limit)
            .await?;
        let users: Vec<&str> = entries
            .iter()
            .filter_map(|item| get_s(item, SORT_KEY))
            .collect();
        for chunk in users.chunks(LIST_LANES) {
            let drops = chunk.iter().map(|user_id| async move {
                // The user's standing first: a standing without a list entry is
                // harmless (reads check the audience), the other way round is not.
                let standing = self
                    .client
                    .update_item()
                    .table_name(&self.members)
                    .set_key(Some(Self::state_key(workspace_id, user_id)))
                    .condition_expression("members.#a.rule_rev <= :rev")
                    .update_expression("REMOVE members.#a SET rev = rev + :one")
                    .expression_attribute_names("#a", audience_id)
                    .expression_attribute_values(":rev", n(rule_rev))
                    .expression_attribute_values(":one", n(1))
                    .send()
                    .await;
                condition(standing)?;
                let entry = self
                    .client
                    .delete_item()
                    .table_name(&self.members)
                    .set_key(Some(Self::key(
                        Self::list_pk(workspace_id, audience_id),
                        user_id,
                    )))
                    .condition_expression("rule_rev <= :rev")
                    .expression_attribute_values(":rev", n(rule_rev))
                    .send()
                    .await;
                condition(entry).map(|_| ())
            });
            for dropped in join_all(drops).await {
                dropped?;
            }
        }
        Ok(more
            .then(|| users.last().map(|id| (*id).to_owned()))
            .flatten())
    }
}

impl AudienceStore {
    /// One decision's member-list entry, written only over an entry an older commit
    /// wrote. An entry that changes sides moves the member count in the same
    /// transaction; one already on the decision's side (a later decision carried out
    /// first) is written alone.
    async fn write_entry(
        &self,
        workspace_id: &str,
        external_user_id: &str,
        rev: u64,
        decision: &MembershipEvent,
        expires_at: i64,
    ) -> Result<(), PortError> {
        let mut entry = Self::key(
            Self::list_pk(workspace_id, &decision.audience_id),
            external_user_id,
        );
        entry.insert("rev".into(), n(rev));
        entry.insert("rule_rev".into(), n(decision.rule_rev));
        let (flips, stays) = if decision.entered {
            entry.insert("entered_at".into(), n(decision.at));
            (WAS_NOT_MEMBER, WAS_MEMBER)
        } else {
            entry.insert("gone".into(), AttributeValue::Bool(true));
            entry.insert(TTL_ATTRIBUTE.into(), n(expires_at));
            (WAS_MEMBER, WAS_NOT_MEMBER)
        };
        let values = Item::from([
            (":rev".to_owned(), n(rev)),
            (":since".to_owned(), n(decision.since_rev)),
        ]);
        let audience = (decision.audience_id.as_str(), decision.since_rev);
        let shard = user_shard(workspace_id, external_user_id, COUNT_SHARDS);
        let count = Update::builder()
            .table_name(&self.members)
            .set_key(Some(count_key(workspace_id, audience, shard)))
            .update_expression("ADD n :delta")
            .expression_attribute_values(":delta", n(if decision.entered { 1 } else { -1 }));
        for _ in 0..ENTRY_ATTEMPTS {
            let flip = Put::builder()
                .table_name(&self.members)
                .set_item(Some(entry.clone()))
                .condition_expression(flips)
                .set_expression_attribute_values(Some(values.clone()));
            let flipped = self
                .transact(vec![
                    TransactWriteItem::builder()
                        .put(built(flip.build())?)
                        .build(),
                    TransactWriteItem::builder()
                        .update(built(count.clone().build())?)
                        .build(),
                ])
                .await?;
            if flipped {
                return Ok(());
            }
            let stay = self
                .client
                .put_item()
                .table_name(&self.members)
                .set_item(Some(entry.clone()))
                .condition_expression(stays)
                .set_expression_attribute_values(Some(values.clone()))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            match condition(stay)? {
                Condition::Held => return Ok(()),
                // A newer commit wrote the entry: it stays as it is.
                Condition::Failed(Some(found)) if get_n::<u64>(&found, "rev") >= Some(rev) => {
                    return Ok(())
                }
                // It changed sides between the two writes: again.
                Condition::Failed(_) => {}
            }
        }
        Err(PortError::Unavailable("contended member entry".into()))
    }

    /// Up to `limit` entries of an audience's list after `after`, and whether more
    /// follow: members only (of the audience that started at `since_rev`) when
    /// `since_rev` is given, else every entry (`gone` ones and older audiences' too).
    async fn list_entries(
        &self,
        workspace_id: &str,
        (audience_id, since_rev): (&str, Option<u64>),
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Item>, bool), PortError> {
        let pk = Self::list_pk(workspace_id, audience_id);
        let mut entries = Vec::new();
        let mut start = after.map(|after| Self::key(pk.clone(), after));
        loop {
            let query = self
                .client
                .query()
                .table_name(&self.members)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(&pk))
                .set_exclusive_start_key(start)
                .limit((limit - entries.len()) as i32);
            let query = match since_rev {
                Some(since) => query
                    .filter_expression(MEMBER)
                    .expression_attribute_values(":since", n(since)),
                None => query,
            };
            let out = query.send().await?;
            entries.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key;
            if start.is_none() || entries.len() == limit {
                return Ok((entries, start.is_some()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audience::Reason;
    use crate::domain::membership::PENDING_GRACE_MS;

    #[test]
    fn a_state_item_reads_back_as_written_and_is_due_while_events_are_pending() {
        let mut state = UserAudiences {
            rev: 3,
            user_version: 11,
            members: BTreeMap::from([(
                "trials".to_owned(),
                Standing {
                    entered_at: 5,
                    rule_rev: 2,
                },
            )]),
            pending: vec![MembershipEvent {
                entered: true,
                workspace_id: "ws".into(),
                audience_id: "trials".into(),
                external_user_id: "u#1".into(),
                user_version: 7,
                rule_rev: 2,
                at: 5,
                reason: Reason::Change,
                since_rev: 1,
                commit: 3,
            }],
            next_due: Some(99),
        };
        let item = state_item("ws", "u#1", &state).unwrap();
        assert_eq!(state_from_item(&item), state);
        assert_eq!(get_n::<i64>(&item, "due_at"), Some(5 + PENDING_GRACE_MS));
        assert_eq!(get_s(&item, PARTITION_KEY), Some("u#ws#u#1"));
        state.pending.clear();
        let item = state_item("ws", "u#1", &state).unwrap();
        assert_eq!(get_n::<i64>(&item, "due_at"), Some(99));
        state.next_due = None;
        let item = state_item("ws", "u#1", &state).unwrap();
        assert!(!item.contains_key("due_at") && !item.contains_key("due_shard"));
        // Shards are stable and spread.
        let shards: std::collections::BTreeSet<String> = (0..2_000)
            .map(|i| due_shard("ws", &format!("u{i}")))
            .collect();
        assert_eq!(shards.len(), DUE_SHARDS as usize);
        assert!(shards
            .iter()
            .all(|s| s.parse::<u32>().is_ok_and(|s| s < DUE_SHARDS)));
        assert_eq!(due_shard("ws", "u1"), due_shard("ws", "u1"));
    }
}
