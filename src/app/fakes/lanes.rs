//! Webhook delivery's ports in memory: lanes with DynamoDB's conditions (each call
//! atomic), wakes recorded with their delays, a sender scripted per call. Each call may
//! yield first, a seeded number of times, so that a test's tasks interleave in a
//! reproducible order of its choosing.

use super::{lock, Faults, Journal};
use crate::app::ports::{
    Appended, Failed, Head, Lane, LaneHead, Lanes, NewDelivery, PortError, Queued, ReplayTask,
    ReplayTasks, Reply, Sender, Wakes, READ_AHEAD,
};
use crate::domain::webhook::append_wakes;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How many times each call yields before it acts: none by default; a seed draws
/// 0–2 per call (xorshift), the same draws for the same seed.
#[derive(Clone, Default)]
pub struct Interleaving(Arc<Mutex<Option<u64>>>);

impl Interleaving {
    pub fn seeded(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(Some(seed | 1))))
    }

    async fn turn(&self) {
        let yields = lock(&self.0).as_mut().map_or(0, |state| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state % 3
        });
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LaneState {
    pub tail: u64,
    pub done: u64,
    pub last_sequence: u64,
    pub attempts: usize,
    pub next_at: i64,
    pub lease_until: i64,
    pub leased_by: Option<String>,
    /// How many times its deliveries were arranged.
    pub arranged: u64,
    pub version: u64,
    pub queued: BTreeMap<u64, Queued>,
}

#[derive(Clone, Default)]
pub struct MemoryLanes {
    pub lanes: Arc<Mutex<HashMap<Lane, LaneState>>>,
    pub sequences: Arc<Mutex<HashMap<String, u64>>>,
    pub journal: Journal,
    /// Calls refused before they change anything.
    pub faults: Faults,
    /// Calls applied whose answer is lost: the caller sees the error.
    pub lost_answers: Faults,
    pub interleaving: Interleaving,
}

impl MemoryLanes {
    async fn call(&self, name: &str) -> Result<(), PortError> {
        self.interleaving.turn().await;
        self.journal.note(name);
        self.faults.check(name)
    }

    /// Every delivery waiting in any lane.
    pub fn waiting(&self) -> Vec<Queued> {
        lock(&self.lanes)
            .values()
            .flat_map(|state| state.queued.values().cloned())
            .collect()
    }

    pub fn state(&self, lane: &Lane) -> LaneState {
        lock(&self.lanes).get(lane).cloned().unwrap_or_default()
    }

    /// The delivery at `slot` expires (TTL), delivered or not.
    pub fn expire(&self, lane: &Lane, slot: u64) {
        if let Some(state) = lock(&self.lanes).get_mut(lane) {
            state.queued.remove(&slot);
        }
    }

    /// The answer of a call that was applied, or the error of one whose answer was lost.
    fn answer<T>(&self, name: &str, applied: T) -> Result<T, PortError> {
        self.lost_answers.check(name).map(|()| applied)
    }
}

impl Lanes for MemoryLanes {
    async fn sequence_block(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        count: u64,
    ) -> Result<u64, PortError> {
        self.call("lanes.sequence_block").await?;
        let mut sequences = lock(&self.sequences);
        let next = sequences
            .entry(format!("{workspace_id}#{webhook_id}"))
            .or_insert(1);
        let first = *next;
        *next += count;
        Ok(first)
    }

    async fn append(
        &self,
        lane: &Lane,
        delivery: NewDelivery<'_>,
        now: i64,
        lease_until: i64,
    ) -> Result<Appended, PortError> {
        self.call("lanes.append").await?;
        let mut lanes = lock(&self.lanes);
        let state = lanes.entry(lane.clone()).or_default();
        if state.last_sequence >= delivery.sequence {
            return Ok(Appended::SequenceBehind);
        }
        state.tail += 1;
        state.version += 1;
        state.last_sequence = delivery.sequence;
        let slot = state.tail;
        state.queued.insert(
            slot,
            Queued {
                slot,
                message_id: delivery.message_id.to_owned(),
                sequence: delivery.sequence,
                order: delivery.order,
                body: delivery.body.to_owned(),
            },
        );
        let wake = append_wakes(
            state.lease_until,
            state.leased_by.as_deref(),
            now,
            delivery.message_id,
        );
        if wake {
            state.lease_until = lease_until.max(state.lease_until);
            state.leased_by = Some(delivery.message_id.to_owned());
        }
        drop(lanes);
        self.answer("lanes.append", Appended::At { slot, wake })
    }

