//! Each webhook endpoint's attempt log in the webhooks table (`docs/webhooks.md` §5):
//! partitions `dl#<workspace>#<webhook id>#<n>`, n < 8 by the message's id (the heavy
//! workspace's endpoint writes a few thousand lines a second: an eighth each stays under
//! a partition's 1,000 write units), one item per line, `sk` its place (start in 13
//! digits `#` `webhook-id`), kept 30 days (TTL `expires_at`). A page reads the 8
//! partitions in its order (newest first; a replay's oldest first), each up to one
//! more than the page, and merges them; a partition that stopped early (DynamoDB's
//! 1 MB a reply) bounds the page at its last line, so none is passed over.

use super::{get_n, get_s, n, s, stable_shard, Item, WebhookStore, PARTITION_KEY, TTL_ATTRIBUTE};
use crate::app::ports::{DeliveryLog, DeliveryStatus, LogPage, LoggedAttempt, PortError};
use crate::domain::webhook::{log_place, LogRange, LOG_KEPT_FOR};
use futures::future::try_join_all;

const SORT_KEY: &str = "sk";
/// Partitions an endpoint's log is spread over.
const LOG_SHARDS: u64 = 8;

fn log_pk(workspace_id: &str, webhook_id: &str, shard: u64) -> String {
    format!("dl#{workspace_id}#{webhook_id}#{shard}")
}

fn line_item(workspace_id: &str, webhook_id: &str, line: &LoggedAttempt) -> Item {
    let shard = stable_shard(line.message_id.bytes(), LOG_SHARDS);
    let expires_at = line.at.div_euclid(1000) + LOG_KEPT_FOR.as_secs() as i64;
    let mut item = Item::from([
        (
            PARTITION_KEY.to_owned(),
            s(log_pk(workspace_id, webhook_id, shard)),
        ),
        (SORT_KEY.to_owned(), s(log_place(line.at, &line.message_id))),
        ("at".to_owned(), n(line.at)),
        ("message_id".to_owned(), s(&line.message_id)),
        ("user".to_owned(), s(&line.user_id)),
        ("sequence".to_owned(), n(line.sequence)),
        ("body".to_owned(), s(&line.body)),
        ("status".to_owned(), s(line.status.as_str())),
        (TTL_ATTRIBUTE.to_owned(), n(expires_at)),
    ]);
    let optional = [
        ("http_status", line.http_status.map(n)),
        ("error", line.error.as_deref().map(s)),
        ("latency_ms", line.latency_ms.map(n)),
        ("next_attempt_at", line.next_attempt_at.map(n)),
    ];
    item.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| Some((name.to_owned(), value?))),
    );
    item
}

fn line_from_item(item: &Item) -> Option<(String, LoggedAttempt)> {
    let line = LoggedAttempt {
        at: get_n(item, "at")?,
        message_id: get_s(item, "message_id")?.to_owned(),
        // Empty for an endpoint's own events.
        user_id: get_s(item, "user").unwrap_or_default().to_owned(),
        sequence: get_n(item, "sequence")?,
        body: get_s(item, "body")?.to_owned(),
        status: DeliveryStatus::parse(get_s(item, "status")?)?,
        http_status: get_n(item, "http_status"),
        error: get_s(item, "error").map(str::to_owned),
        latency_ms: get_n(item, "latency_ms"),
        next_attempt_at: get_n(item, "next_attempt_at"),
    };
    Some((get_s(item, SORT_KEY)?.to_owned(), line))
}

impl DeliveryLog for WebhookStore {
    async fn record(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        line: &LoggedAttempt,
    ) -> Result<(), PortError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(line_item(workspace_id, webhook_id, line)))
            .send()
            .await?;
        Ok(())
    }

    async fn attempts(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        range: &LogRange,
        limit: usize,
    ) -> Result<LogPage, PortError> {
        let Some((from, to)) = range.places() else {
            return Ok(LogPage::default());
        };
        let shards = (0..LOG_SHARDS).map(|shard| {
            self.client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
                .expression_attribute_values(":pk", s(log_pk(workspace_id, webhook_id, shard)))
                .expression_attribute_values(":from", s(&from))
                .expression_attribute_values(":to", s(&to))
                .scan_index_forward(range.oldest_first)
                // A line written just now is on the page that follows it.
                .consistent_read(true)
                .limit(i32::try_from(limit + 1).unwrap_or(i32::MAX))
                .send()
        });
        // The page's order: by place, newest first unless oldest first is asked.
        let in_order = |a: &String, b: &String| {
            if range.oldest_first {
                a.cmp(b)
            } else {
                b.cmp(a)
            }
        };
        let after = range.after.as_ref();
        let mut lines = Vec::new();
        // Lines past this may be missing: a partition that has more stopped (at its
        // limit, or at DynamoDB's 1 MB a reply) at the last line it gave.
        let mut bound: Option<String> = None;
        for out in try_join_all(shards).await? {
            let given: Vec<(String, LoggedAttempt)> =
                out.items().iter().filter_map(line_from_item).collect();
            if out.last_evaluated_key.is_some() {
                let last = given.last().map(|(place, _)| place.clone());
                bound = [bound, last].into_iter().flatten().min_by(in_order);
            }
            // The bound is inclusive: the line a cursor names was on its page.
            lines.extend(given.into_iter().filter(|(place, _)| Some(place) != after));
        }
        lines.retain(|(place, _)| {
            bound
                .as_ref()
                .is_none_or(|bound| in_order(place, bound).is_le())
        });
        lines.sort_unstable_by(|a, b| in_order(&a.0, &b.0));
        let more = lines.len() > limit || bound.is_some();
        lines.truncate(limit);
        Ok(LogPage {
            next_after: more
                .then(|| lines.last().map(|(place, _)| place.clone()))
                .flatten(),
            attempts: lines.into_iter().map(|(_, line)| line).collect(),
        })
    }
}
