//! Webhook lanes in the webhooks table (`docs/webhooks.md` §2): a lane is the
//! partition `l#<workspace>#<webhook id>#<user>`, its meta item `sk = "#"` (`tail`,
//! `done`, `last_seq`, `attempts`, `next_at`, `lease_until`, `leased_by` (whose append
//! took the lease, until a worker's move), and `v`, moved by every change so that an
//! append's or an arrangement's transaction holds only if nothing changed since it read
//! the meta) and one item per delivery, `sk` = its slot in 12 digits (`message_id`,
//! `sequence`, `ord`: the user's version, `body`); sequence blocks `seq#<ws>#<webhook id>`
//! (`next`). Deliveries and metas expire (TTL `expires_at`), metas a day after the last one.

use super::{
    built, condition, condition_held, get_n, get_s, n, s, transact_once, Condition, Item,
    Transacted, PARTITION_KEY, TTL_ATTRIBUTE,
};
use crate::app::ports::{
    Appended, Failed, Head, Lane, LaneHead, Lanes, NewDelivery, PortError, Queued, READ_AHEAD,
};
use crate::clock::now_millis;
use crate::domain::webhook::append_wakes;
use aws_sdk_dynamodb::types::{
    Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;

const SORT_KEY: &str = "sk";
const META: &str = "#";
/// A delivery is kept this long after it is appended (a week: the longest a message
/// waits, 5 days of failures, and more); its lane's meta a day longer.
const KEPT_FOR_S: i64 = 7 * 24 * 3600;
const META_KEPT_FOR_S: i64 = KEPT_FOR_S + 24 * 3600;
/// Appends that find the meta changed by another append or a worker since they read
/// it, before the append gives up (the fan-out's message comes again).
const APPEND_ATTEMPTS: usize = 5;

#[derive(Clone)]
pub struct LaneStore {
    client: Client,
    table: String,
}

/// A lane's meta, as read.
#[derive(Default)]
struct Meta {
    /// `v`: `None` when the lane has no meta yet.
    version: Option<u64>,
    tail: u64,
    done: u64,
    last_sequence: u64,
    attempts: usize,
    next_at: i64,
    lease_until: i64,
    /// The message whose append last took the lease.
    leased_by: Option<String>,
}

impl LaneStore {
    pub fn new(client: Client, table: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
        }
    }

    fn key(pk: String, sk: String) -> Item {
        Item::from([
            (PARTITION_KEY.to_owned(), s(pk)),
            (SORT_KEY.to_owned(), s(sk)),
        ])
    }

    fn put(&self, item: Item) -> Result<Put, PortError> {
        built(
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .build(),
        )
    }

    fn lane_pk(lane: &Lane) -> String {
        format!(
            "l#{}#{}#{}",
            lane.workspace_id, lane.webhook_id, lane.user_id
        )
    }

    fn meta_key(lane: &Lane) -> Item {
        Self::key(Self::lane_pk(lane), META.to_owned())
    }

    fn slot_key(lane: &Lane, slot: u64) -> Item {
        Self::key(Self::lane_pk(lane), format!("{slot:012}"))
    }

    async fn read(&self, key: Item) -> Result<Option<Item>, PortError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await?;
        Ok(out.item)
    }

    async fn meta(&self, lane: &Lane) -> Result<Meta, PortError> {
        let Some(item) = self.read(Self::meta_key(lane)).await? else {
            return Ok(Meta::default());
        };
        Ok(Meta {
            version: get_n(&item, "v"),
            tail: get_n(&item, "tail").unwrap_or(0),
            done: get_n(&item, "done").unwrap_or(0),
            last_sequence: get_n(&item, "last_seq").unwrap_or(0),
            attempts: get_n(&item, "attempts").unwrap_or(0),
            next_at: get_n(&item, "next_at").unwrap_or(0),
            lease_until: get_n(&item, "lease_until").unwrap_or(0),
            leased_by: get_s(&item, "leased_by").map(str::to_owned),
        })
    }

    /// The deliveries at slots `first` to `first + count - 1` that are there, in order.
    async fn deliveries(
        &self,
        lane: &Lane,
        first: u64,
        count: u64,
    ) -> Result<Vec<Queued>, PortError> {
        let last = first + count - 1;
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :first AND :last")
            .expression_attribute_values(":pk", s(Self::lane_pk(lane)))
            .expression_attribute_values(":first", s(format!("{first:012}")))
            .expression_attribute_values(":last", s(format!("{last:012}")))
            .consistent_read(true)
            .send()
            .await?;
        Ok(out.items().iter().filter_map(queued).collect())
    }

    /// A delivery's item at its slot.
    fn delivery_item(lane: &Lane, queued: &Queued) -> Item {
        let mut item = Self::slot_key(lane, queued.slot);
        item.extend([
            ("message_id".to_owned(), s(&queued.message_id)),
            ("body".to_owned(), s(&queued.body)),
            ("sequence".to_owned(), n(queued.sequence)),
            ("ord".to_owned(), n(queued.order)),
            (TTL_ATTRIBUTE.to_owned(), n(expires_at(KEPT_FOR_S))),
        ]);
        item
    }

    /// An update of the meta that moves `v`, keeps the meta a day past its deliveries,
    /// and holds only while `done` is `slot - 1`.
    fn meta_update(
        &self,
        lane: &Lane,
        slot: u64,
        set: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::meta_key(lane)))
            // A worker's move shows a wake arrived: no append's retry wakes another for
            // the lease it took (`leased_by`).
            .update_expression(format!(
                "SET {set}, expires_at = :expires REMOVE leased_by ADD v :one"
            ))
            .condition_expression("done = :before")
            .expression_attribute_values(":before", n(slot.saturating_sub(1)))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":expires", n(expires_at(META_KEPT_FOR_S)))
    }
}

