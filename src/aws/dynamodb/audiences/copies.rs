//! A workspace's definitions, copied where a fleet can read them. Every stream batch
//! reads the revision of each workspace it names, and every instance that meets a
//! workspace with an empty cache reads its rules: on the workspace's one partition key, a
//! fleet's cold start (64 time tasks at once) would take seconds of its 3,000 read units
//! a second. So the revision item and every definition have `COPIES` copies, copy `k` a
//! partition of its own (`pk` = `<workspace>#<k>`): `sk` = `#definitions` holds the
//! revision (and `whole` once the copy holds every definition), `sk` = an audience id
//! that definition as evaluation takes it (no build progress, which only the original
//! carries). A define or delete moves all of them in its transaction; reads take the
//! next copy in turn, never the workspace's own key (`docs/scale.md`, item 10).
//!
//! Workspaces from before (no copies, or fewer, or copies of the revision alone) are
//! filled by their reads, so that answers are the same before, during and after: a
//! revision read that finds its copy missing reads the revision item and writes the copy
//! from it (only where none is); a rules read that finds its copy not `whole` reads the
//! originals, answers from them, and writes them into the copy in transactions
//! conditioned on the copy's revision being the one read, so that a define or delete in
//! between (which moves it) voids the fill. Every write to a copy is thus a define's or
//! delete's own or a fill's at the revision it read: a copy never holds what its
//! revision does not, and is `whole` once a fill wrote everything or from the first
//! define (nothing before it).

use super::*;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::LazyLock;

/// Copies of a workspace's definitions (and revision) that reads take: 32 × 3,000 read
/// units a second (a whole fleet cold at once with the bounds' 3.2 MB of definitions:
/// `docs/scale.md`). Workspaces from when there were fewer have the others made by
/// their first reads.
const COPIES: u32 = 32;

/// Definitions a fill writes per transaction, beside the copy's revision (at most 100
/// items and 4 MB a transaction: 99 definitions of at most 32 KiB).
const FILL_CHUNK: usize = 99;

/// The copy the next read takes, shared by the instance's reads. Each instance starts at
/// a copy of its own (at random): a fleet started at once would otherwise read its first
/// revision from copy 1 and its first rules from copy 2, all of it.
static NEXT_COPY: LazyLock<AtomicU32> = LazyLock::new(|| {
    // Truncation intended: any 32 bits of a random hash.
    AtomicU32::new(RandomState::new().hash_one("copy") as u32)
});

/// What a query of one definitions partition found.
struct Partition {
    /// The revision its `#definitions` item holds (`None`: no such item).
    revision: Option<u64>,
    whole: bool,
    definitions: Vec<Item>,
}

impl AudienceStore {
    fn copy_pk(workspace_id: &str, copy: u32) -> String {
        format!("{workspace_id}#{copy}")
    }

    fn next_copy() -> u32 {
        1 + NEXT_COPY.fetch_add(1, Ordering::Relaxed) % COPIES
    }

    /// Copy `copy` of a workspace's definitions revision (0: the revision item).
    fn revision_key(workspace_id: &str, copy: u32) -> Item {
        match copy {
            0 => Self::key(workspace_id.to_owned(), DEFINITIONS),
            k => Self::key(Self::copy_pk(workspace_id, k), DEFINITIONS),
        }
    }

    /// The definitions revision moved from `revision` to `to`, with its copies, as
    /// transaction items. A copy whole before stays whole (the same transaction writes
    /// the definition into it); the first define makes every copy whole.
    pub(super) fn move_revision(
        &self,
        workspace_id: &str,
        revision: u64,
        to: u64,
    ) -> Result<Vec<TransactWriteItem>, PortError> {
        let update = Update::builder()
            .table_name(&self.audiences)
            .set_key(Some(Self::revision_key(workspace_id, 0)))
            .update_expression("SET revision = :to")
            .expression_attribute_values(":to", n(to));
        let update = if revision == 0 {
            update.condition_expression("attribute_not_exists(pk)")
        } else {
            update
                .condition_expression("revision = :from")
                .expression_attribute_values(":from", n(revision))
        };
        let mut items = vec![TransactWriteItem::builder()
            .update(built(update.build())?)
            .build()];
        for copy in 1..=COPIES {
            let update = Update::builder()
                .table_name(&self.audiences)
                .set_key(Some(Self::revision_key(workspace_id, copy)))
                .expression_attribute_values(":to", n(to));
            let update = if revision == 0 {
                update
                    .update_expression("SET revision = :to, whole = :whole")
                    .expression_attribute_values(":whole", AttributeValue::Bool(true))
            } else {
                update.update_expression("SET revision = :to")
            };
            items.push(
                TransactWriteItem::builder()
                    .update(built(update.build())?)
                    .build(),
            );
        }
        Ok(items)
    }

    /// A definition (as its original item) put into every copy, as transaction items.
    pub(super) fn copy_definition(
        &self,
        workspace_id: &str,
        definition: &Item,
    ) -> Result<Vec<TransactWriteItem>, PortError> {
        (1..=COPIES)
            .map(|copy| self.copy_put(workspace_id, copy, definition))
            .collect()
    }

    /// A definition's copy (no build progress) put into copy `copy`.
    fn copy_put(
        &self,
        workspace_id: &str,
        copy: u32,
        definition: &Item,
    ) -> Result<TransactWriteItem, PortError> {
        let mut item = definition.clone();
        item.insert(PARTITION_KEY.into(), s(Self::copy_pk(workspace_id, copy)));
        item.remove("building");
        item.remove("build_cursor");
        let put = Put::builder()
            .table_name(&self.audiences)
            .set_item(Some(item))
            .build();
        Ok(TransactWriteItem::builder().put(built(put)?).build())
    }

