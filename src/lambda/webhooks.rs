//! The webhooks function's edge (`docs/webhooks.md` §1–2). Two queues, one function:
//! the intake queue (bus events, as the `WebhookEvents` rule sends them: each appended
//! to the lane of every endpoint that subscribes) and the wake queue (each a lane whose
//! deliveries to attempt). A message not done is reported failed and comes back. One
//! log line per batch.

use crate::app::deliveries::{Deliveries, Drained};
use crate::app::ports::{
    DeliveryLog, Lane, Lanes, ReplayTask, ReplayTasks, Sender, Users, Wakes, Webhooks,
};
use crate::aws::dynamodb::{LaneStore, UserStore, WebhookStore};
use crate::aws::sqs::{decode_wake, SqsQueue, WakeMessage};
use crate::clock::now_millis;
use crate::config::Resources;
use crate::contract::{webhook_event, WebhookEvent};
use crate::domain::webhook::JITTER;
use crate::net::webhook_client::{system_lookup, WebhookClient};
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use futures::future::join_all;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

pub struct WebhooksFunction<W, L, K, S, U> {
    deliveries: Deliveries<W, L, K, S, U>,
    /// The wake queue's name: its messages are lanes; every other queue's, bus events.
    wake_queue: String,
}

impl WebhooksFunction<WebhookStore, LaneStore, SqsQueue, WebhookClient, UserStore> {
    pub fn on_aws(
        sdk: &aws_config::SdkConfig,
        resources: &Resources,
    ) -> Result<Self, reqwest::Error> {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let deliveries = Deliveries::new(
            WebhookStore::new(dynamodb.clone(), &resources.webhooks_table),
            LaneStore::new(dynamodb.clone(), &resources.webhooks_table),
            SqsQueue::new(
                aws_sdk_sqs::Client::new(sdk),
                &resources.webhook_wake_queue_url,
            ),
            WebhookClient::new(resources.webhook_reach, system_lookup())?,
            UserStore::new(dynamodb, &resources.users_table),
            Arc::new(now_millis),
            Arc::new(|| rand::random_range(JITTER.0..=JITTER.1)),
        )
        .with_time_factor(resources.webhook_time_factor);
        Ok(Self::new(deliveries, resources))
    }
}

/// What a batch did, for its log line.
#[derive(Default)]
struct Done {
    appended: usize,
    /// Deliveries a replay's page appended again.
    resent: usize,
    drained: Drained,
    failed: Vec<String>,
}

