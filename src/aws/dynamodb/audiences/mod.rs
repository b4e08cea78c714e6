//! The audiences and audience-members tables (`docs/audiences.md`, "Tables").
//!
//! Audiences: `pk` = workspace, `sk` = audience id, and one item `sk` = `#definitions`
//! holding the workspace's definitions revision, which every define and delete moves
//! on in the same transaction, with the copies that evaluation reads (`copies.rs`). Members: `pk` = `u#<workspace>#<user>`, `sk` = `state`
//! (the user's standings, pending decisions, next due instant, optimistic `rev`), and
//! `pk` = `a#<workspace>#<audience>#<shard>`, `sk` = user (the member list, in 16 shards
//! by user so that no one key takes every change of a large audience, each in id order;
//! an audience that started before lists were sharded keeps one list, `a#<workspace>#
//! <audience>`, until defined anew. Each entry carries the `rev` of the state commit
//! that wrote it, and a removal leaves a `gone` entry for a day, so that a decision
//! carried out late never undoes a newer one), and `pk` =
//! `n#<workspace>#<audience>#<since_rev>#<shard>`, `sk` = `count` (the member count, in
//! the same 16 shards: each moves in the same transaction as the entry that changes
//! sides).

mod copies;
mod items;
mod lists;
mod memberships;

use items::{audience_from_item, count_key, due_shard, flag, state_from_item, state_item};

use super::{
    batch_get_consistent, built, condition, get_n, get_s, n, s, transact, user_shard,
    workspace_key, Condition, Item, MAX_BATCH_GET, PARTITION_KEY, TTL_ATTRIBUTE,
};
use crate::app::ports::{
    Audience, Audiences, BuildRecord, BuildStep, Definitions, Memberships, PortError, Standing,
    UserAudiences, UserKey,
};
use crate::contract::parse_rule;
use crate::domain::audience::MembershipEvent;
use crate::domain::membership::GONE_KEPT_SECS;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, Put, ReturnValuesOnConditionCheckFailure, Select, TransactWriteItem,
    Update,
};
use aws_sdk_dynamodb::Client;
use futures::future::join_all;
use std::collections::{BTreeMap, HashMap};

const SORT_KEY: &str = "sk";
/// The definitions revision's item in a workspace's partition (audience ids never
/// start with `#`).
const DEFINITIONS: &str = "#definitions";
const STATE: &str = "state";
/// A build's progress (`rule_rev`, `building`: users looked at, absent once done,
/// `build_cursor`) is an item of its own, `pk` = `b#<workspace>#<audience>`, so that
/// pages never write (nor read) the workspace's definitions key, which every define
/// and every rules read of the workspace takes (`docs/scale.md`). A build started
/// before kept its progress on the definition, and ends there (`record_build`).
const PROGRESS: &str = "build";
/// A list entry that is a member now, of the audience that started at `:since`.
const MEMBER: &str = "attribute_not_exists(gone) AND rule_rev >= :since";
/// An entry an older commit (`rev < :rev`) wrote: a member of the audience…
const WAS_MEMBER: &str = "rev < :rev AND attribute_not_exists(gone) AND rule_rev >= :since";
/// …or not one (no entry, a `gone` one, or one of a deleted audience of the same id).
const WAS_NOT_MEMBER: &str =
    "attribute_not_exists(pk) OR (rev < :rev AND (attribute_exists(gone) OR rule_rev < :since))";