    /// A definition removed from every copy, as transaction items.
    pub(super) fn drop_copies(
        &self,
        workspace_id: &str,
        audience_id: &str,
    ) -> Result<Vec<TransactWriteItem>, PortError> {
        (1..=COPIES)
            .map(|copy| {
                let key = Self::key(Self::copy_pk(workspace_id, copy), audience_id);
                let delete = Delete::builder()
                    .table_name(&self.audiences)
                    .set_key(Some(key))
                    .build();
                Ok(TransactWriteItem::builder().delete(built(delete)?).build())
            })
            .collect()
    }

    /// The workspace's definitions revision (strongly consistent), from the next copy.
    pub(super) async fn current_revision(&self, workspace_id: &str) -> Result<u64, PortError> {
        let copy = Self::next_copy();
        if let Some(revision) = self.read_revision(workspace_id, copy).await? {
            return Ok(revision);
        }
        let revision = self.read_revision(workspace_id, 0).await?.unwrap_or(0);
        self.copy_revision(workspace_id, revision).await?;
        Ok(revision)
    }

    async fn read_revision(&self, workspace_id: &str, copy: u32) -> Result<Option<u64>, PortError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.audiences)
            .set_key(Some(Self::revision_key(workspace_id, copy)))
            .consistent_read(true)
            .send()
            .await?;
        Ok(out
            .item
            .as_ref()
            .map(|item| get_n(item, "revision").unwrap_or(0)))
    }

    /// Writes the copies a workspace lacks, from `revision` as its revision item holds
    /// it (0: none, so that a workspace with no audiences reads one item too).
    async fn copy_revision(&self, workspace_id: &str, revision: u64) -> Result<(), PortError> {
        let writes = (1..=COPIES).map(|copy| async move {
            let write = self
                .client
                .update_item()
                .table_name(&self.audiences)
                .set_key(Some(Self::revision_key(workspace_id, copy)))
                .update_expression("SET revision = :revision")
                .condition_expression("attribute_not_exists(pk)")
                .expression_attribute_values(":revision", n(revision))
                .send()
                .await;
            condition(write).map(|_| ())
        });
        for written in join_all(writes).await {
            written?;
        }
        Ok(())
    }

    /// The workspace's rules from the next copy, or from the originals (then written
    /// into that copy) while it is not whole.
    pub(super) async fn copied_rules(&self, workspace_id: &str) -> Result<Definitions, PortError> {
        let copy = Self::next_copy();
        let found = self.partition(Self::copy_pk(workspace_id, copy)).await?;
        if let (Some(revision), true) = (found.revision, found.whole) {
            return Ok(Definitions {
                revision,
                audiences: found
                    .definitions
                    .iter()
                    .filter_map(audience_from_item)
                    .collect(),
            });
        }
        let original = self.partition(workspace_id.to_owned()).await?;
        let revision = original.revision.unwrap_or(0);
        self.fill(workspace_id, copy, revision, &original.definitions)
            .await?;
        let unbuilt = |item| {
            audience_from_item(item).map(|audience| Audience {
                building: None,
                ..audience
            })
        };
        Ok(Definitions {
            revision,
            audiences: original.definitions.iter().filter_map(unbuilt).collect(),
        })
    }

    /// Writes `definitions`, the originals at `revision`, into copy `copy`, then marks it
    /// whole: each transaction only while the copy is still at `revision` (or has no
    /// revision yet). A define or delete in between leaves it for a later read.
    async fn fill(
        &self,
        workspace_id: &str,
        copy: u32,
        revision: u64,
        definitions: &[Item],
    ) -> Result<(), PortError> {
        let chunks: Vec<&[Item]> = match definitions.len() {
            0 => vec![&[]],
            _ => definitions.chunks(FILL_CHUNK).collect(),
        };
        let last = chunks.len() - 1;
        for (at, chunk) in chunks.into_iter().enumerate() {
            let at_revision = Update::builder()
                .table_name(&self.audiences)
                .set_key(Some(Self::revision_key(workspace_id, copy)))
                .condition_expression("attribute_not_exists(pk) OR revision = :revision")
                .expression_attribute_values(":revision", n(revision));
            let at_revision = if at == last {
                at_revision
                    .update_expression("SET revision = :revision, whole = :whole")
                    .expression_attribute_values(":whole", AttributeValue::Bool(true))
            } else {
                at_revision.update_expression("SET revision = :revision")
            };
            let mut items = vec![TransactWriteItem::builder()
                .update(built(at_revision.build())?)
                .build()];
            for definition in chunk {
                items.push(self.copy_put(workspace_id, copy, definition)?);
            }
            if !super::transact(&self.client, items).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// One definitions partition (a workspace's own, or a copy), strongly consistent.
    async fn partition(&self, pk: String) -> Result<Partition, PortError> {
        let mut found = Partition {
            revision: None,
            whole: false,
            definitions: Vec::new(),
        };
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.audiences)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(&pk))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await?;
            for item in out.items.unwrap_or_default() {
                if get_s(&item, SORT_KEY) == Some(DEFINITIONS) {
                    found.revision = Some(get_n(&item, "revision").unwrap_or(0));
                    found.whole = flag(&item, "whole");
                } else {
                    found.definitions.push(item);
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(found);
            }
        }
    }

    /// The workspace's definitions as its own partition holds them, with their builds'
    /// progress.
    pub(super) async fn originals(&self, workspace_id: &str) -> Result<Definitions, PortError> {
        let found = self.partition(workspace_id.to_owned()).await?;
        let mut audiences: Vec<Audience> = found
            .definitions
            .iter()
            .filter_map(audience_from_item)
            .collect();
        self.with_progress(workspace_id, &mut audiences).await?;
        Ok(Definitions {
            revision: found.revision.unwrap_or(0),
            audiences,
        })
    }
}