    async fn head(&self, lane: &Lane) -> Result<LaneHead, PortError> {
        self.call("lanes.head").await?;
        let lanes = lock(&self.lanes);
        Ok(lanes.get(lane).map_or_else(LaneHead::default, |state| {
            let slot = state.done + 1;
            let next = (state.tail >= slot).then(|| {
                state
                    .queued
                    .get(&slot)
                    .map_or(Head::Expired(slot), |queued| Head::Waiting(queued.clone()))
            });
            let behind = state
                .queued
                .range(slot + 1..=slot + READ_AHEAD as u64)
                .map(|(_, queued)| queued.clone())
                .collect();
            LaneHead {
                next,
                behind,
                attempts: state.attempts,
                next_at: state.next_at,
                version: state.version,
            }
        }))
    }

    async fn arrange(
        &self,
        lane: &Lane,
        head: &LaneHead,
        deliveries: &[Queued],
    ) -> Result<bool, PortError> {
        self.call("lanes.arrange").await?;
        let mut lanes = lock(&self.lanes);
        let Some(state) = lanes.get_mut(lane).filter(|s| s.version == head.version) else {
            return Ok(false);
        };
        for queued in deliveries {
            state.queued.insert(queued.slot, queued.clone());
        }
        state.arranged += 1;
        state.version += 1;
        drop(lanes);
        self.answer("lanes.arrange", true)
    }

    async fn advance(
        &self,
        lane: &Lane,
        slot: u64,
        lease_until: i64,
    ) -> Result<Option<bool>, PortError> {
        self.call("lanes.advance").await?;
        let mut lanes = lock(&self.lanes);
        let Some(state) = lanes.get_mut(lane).filter(|s| s.done + 1 == slot) else {
            return Ok(None);
        };
        state.version += 1;
        state.leased_by = None;
        state.done = slot;
        state.attempts = 0;
        state.next_at = 0;
        let more = state.tail > state.done;
        state.lease_until = if more { lease_until } else { 0 };
        drop(lanes);
        self.answer("lanes.advance", Some(more))
    }

    async fn postpone(&self, lane: &Lane, slot: u64, failed: Failed) -> Result<bool, PortError> {
        self.call("lanes.postpone").await?;
        let mut lanes = lock(&self.lanes);
        let Some(state) = lanes.get_mut(lane).filter(|s| s.done + 1 == slot) else {
            return Ok(false);
        };
        state.version += 1;
        state.leased_by = None;
        state.attempts = failed.attempts;
        state.next_at = failed.next_at;
        state.lease_until = failed.lease_until;
        drop(lanes);
        self.answer("lanes.postpone", true)
    }
}

/// Wakes sent, with their delays, in order.
#[derive(Clone, Default)]
pub struct MemoryWakes {
    pub sent: Arc<Mutex<Vec<(Lane, Duration)>>>,
    /// A replay's pages, as its worker scheduled them.
    pub replays: Arc<Mutex<Vec<ReplayTask>>>,
    pub journal: Journal,
    pub faults: Faults,
    pub interleaving: Interleaving,
}

impl MemoryWakes {
    /// The wakes sent so far, taken.
    pub fn take(&self) -> Vec<(Lane, Duration)> {
        std::mem::take(&mut *lock(&self.sent))
    }
}

impl ReplayTasks for MemoryWakes {
    async fn schedule(&self, task: &ReplayTask) -> Result<(), PortError> {
        self.journal.note("wakes.replay");
        self.faults.check("wakes.replay")?;
        lock(&self.replays).push(task.clone());
        Ok(())
    }
}

impl Wakes for MemoryWakes {
    async fn wake(&self, lane: &Lane, after: Duration) -> Result<(), PortError> {
        self.interleaving.turn().await;
        self.journal.note("wakes.wake");
        self.faults.check("wakes.wake")?;
        lock(&self.sent).push((lane.clone(), after));
        Ok(())
    }
}

/// An attempt as the endpoint received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// The status it was answered with; `None`: no answer came.
    pub answered: Option<u16>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Answers attempts from a script, in order (2xx once it runs out); keeps each
/// attempt, answered or not.
#[derive(Clone, Default)]
pub struct ScriptedSender {
    pub script: Arc<Mutex<std::collections::VecDeque<Result<Reply, PortError>>>>,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub interleaving: Interleaving,
}

impl ScriptedSender {
    /// The next attempts are answered so, in order.
    pub fn answer(&self, replies: impl IntoIterator<Item = Result<Reply, PortError>>) {
        lock(&self.script).extend(replies);
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.received).clone()
    }
}

/// An answer with `status` and no `Retry-After`.
pub fn replied(status: u16) -> Result<Reply, PortError> {
    Ok(Reply {
        status,
        retry_after: None,
    })
}

impl Sender for ScriptedSender {
    async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: &str,
    ) -> Result<Reply, PortError> {
        self.interleaving.turn().await;
        let reply = lock(&self.script)
            .pop_front()
            .unwrap_or_else(|| replied(200));
        lock(&self.received).push(Received {
            url: url.to_owned(),
            headers: headers.to_vec(),
            body: body.to_owned(),
            answered: reply.as_ref().ok().map(|reply| reply.status),
        });
        reply
    }
}