/// Member lists and their counts spread over this many keys per audience, by user
/// ([`user_shard`]): 16 × 1,000 write units a second (`docs/scale.md`).
const LIST_SHARDS: u64 = 16;
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
/// Entries a merged page reads ahead per shard, beyond its share of the page.
const MERGE_SLACK: usize = 8;
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

    fn progress_pk(workspace_id: &str, audience_id: &str) -> String {
        format!("b#{}", workspace_key(workspace_id, audience_id))
    }

    fn progress_key(workspace_id: &str, audience_id: &str) -> Item {
        Self::key(Self::progress_pk(workspace_id, audience_id), PROGRESS)
    }

    /// Shows each building audience's progress as its build's item holds it (the
    /// definition holds only that it is building, or a build started before progress
    /// had items of its own).
    async fn with_progress(
        &self,
        workspace_id: &str,
        audiences: &mut [Audience],
    ) -> Result<(), PortError> {
        let building: HashMap<String, usize> = audiences
            .iter()
            .enumerate()
            .filter(|(_, a)| a.building.is_some())
            .map(|(i, a)| (Self::progress_pk(workspace_id, &a.audience_id), i))
            .collect();
        let keys: Vec<Item> = building
            .keys()
            .map(|pk| Self::key(pk.clone(), PROGRESS))
            .collect();
        for keys in keys.chunks(MAX_BATCH_GET) {
            let found = batch_get_consistent(&self.client, &self.audiences, keys.to_vec()).await?;
            for item in found {
                let Some(audience) = get_s(&item, PARTITION_KEY)
                    .and_then(|pk| building.get(pk))
                    .map(|&i| &mut audiences[i])
                    .filter(|a| get_n(&item, "rule_rev") == Some(a.rule_rev))
                else {
                    continue;
                };
                audience.building = get_n(&item, "building");
            }
        }
        Ok(())
    }

    /// Records a build step on the item at `key` (the build's progress, or the
    /// definition of a build started before); `None` when there is no item.
    async fn record_step(
        &self,
        key: Item,
        rule_rev: u64,
        step: &BuildStep,
    ) -> Result<Option<BuildRecord>, PortError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.audiences)
            .set_key(Some(key))
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
        Ok(match condition(update.send().await)? {
            Condition::Held => Some(BuildRecord::Recorded),
            Condition::Failed(None) => None,
            Condition::Failed(Some(item)) if get_n::<u64>(&item, "rule_rev") != Some(rule_rev) => {
                Some(BuildRecord::Replaced)
            }
            Condition::Failed(Some(item)) if !item.contains_key("building") => {
                Some(BuildRecord::AlreadyAt(None))
            }
            Condition::Failed(Some(item)) => Some(BuildRecord::AlreadyAt(
                get_s(&item, "build_cursor").map(str::to_owned),
            )),
        })
    }

    /// Marks the definition of `rule_rev` ready once its build is done (again after a
    /// retry: nothing if it is ready or replaced).
    async fn mark_ready(
        &self,
        workspace_id: &str,
        audience_id: &str,
        rule_rev: u64,
    ) -> Result<(), PortError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.audiences)
            .set_key(Some(Self::key(workspace_id.to_owned(), audience_id)))
            .update_expression("REMOVE building, build_cursor")
            .condition_expression("rule_rev = :rev AND attribute_exists(building)")
            .expression_attribute_values(":rev", n(rule_rev));
        condition(update.send().await)?;
        Ok(())
    }

    fn state_key(workspace_id: &str, external_user_id: &str) -> Item {
        Self::key(
            format!("u#{}", workspace_key(workspace_id, external_user_id)),
            STATE,
        )
    }

    /// The key of an audience's member list, or of one of its shards.
    fn list_pk(workspace_id: &str, audience_id: &str, shard: Option<u64>) -> String {
        let list = workspace_key(workspace_id, audience_id);
        match shard {
            Some(shard) => format!("a#{list}#{shard}"),
            None => format!("a#{list}"),
        }
    }
}

fn negative_count() -> PortError {
    PortError::Refused("negative member count".into())
}

impl Audiences for AudienceStore {
    async fn list(&self, workspace_id: &str) -> Result<Definitions, PortError> {
        self.originals(workspace_id).await
    }

    async fn rules(&self, workspace_id: &str) -> Result<Definitions, PortError> {
        self.copied_rules(workspace_id).await
    }

    async fn revision(&self, workspace_id: &str) -> Result<u64, PortError> {
        self.current_revision(workspace_id).await
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
        let mut audience = out.item.as_ref().and_then(audience_from_item);
        if let Some(audience) = audience.as_mut() {
            self.with_progress(workspace_id, std::slice::from_mut(audience))
                .await?;
        }
        Ok(audience)
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
        for (flag, set) in [("counted", audience.counted), ("sharded", audience.sharded)] {
            if set {
                item.insert(flag.into(), AttributeValue::Bool(true));
            }
        }
        let mut items = self.move_revision(workspace_id, revision, audience.rule_rev)?;
        items.extend(self.copy_definition(workspace_id, &item)?);
        let put = Put::builder()
            .table_name(&self.audiences)
            .set_item(Some(item));
        items.push(
            TransactWriteItem::builder()
                .put(built(put.build())?)
                .build(),
        );
        if let Some(scanned) = audience.building {
            let mut progress = Self::progress_key(workspace_id, &audience.audience_id);
            progress.insert("rule_rev".into(), n(audience.rule_rev));
            progress.insert("building".into(), n(scanned));
            let put = Put::builder()
                .table_name(&self.audiences)
                .set_item(Some(progress));
            items.push(
                TransactWriteItem::builder()
                    .put(built(put.build())?)
                    .build(),
            );
        }
        transact(&self.client, items).await
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
        let progress = Delete::builder()
            .table_name(&self.audiences)
            .set_key(Some(Self::progress_key(workspace_id, audience_id)));
        let mut items = self.move_revision(workspace_id, revision, revision + 1)?;
        items.extend(self.drop_copies(workspace_id, audience_id)?);
        for delete in [delete, progress] {
            items.push(
                TransactWriteItem::builder()
                    .delete(built(delete.build())?)
                    .build(),
            );
        }
        transact(&self.client, items).await
    }

    async fn record_build(
        &self,
        workspace_id: &str,
        audience_id: &str,
        rule_rev: u64,
        step: &BuildStep,
    ) -> Result<BuildRecord, PortError> {
        let progress = Self::progress_key(workspace_id, audience_id);
        let Some(record) = self.record_step(progress, rule_rev, step).await? else {
            // No progress item: a build started before they were kept (or a deleted
            // audience) records on the definition, as it did.
            let definition = Self::key(workspace_id.to_owned(), audience_id);
            let record = self.record_step(definition, rule_rev, step).await?;
            return Ok(record.unwrap_or(BuildRecord::Replaced));
        };
        let done = matches!(
            (&record, &step.to),
            (BuildRecord::Recorded, None) | (BuildRecord::AlreadyAt(None), _)
        );
        if done {
            self.mark_ready(workspace_id, audience_id, rule_rev).await?;
        }
        Ok(record)
    }
}
