//! Memberships: each user's state item (written whole and conditionally), the member
//! lists and their count shards (written from the state's pending decisions), and the
//! due index a tick pages.

use super::*;

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
        audience: &Audience,
        limit: usize,
        after: Option<&str>,
    ) -> Result<(Vec<(String, i64)>, bool), PortError> {
        let started = (audience.audience_id.as_str(), audience.since_rev);
        // One more than asked: whether another page follows.
        let entries = if audience.sharded {
            self.merged_members(workspace_id, started, after, limit + 1)
                .await?
        } else {
            let list = (started.0, false);
            let (entries, _) = self
                .list_entries(workspace_id, list, Some(started.1), after, limit + 1)
                .await?;
            entries
        };
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
        let keys = (0..LIST_SHARDS).map(|shard| count_key(workspace_id, audience, shard));
        let shards = batch_get_consistent(&self.client, &self.members, keys.collect()).await?;
        let count: i64 = shards
            .iter()
            .map(|item| get_n::<i64>(item, "n").unwrap_or(0))
            .sum();
        u64::try_from(count).map_err(|_| negative_count())
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
                // Audiences that started before counts were kept: one list each.
                .expression_attribute_values(
                    ":pk",
                    s(Self::list_pk(workspace_id, audience_id, None)),
                )
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
        sharded: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<String>, PortError> {
        let list = (audience_id, sharded);
        let (entries, more) = self
            .list_entries(workspace_id, list, None, after, limit)
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
                    .set_key(Some(Self::entry_key(workspace_id, list, user_id)))
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
        let list = (decision.audience_id.as_str(), decision.sharded);
        let mut entry = Self::entry_key(workspace_id, list, external_user_id);
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
        let shard = user_shard(workspace_id, external_user_id, LIST_SHARDS);
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
            let flipped = transact(
                &self.client,
                vec![
                    TransactWriteItem::builder()
                        .put(built(flip.build())?)
                        .build(),
                    TransactWriteItem::builder()
                        .update(built(count.clone().build())?)
                        .build(),
                ],
            )
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
}
