//! A workspace's definitions revision and its copies. Every stream batch reads the
//! revision of each workspace it names (and again after its commits), so a busy
//! workspace's reads would all land on one partition key: the revision item itself
//! (`pk` = workspace, beside the definitions) has `COPIES` copies (`pk` =
//! `<workspace>#<k>`, `sk` = `#definitions`), moved together in the define's or
//! delete's transaction, and each read takes the next copy in turn, never the revision
//! item: the definitions' key is left to the reads of the definitions themselves
//! (`docs/scale.md`, item 10).
//!
//! A workspace that has not defined since copies were kept has none: a read that finds
//! its copy missing reads the revision item and writes the copies from it, each only
//! where none is (a define's own copies are never overwritten), so the answer is the
//! same before, during and after that migration.

use super::*;
use std::sync::atomic::{AtomicU32, Ordering};

/// Copies of a workspace's definitions revision that reads take: 7 × 3,000 read units a
/// second. (Workspaces from when there were 3 have the others made by their first
/// reads, below.)
const COPIES: u32 = 7;

/// The copy the next read takes, shared by the instance's reads.
static NEXT_COPY: AtomicU32 = AtomicU32::new(0);

impl AudienceStore {
    /// Copy `copy` of a workspace's definitions revision (0: the revision item).
    fn revision_key(workspace_id: &str, copy: u32) -> Item {
        match copy {
            0 => Self::key(workspace_id.to_owned(), DEFINITIONS),
            k => Self::key(format!("{workspace_id}#{k}"), DEFINITIONS),
        }
    }

    /// The definitions revision moved from `revision` to `to`, with its copies, as
    /// transaction items.
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
            let mut item = Self::revision_key(workspace_id, copy);
            item.insert("revision".into(), n(to));
            let put = Put::builder()
                .table_name(&self.audiences)
                .set_item(Some(item));
            items.push(
                TransactWriteItem::builder()
                    .put(built(put.build())?)
                    .build(),
            );
        }
        Ok(items)
    }

    /// The workspace's definitions revision (strongly consistent), from the next copy.
    pub(super) async fn current_revision(&self, workspace_id: &str) -> Result<u64, PortError> {
        let copy = 1 + NEXT_COPY.fetch_add(1, Ordering::Relaxed) % COPIES;
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
}
