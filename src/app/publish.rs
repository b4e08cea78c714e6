//! Publishing change events (the changes function): the users table's stream in,
//! events on the bus out.
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

use super::ports::{EventBus, StoredUser, UserImage};
use super::{call_groups, runtime_timer, Timer};
use crate::domain::change::{change_event, ChangeEvent, Image};
use futures::future::join_all;
use std::time::Duration;

/// Tries of one call's refused entries before the record is reported failed.
const PUT_ATTEMPTS: usize = 3;
/// PutEvents calls in flight at once (each user's events stay in one lane, in order).
const LANES: usize = 4;
/// Backoff before a call's second and third tries (throttling is the usual refusal).
const RETRY_BASE: Duration = Duration::from_millis(50);

/// One record of the users table's stream: its position in the shard, and the user
/// before and after the write, or why the record cannot be read.
pub struct StreamChange<'a, E> {
    pub position: &'a str,
    pub images: Result<(UserImage, UserImage), E>,
}

/// What publishing a batch did.
#[derive(Debug, PartialEq)]
pub struct Published<'a> {
    /// Events put on the bus.
    pub events: usize,
    /// The first record not done, from which the batch must be delivered again.
    pub first_failure: Option<&'a str>,
}

pub struct Publish<B> {
    bus: B,
    /// How a retry waits out its backoff.
    backoff: Timer,
}

impl<B: EventBus> Publish<B> {
    /// Waits out backoffs on tokio's timer.
    pub fn new(bus: B) -> Self {
        Self::with_backoff(bus, runtime_timer())
    }

    pub fn with_backoff(bus: B, backoff: Timer) -> Self {
        Self { bus, backoff }
    }

    /// Publishes the events of a batch of stream records, in stream order.
    pub async fn publish<'a, E: std::fmt::Display>(
        &self,
        records: &[StreamChange<'a, E>],
    ) -> Published<'a> {
        let mut pending: Vec<(&'a str, ChangeEvent)> = Vec::new();
        let mut poison = None;
        for record in records {
            match &record.images {
                Ok((old, new)) => pending.extend(event_of(old, new).map(|e| (record.position, e))),
                Err(err) => {
                    tracing::error!(sequence_number = %record.position, error = %err, "unreadable stream record");
                    poison = Some(record.position);
                    break;
                }
            }
        }
        let first_failure = match self.put_all(&pending).await {
            Ok(()) => poison,
            Err(failed_at) => Some(pending[failed_at].0),
        };
        Published {
            events: pending.len(),
            first_failure,
        }
    }

    /// Puts the events, each user's in order; on failure, the index of the first event
    /// not put. Users are spread over lanes that put concurrently, one call after
    /// another within a lane, so a batch of 100 events waits for 3 calls, not 10.
    async fn put_all(&self, events: &[(&str, ChangeEvent)]) -> Result<(), usize> {
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
        let sizes = lane.iter().map(|&index| B::entry_size(&events[index].1));
        for call in call_groups(sizes, B::MAX_ENTRIES_PER_CALL, B::MAX_BYTES_PER_CALL) {
            let mut waiting: Vec<usize> = call.into_iter().map(|i| lane[i]).collect();
            for attempt in 0..PUT_ATTEMPTS {
                if attempt > 0 {
                    (self.backoff)(RETRY_BASE * 2u32.pow(attempt as u32)).await;
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

/// The event of one write, if a read would show a change.
fn event_of(old: &UserImage, new: &UserImage) -> Option<ChangeEvent> {
    let workspace_id = match (old, new) {
        (_, Some((workspace_id, _))) | (Some((workspace_id, _)), None) => workspace_id,
        (None, None) => return None,
    };
    change_event(workspace_id, image(old), image(new))
}

fn image(side: &Option<(String, StoredUser)>) -> Option<Image<'_>> {
    side.as_ref().map(|(_, user)| Image {
        external_user_id: &user.external_user_id,
        profile: &user.profile,
        version: user.version,
    })
}

#[cfg(test)]
#[path = "publish_tests.rs"]
mod tests;
