//! The changes function: the users table's stream in, change events on EventBridge out.
//!
//! Records are handled in stream order (one shard holds each user's writes in order).
//! Their events go out in calls of up to 10, a user's calls one after another (users
//! spread over a few concurrent lanes); a call EventBridge partly refuses goes again
//! from its first refused entry on, with backoff, so no user's events reorder. When a
//! record cannot be read (a poison record) or its event cannot be put, the answer
//! names it as the first failure: the event source mapping retries from there,
//! bisects, and after its retries hands the record to the on-failure queue, so the
//! shard moves on. Events carry an id that a retry repeats, so a view drops the
//! duplicates a retry publishes.

mod event;

pub use event::{change_event, ChangeEvent, Image, SOURCE, USER_CHANGED, USER_DELETED};

use crate::aws::call_groups;
use crate::events::{entry_size, EventBus, MAX_BYTES_PER_CALL, MAX_ENTRIES_PER_CALL};
use crate::store::{StoredUser, StreamBatchResponse, StreamEvent, StreamItemFailure, StreamRecord};
use futures::future::join_all;
use std::time::Instant;

/// Tries of one call's refused entries before the record is reported failed.
const PUT_ATTEMPTS: usize = 3;
/// PutEvents calls in flight at once (each user's events stay in one lane, in order).
const LANES: usize = 4;
/// Backoff before a call's second and third tries (throttling is the usual refusal).
const RETRY_BASE: std::time::Duration = std::time::Duration::from_millis(50);

pub struct Publisher {
    bus: EventBus,
}

impl Publisher {
    pub fn new(bus: EventBus) -> Self {
        Self { bus }
    }

    pub async fn handle(&self, event: StreamEvent) -> StreamBatchResponse {
        let started = Instant::now();
        let mut pending: Vec<(&str, ChangeEvent)> = Vec::new();
        let mut poison = None;
        for record in &event.records {
            match event_of(record) {
                Ok(Some(change)) => pending.push((&record.dynamodb.sequence_number, change)),
                Ok(None) => {}
                Err(err) => {
                    tracing::error!(sequence_number = %record.dynamodb.sequence_number, error = %err, "unreadable stream record");
                    poison = Some(record.dynamodb.sequence_number.as_str());
                    break;
                }
            }
        }
        let published = pending.len();
        let first_failure = match self.publish(&pending).await {
            Ok(()) => poison,
            Err(failed_at) => Some(pending[failed_at].0),
        };
        tracing::info!(
            records = event.records.len(),
            events = published,
            failed = first_failure.is_some(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "stream batch"
        );
        StreamBatchResponse {
            batch_item_failures: first_failure
                .map(|sequence_number| StreamItemFailure {
                    item_identifier: sequence_number.to_owned(),
                })
                .into_iter()
                .collect(),
        }
    }

    /// Puts the events, each user's in order; on failure, the index of the first event
    /// not put. Users are spread over lanes that put concurrently, one call after
    /// another within a lane, so a batch of 100 events waits for 3 calls, not 10.
    async fn publish(&self, events: &[(&str, ChangeEvent)]) -> Result<(), usize> {
        let mut lanes: Vec<Vec<usize>> = vec![Vec::new(); LANES];
        for (index, (_, event)) in events.iter().enumerate() {
            lanes[lane_of(event)].push(index);
        }
        let lanes = lanes.iter().map(|lane| self.publish_lane(events, lane));
        let failures = join_all(lanes).await;
        failures
            .into_iter()
            .filter_map(Result::err)
            .min()
            .map_or(Ok(()), Err)
    }

    async fn publish_lane(
        &self,
        events: &[(&str, ChangeEvent)],
        lane: &[usize],
    ) -> Result<(), usize> {
        let sizes = lane.iter().map(|&index| entry_size(&events[index].1));
        for call in call_groups(sizes, MAX_ENTRIES_PER_CALL, MAX_BYTES_PER_CALL) {
            let mut waiting: Vec<usize> = call.into_iter().map(|i| lane[i]).collect();
            for attempt in 0..PUT_ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(RETRY_BASE * 2u32.pow(attempt as u32)).await;
                }
                let batch: Vec<&ChangeEvent> = waiting.iter().map(|&i| &events[i].1).collect();
                waiting = match self.bus.put(&batch).await {
                    Ok(refused) => still_waiting(waiting, &refused),
                    Err(err) => {
                        tracing::warn!(error = %err, "PutEvents failed");
                        waiting
                    }
                };
                if waiting.is_empty() {
                    break;
                }
            }
            if let Some(&first) = waiting.first() {
                return Err(first);
            }
        }
        Ok(())
    }
}

/// What a call must send again after EventBridge refused some of its entries: from the
/// first refused one on, the accepted ones after it too, so that no user's event goes
/// out after a later one of its own (views drop the repeats by id).
fn still_waiting(sent: Vec<usize>, refused: &[usize]) -> Vec<usize> {
    match refused.iter().min() {
        Some(&first) => sent[first..].to_vec(),
        None => Vec::new(),
    }
}

/// The lane of a user's events: the same for every event of one user.
fn lane_of(event: &ChangeEvent) -> usize {
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&event.detail["workspace_id"].as_str(), &mut hasher);
    std::hash::Hash::hash(&event.detail["external_user_id"].as_str(), &mut hasher);
    (std::hash::Hasher::finish(&hasher) % LANES as u64) as usize
}

fn event_of(record: &StreamRecord) -> Result<Option<ChangeEvent>, String> {
    let (old, new) = record.users()?;
    let workspace_id = match (&old, &new) {
        (_, Some((workspace_id, _))) | (Some((workspace_id, _)), None) => workspace_id.clone(),
        (None, None) => return Ok(None),
    };
    Ok(change_event(&workspace_id, image(&old), image(&new)))
}

fn image(side: &Option<(String, StoredUser)>) -> Option<Image<'_>> {
    side.as_ref().map(|(_, user)| Image {
        external_user_id: &user.external_user_id,
        profile: &user.profile,
        version: user.version,
    })
}

#[cfg(test)]
mod tests {
    use super::still_waiting;

    #[test]
    fn a_partly_refused_call_resends_from_the_first_refusal_on() {
        assert_eq!(still_waiting(vec![4, 5, 6, 7], &[3, 1]), vec![5, 6, 7]);
        assert_eq!(still_waiting(vec![4, 5, 6, 7], &[]), Vec::<usize>::new());
        assert_eq!(still_waiting(vec![9], &[0]), vec![9]);
    }
}
