//! Reading an audience's member list: one list, or 16 shards read one after another
//! (drops) or merged in id order (pages of members).

use super::*;
use std::collections::VecDeque;

impl AudienceStore {
    /// A user's entry in an audience's member list (`(audience, sharded)`).
    pub(super) fn entry_key(
        workspace_id: &str,
        (audience_id, sharded): (&str, bool),
        user: &str,
    ) -> Item {
        let shard = sharded.then(|| user_shard(workspace_id, user, LIST_SHARDS));
        Self::key(Self::list_pk(workspace_id, audience_id, shard), user)
    }

    /// Up to `limit` entries of an audience's list (`(audience, sharded)`) after the
    /// entry of `after`, shard after shard, and whether more may follow: members only
    /// (of the audience that started at `since_rev`) when `since_rev` is given, else
    /// every entry (`gone` ones and older audiences' too). A user's entry is always in
    /// the same shard, so `after` alone says where to go on from.
    pub(super) async fn list_entries(
        &self,
        workspace_id: &str,
        (audience_id, sharded): (&str, bool),
        since_rev: Option<u64>,
        mut after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Item>, bool), PortError> {
        let shards: Vec<Option<u64>> = if sharded {
            let first = after.map_or(0, |user| user_shard(workspace_id, user, LIST_SHARDS));
            (first..LIST_SHARDS).map(Some).collect()
        } else {
            vec![None]
        };
        let mut entries = Vec::new();
        for (walked, shard) in shards.iter().enumerate() {
            let mut from = ListRead::after(
                Self::list_pk(workspace_id, audience_id, *shard),
                after.take(),
            );
            while let Some(read) = from {
                let (items, next) = self
                    .read_list(read, since_rev, limit - entries.len())
                    .await?;
                entries.extend(items);
                from = next;
                if entries.len() == limit {
                    let last_shard = walked + 1 == shards.len();
                    return Ok((entries, from.is_some() || !last_shard));
                }
            }
        }
        Ok((entries, false))
    }

    /// Up to `limit` members of a sharded list after the member `after`, in id order
    /// across its shards: a merge that reads each shard a chunk at a time, so a page
    /// reads its own entries and at most a chunk more per shard.
    pub(super) async fn merged_members(
        &self,
        workspace_id: &str,
        (audience_id, since_rev): (&str, u64),
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Item>, PortError> {
        let chunk = limit.div_ceil(LIST_SHARDS as usize) + MERGE_SLACK;
        let mut shards: Vec<(VecDeque<Item>, Option<ListRead>)> = (0..LIST_SHARDS)
            .map(|shard| {
                let pk = Self::list_pk(workspace_id, audience_id, Some(shard));
                (VecDeque::new(), ListRead::after(pk, after))
            })
            .collect();
        let mut members = Vec::with_capacity(limit);
        while members.len() < limit {
            // A shard with nothing buffered may hold the next id: read it first.
            let dry = shards
                .iter_mut()
                .filter(|(buffered, from)| buffered.is_empty() && from.is_some());
            let reads = dry.map(|(buffered, from)| async move {
                let read = from
                    .take()
                    .map(|read| self.read_list(read, Some(since_rev), chunk));
                if let Some(read) = read {
                    let (items, next) = read.await?;
                    buffered.extend(items);
                    *from = next;
                }
                Ok::<_, PortError>(())
            });
            for read in join_all(reads).await {
                read?;
            }
            let next = shards
                .iter()
                .enumerate()
                .filter_map(|(shard, (buffered, _))| {
                    Some((
                        get_s(buffered.front()?, SORT_KEY).unwrap_or_default(),
                        shard,
                    ))
                })
                .min();
            match next {
                Some((_, shard)) => members.extend(shards[shard].0.pop_front()),
                None if shards.iter().all(|(_, from)| from.is_none()) => break,
                // Every read of this round was all `gone` entries: read on.
                None => {}
            }
        }
        Ok(members)
    }

    /// One query of one member-list key, and where the next starts (`None`: the key is
    /// read to its end): up to `limit` entries evaluated, members only (of the audience
    /// that started at `since_rev`) when `since_rev` is given.
    async fn read_list(
        &self,
        read: ListRead,
        since_rev: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<Item>, Option<ListRead>), PortError> {
        let query = self
            .client
            .query()
            .table_name(&self.members)
            .expression_attribute_values(":pk", s(&read.pk))
            .limit(i32::try_from(limit).unwrap_or(i32::MAX));
        let query = match read.from {
            ListFrom::Start => query.key_condition_expression("pk = :pk"),
            // A user id that need not be in this key (a page's last, of another shard).
            ListFrom::After(user) => query
                .key_condition_expression("pk = :pk AND sk > :after")
                .expression_attribute_values(":after", s(user)),
            ListFrom::Resume(key) => query
                .key_condition_expression("pk = :pk")
                .set_exclusive_start_key(Some(key)),
        };
        let query = match since_rev {
            Some(since) => query
                .filter_expression(MEMBER)
                .expression_attribute_values(":since", n(since)),
            None => query,
        };
        let out = query.send().await?;
        let next = out.last_evaluated_key.map(|key| ListRead {
            pk: read.pk,
            from: ListFrom::Resume(key),
        });
        Ok((out.items.unwrap_or_default(), next))
    }
}

/// Where the next query of one member-list key starts.
struct ListRead {
    pk: String,
    from: ListFrom,
}

enum ListFrom {
    Start,
    After(String),
    Resume(Item),
}

impl ListRead {
    fn after(pk: String, after: Option<&str>) -> Option<Self> {
        let from = after.map_or(ListFrom::Start, |user| ListFrom::After(user.to_owned()));
        Some(Self { pk, from })
    }
}