impl<W, L, K, S, U> WebhooksFunction<W, L, K, S, U>
where
    W: Webhooks + DeliveryLog + Sync,
    L: Lanes + Sync,
    K: Wakes + ReplayTasks + Sync,
    S: Sender + Sync,
    U: Users + Sync,
{
    pub fn new(deliveries: Deliveries<W, L, K, S, U>, resources: &Resources) -> Self {
        Self {
            deliveries,
            wake_queue: super::queue_name(&resources.webhook_wake_queue_url).to_owned(),
        }
    }

    /// Handles one invocation; `deadline_ms` is Lambda's for it (epoch ms).
    pub async fn handle(&self, event: SqsEvent, deadline_ms: i64) -> SqsBatchResponse {
        let started = Instant::now();
        let queue = event
            .records
            .first()
            .and_then(|record| record.event_source_arn.as_deref())
            .map(super::queue_name)
            .unwrap_or_default();
        let wakes = queue == self.wake_queue;
        let done = if wakes {
            self.wakes(&event.records, deadline_ms).await
        } else {
            self.intake(&event.records).await
        };
        tracing::info!(
            source = if wakes { "wakes" } else { "intake" },
            records = event.records.len(),
            appended = done.appended,
            resent = done.resent,
            delivered = done.drained.delivered,
            given_up = done.drained.given_up,
            attempts_failed = done.drained.failed,
            unlogged = done.drained.unlogged,
            deferred = done.drained.deferred,
            failed = done.failed.len(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "webhooks"
        );
        super::sqs_response(done.failed)
    }

    /// Bus events: each user's in the order received (their appends keep it), users
    /// side by side. An event no endpoint takes (another type, or not a user's) is done.
    async fn intake(&self, records: &[SqsMessage]) -> Done {
        let mut done = Done::default();
        let mut by_user: BTreeMap<(String, String), Vec<(String, WebhookEvent)>> = BTreeMap::new();
        for record in records {
            let id = record.message_id.clone().unwrap_or_default();
            match record.body.as_deref().map(bus_event) {
                Some(Ok(Some(event))) => by_user
                    .entry((event.workspace_id.clone(), event.external_user_id.clone()))
                    .or_default()
                    .push((id, event)),
                Some(Ok(None)) => {}
                Some(Err(())) | None => {
                    tracing::error!(message_id = %id, "unreadable bus event");
                    done.failed.push(id);
                }
            }
        }
        let users = by_user.into_values().map(|events| async move {
            let mut appended = 0;
            let mut failed = Vec::new();
            for (id, event) in events {
                // After a failed one, the user's later events come back with it, so
                // that none is appended ahead of it.
                if !failed.is_empty() {
                    failed.push(id);
                    continue;
                }
                match self.deliveries.fan_out(&event).await {
                    Ok(lanes) => appended += lanes,
                    Err(err) => {
                        tracing::warn!(message_id = %id, error = %err, "bus event not fanned out");
                        failed.push(id);
                    }
                }
            }
            (appended, failed)
        });
        for (appended, failed) in join_all(users).await {
            done.appended += appended;
            done.failed.extend(failed);
        }
        done
    }

    /// Wakes: each lane drained once however many of its wakes the batch holds (they
    /// would only find it done), lanes side by side; and replays' pages, beside them.
    async fn wakes(&self, records: &[SqsMessage], deadline_ms: i64) -> Done {
        let mut done = Done::default();
        let mut by_lane: BTreeMap<Lane, Vec<String>> = BTreeMap::new();
        let mut replays: Vec<(ReplayTask, String)> = Vec::new();
        for record in records {
            let id = record.message_id.clone().unwrap_or_default();
            match record.body.as_deref().and_then(decode_wake) {
                Some(WakeMessage::Lane(lane)) => by_lane.entry(lane).or_default().push(id),
                Some(WakeMessage::Replay(task)) => replays.push((task, id)),
                None => {
                    tracing::error!(message_id = %id, "unreadable wake");
                    done.failed.push(id);
                }
            }
        }
        let drains = by_lane.into_iter().map(|(lane, ids)| async move {
            let drained = self.deliveries.drain(&lane, deadline_ms).await;
            if let Err(err) = &drained {
                tracing::warn!(error = %err, "lane not drained");
            }
            (drained, ids)
        });
        let pages = replays.into_iter().map(|(task, id)| async move {
            let replayed = self.deliveries.replay(&task).await;
            // The batch's line counts what pages resent; only a failure says more.
            if let Err(err) = &replayed {
                tracing::warn!(replay_id = %task.replay_id, error = %err, "replay page failed");
            }
            (replayed, id)
        });
        let (drained, replayed) = futures::join!(join_all(drains), join_all(pages));
        for (drained, ids) in drained {
            match drained {
                Ok(drained) => done.drained += drained,
                Err(_) => done.failed.extend(ids),
            }
        }
        for (replayed, id) in replayed {
            match replayed {
                Ok(replayed) => done.resent += replayed.resent,
                Err(_) => done.failed.push(id),
            }
        }
        done
    }
}

/// The webhook event of an intake body (an EventBridge event as its rule sends it);
/// `Ok(None)` for one no endpoint takes, `Err` for a body that is not an event.
fn bus_event(body: &str) -> Result<Option<WebhookEvent>, ()> {
    let event: Value = serde_json::from_str(body).map_err(|_| ())?;
    let (Some(detail_type), Some(detail)) = (
        event.get("detail-type").and_then(Value::as_str),
        event.get("detail"),
    ) else {
        return Err(());
    };
    Ok(webhook_event(detail_type, detail))
}

#[cfg(test)]
#[path = "webhooks_tests.rs"]
mod tests;