/// Tries of a worker's move that met an append's or an arrangement's transaction.
const TRANSACTION_TRIES: usize = 3;

/// A worker's move (a plain update of the meta) that meets a transaction in flight on
/// the meta fails with `TransactionConflictException`, unapplied, and the SDK does not
/// retry it: tried again here, so a busy lane's worker does not give its wake back (and
/// send its head twice) for it.
async fn past_transactions<T, F, Fut>(mut call: F) -> Result<T, PortError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PortError>>,
{
    for _ in 1..TRANSACTION_TRIES {
        match call().await {
            Err(PortError::Refused(code) | PortError::Unavailable(code))
                if code == "TransactionConflictException" => {}
            done => return done,
        }
    }
    call().await
}

/// A delivery as read, or `None` for an item that is not one.
fn queued(item: &Item) -> Option<Queued> {
    Some(Queued {
        slot: get_s(item, SORT_KEY)?.parse().ok()?,
        message_id: get_s(item, "message_id")?.to_owned(),
        sequence: get_n(item, "sequence")?,
        order: get_n(item, "ord").unwrap_or(0),
        body: get_s(item, "body")?.to_owned(),
    })
}

/// Seconds since the epoch, `after` seconds from now: DynamoDB's TTL reads seconds.
fn expires_at(after: i64) -> i64 {
    (now_millis() / 1000).saturating_add(after)
}

impl Lanes for LaneStore {
    async fn sequence_block(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        count: u64,
    ) -> Result<u64, PortError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(
                format!("seq#{workspace_id}#{webhook_id}"),
                META.to_owned(),
            )))
            .update_expression("ADD #next :count")
            .expression_attribute_names("#next", "next")
            .expression_attribute_values(":count", n(count))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await?;
        let next: u64 = out
            .attributes
            .as_ref()
            .and_then(|item| get_n(item, "next"))
            .ok_or_else(|| PortError::Refused("no sequence returned".into()))?;
        Ok(next + 1 - count)
    }

    async fn append(
        &self,
        lane: &Lane,
        delivery: NewDelivery<'_>,
        now: i64,
        lease_until: i64,
    ) -> Result<Appended, PortError> {
        let sequence = delivery.sequence;
        for _ in 0..APPEND_ATTEMPTS {
            let meta = self.meta(lane).await?;
            if meta.last_sequence >= sequence {
                return Ok(Appended::SequenceBehind);
            }
            let slot = meta.tail + 1;
            let wake = append_wakes(
                meta.lease_until,
                meta.leased_by.as_deref(),
                now,
                delivery.message_id,
            );
            let queued = Queued {
                slot,
                message_id: delivery.message_id.to_owned(),
                sequence,
                order: delivery.order,
                body: delivery.body.to_owned(),
            };
            // A slot is reserved by the meta's condition: a delivery left over from a
            // meta that expired first is overwritten.
            let put = self.put(Self::delivery_item(lane, &queued))?;
            let lease = if wake {
                ", lease_until = :lease, leased_by = :id"
            } else {
                ""
            };
            let mut update = Update::builder()
                .table_name(&self.table)
                .set_key(Some(Self::meta_key(lane)))
                .update_expression(format!(
                    "SET tail = :slot, last_seq = :seq, done = if_not_exists(done, :zero), expires_at = :expires{lease} ADD v :one"
                ))
                .expression_attribute_values(":slot", n(slot))
                .expression_attribute_values(":seq", n(sequence))
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":expires", n(expires_at(META_KEPT_FOR_S)))
                .expression_attribute_values(":one", n(1));
            if wake {
                // A retry waking on its own lease never shortens it.
                update = update
                    .expression_attribute_values(":lease", n(lease_until.max(meta.lease_until)))
                    .expression_attribute_values(":id", s(delivery.message_id));
            }
            update = match meta.version {
                Some(version) => update
                    .condition_expression("v = :v")
                    .expression_attribute_values(":v", n(version)),
                None => update.condition_expression("attribute_not_exists(pk)"),
            };
            let items = vec![
                TransactWriteItem::builder().put(put).build(),
                TransactWriteItem::builder()
                    .update(built(update.build())?)
                    .build(),
            ];
            match transact_once(&self.client, items).await? {
                Transacted::Done => return Ok(Appended::At { slot, wake }),
                // Changed since read (an append, a worker): read it again.
                Transacted::ConditionFailed(_) | Transacted::Conflict => {}
            }
        }
        Err(PortError::Unavailable("lane kept changing".into()))
    }

    async fn head(&self, lane: &Lane) -> Result<LaneHead, PortError> {
        let meta = self.meta(lane).await?;
        if meta.tail <= meta.done {
            return Ok(LaneHead::default());
        }
        let slot = meta.done + 1;
        let count = (meta.tail - meta.done).min(READ_AHEAD as u64 + 1);
        let mut read = self
            .deliveries(lane, slot, count)
            .await?
            .into_iter()
            .peekable();
        let head = read.next_if(|queued| queued.slot == slot);
        Ok(LaneHead {
            // Expired (TTL) before it was delivered: the worker passes it.
            next: Some(head.map_or(Head::Expired(slot), Head::Waiting)),
            behind: read.collect(),
            attempts: meta.attempts,
            next_at: meta.next_at,
            version: meta.version.unwrap_or(0),
        })
    }

    async fn arrange(
        &self,
        lane: &Lane,
        head: &LaneHead,
        deliveries: &[Queued],
    ) -> Result<bool, PortError> {
        let mut items = deliveries
            .iter()
            .map(|queued| {
                let put = self.put(Self::delivery_item(lane, queued))?;
                Ok(TransactWriteItem::builder().put(put).build())
            })
            .collect::<Result<Vec<_>, PortError>>()?;
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::meta_key(lane)))
            .update_expression("ADD v :one")
            .condition_expression("v = :v")
            .expression_attribute_values(":v", n(head.version))
            .expression_attribute_values(":one", n(1));
        items.push(
            TransactWriteItem::builder()
                .update(built(update.build())?)
                .build(),
        );
        Ok(matches!(
            transact_once(&self.client, items).await?,
            Transacted::Done
        ))
    }

    async fn advance(
        &self,
        lane: &Lane,
        slot: u64,
        lease_until: i64,
    ) -> Result<Option<bool>, PortError> {
        // The lane emptied: the lease let go, if no append came since.
        let emptied = past_transactions(|| async {
            let emptied = self
                .meta_update(
                    lane,
                    slot,
                    "done = :slot, attempts = :zero, next_at = :zero, lease_until = :zero",
                )
                .condition_expression("done = :before AND tail = :slot")
                .expression_attribute_values(":slot", n(slot))
                .expression_attribute_values(":zero", n(0))
                .send()
                .await;
            condition_held(emptied)
        })
        .await?;
        if emptied {
            return Ok(Some(false));
        }
        // More behind it (the tail only grows), or another worker moved it.
        let moved = past_transactions(|| async {
            let moved = self
                .meta_update(
                    lane,
                    slot,
                    "done = :slot, attempts = :zero, next_at = :zero, lease_until = :lease",
                )
                .expression_attribute_values(":slot", n(slot))
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":lease", n(lease_until))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            condition(moved)
        })
        .await?;
        Ok(match moved {
            Condition::Held => Some(true),
            // This very update, applied and its answer lost, then failed by the SDK's
            // retry: the lane holds the lease it set.
            Condition::Failed(Some(found))
                if get_n(&found, "done") == Some(slot)
                    && get_n(&found, "lease_until") == Some(lease_until) =>
            {
                Some(get_n::<u64>(&found, "tail").unwrap_or(slot) > slot)
            }
            Condition::Failed(_) => None,
        })
    }

    async fn postpone(&self, lane: &Lane, slot: u64, failed: Failed) -> Result<bool, PortError> {
        past_transactions(|| async {
            let postponed = self
                .meta_update(
                    lane,
                    slot,
                    "attempts = :attempts, next_at = :next, lease_until = :lease",
                )
                .expression_attribute_values(":attempts", n(failed.attempts))
                .expression_attribute_values(":next", n(failed.next_at))
                .expression_attribute_values(":lease", n(failed.lease_until))
                .send()
                .await;
            condition_held(postponed)
        })
        .await
    }
}
