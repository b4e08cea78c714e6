//! Bus calls shared by the carry-outs in flight. Each workspace of a stream batch is
//! settled apart, so without this each would make its own `PutEvents` calls: a batch
//! naming 18 workspaces, 18 calls where one takes 10 entries, and the account's call
//! rate is shared by every tenant (`docs/scale.md`, item 13). A carry-out's events
//! leave in a call when it is full, when no other carry-out is on its way to the bus,
//! or after [`SHARED_CALL_LINGER`] at most: no one's events wait long for another's.

use super::*;
use crate::app::Timer;
use futures::channel::oneshot;
use futures::future::{select, Either};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How long a carry-out's events wait for others' to share their call, at most (a
/// DynamoDB call takes ~5 ms: workspaces settled side by side reach the bus within a
/// few of each other).
pub const SHARED_CALL_LINGER: Duration = Duration::from_millis(10);

/// Which of a carry-out's events the bus refused, by their order.
type Refused = Vec<bool>;

/// A carry-out's events waiting for their call, and where its answer goes.
struct Waiting {
    /// Shared with the carry-out, which puts them itself if their call is dropped.
    events: Arc<[ChangeEvent]>,
    answer: oneshot::Sender<Refused>,
}

#[derive(Default)]
struct Gathering {
    /// Carry-outs started and not yet at the bus: each may add to the next call.
    coming: usize,
    waiting: Vec<Waiting>,
    entries: usize,
}

pub(super) struct SharedCalls {
    gathering: Mutex<Gathering>,
    linger: Timer,
}

/// A carry-out on its way to the bus. Dropped (it put its events, or its work was
/// dropped), it no longer holds anyone's call.
pub(super) struct Coming<'a>(&'a SharedCalls);

impl Drop for Coming<'_> {
    fn drop(&mut self) {
        self.0.gathering().coming -= 1;
    }
}

impl SharedCalls {
    pub(super) fn new(linger: Timer) -> Self {
        Self {
            gathering: Mutex::default(),
            linger,
        }
    }

    /// Counts a carry-out on its way to the bus until the guard is dropped.
    pub(super) fn coming(&self) -> Coming<'_> {
        self.gathering().coming += 1;
        Coming(self)
    }

    /// Puts a carry-out's events in calls shared with the others in flight; which were
    /// refused. A call that another carry-out was making for them, dropped with its
    /// work, is made again here: the events carry their ids, so a repeat is dropped by
    /// subscribers.
    pub(super) async fn put<E: Bus>(
        &self,
        bus: &E,
        coming: Coming<'_>,
        events: Vec<ChangeEvent>,
    ) -> Refused {
        drop(coming);
        if events.is_empty() {
            return Vec::new();
        }
        let own: Arc<[ChangeEvent]> = events.into();
        let (answer, mut answered) = oneshot::channel();
        let leave_now = {
            let mut gathering = self.gathering();
            gathering.entries += own.len();
            gathering.waiting.push(Waiting {
                events: Arc::clone(&own),
                answer,
            });
            gathering.entries >= E::MAX_ENTRIES_PER_CALL || gathering.coming == 0
        };
        if !leave_now {
            let linger = (self.linger)(SHARED_CALL_LINGER);
            if let Either::Left((answer, _)) = select(&mut answered, linger).await {
                return self.own_or_again(bus, answer, &own).await;
            }
        }
        self.flush(bus).await;
        let answer = answered.await;
        self.own_or_again(bus, answer, &own).await
    }

    async fn own_or_again<E: Bus>(
        &self,
        bus: &E,
        answer: Result<Refused, oneshot::Canceled>,
        own: &[ChangeEvent],
    ) -> Refused {
        match answer {
            Ok(refused) => refused,
            Err(oneshot::Canceled) => put_in_calls(bus, &own.iter().collect::<Vec<_>>()).await,
        }
    }

    /// Puts every waiting carry-out's events, and answers each.
    async fn flush<E: Bus>(&self, bus: &E) {
        let waiting = {
            let mut gathering = self.gathering();
            gathering.entries = 0;
            std::mem::take(&mut gathering.waiting)
        };
        let events: Vec<&ChangeEvent> = waiting.iter().flat_map(|w| w.events.iter()).collect();
        let mut refused = put_in_calls(bus, &events).await.into_iter();
        for Waiting { events, answer } in waiting {
            // A carry-out that stopped waiting has nothing to hear.
            let _ = answer.send(refused.by_ref().take(events.len()).collect());
        }
    }

    fn gathering(&self) -> MutexGuard<'_, Gathering> {
        // Nothing panics while holding it; were it poisoned, its counts still hold.
        self.gathering
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Puts events in as few calls as the bus takes them, several at once; which were
/// refused.
async fn put_in_calls<E: Bus>(bus: &E, events: &[&ChangeEvent]) -> Refused {
    let mut refused = vec![false; events.len()];
    let sizes = events.iter().map(|event| E::entry_size(event));
    // The calls at once: each user's events are in one call or another, and subscribers
    // order a user's moves by `user_version` and `at` (EventBridge keeps no order anyway).
    let groups = call_groups(sizes, E::MAX_ENTRIES_PER_CALL, E::MAX_BYTES_PER_CALL);
    let calls = groups.iter().map(|group| {
        let call: Vec<&ChangeEvent> = group.iter().map(|&i| events[i]).collect();
        async move { (group, bus.put(&call).await) }
    });
    let puts: Vec<_> = stream::iter(calls).buffered(BUS_LANES).collect().await;
    for (group, put) in puts {
        match put {
            Ok(not_put) => not_put
                .into_iter()
                .filter_map(|i| group.get(i))
                .for_each(|&at| refused[at] = true),
            Err(_) => group.iter().for_each(|&i| refused[i] = true),
        }
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::fakes::{unavailable, MemoryBus};
    use futures::FutureExt;
    use serde_json::json;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn events(from: usize, count: usize) -> Vec<ChangeEvent> {
        (from..from + count)
            .map(|n| ChangeEvent {
                source: "vibefollow.audiences",
                detail_type: "Audience Entered",
                detail: json!({ "n": n }),
            })
            .collect()
    }

    /// A linger that never ends: only a full call or no one coming lets events leave.
    fn forever() -> SharedCalls {
        SharedCalls::new(Arc::new(|_| Box::pin(std::future::pending())))
    }

    fn calls(bus: &MemoryBus) -> Vec<usize> {
        bus.calls.lock().unwrap().iter().map(Vec::len).collect()
    }

    #[tokio::test]
    async fn events_leave_at_once_when_no_other_carry_out_is_coming() {
        let (shared, bus) = (forever(), MemoryBus::default());
        let put = shared
            .put(&bus, shared.coming(), events(0, 3))
            .now_or_never();
        assert_eq!(put, Some(vec![false; 3]));
        assert_eq!(calls(&bus), [3]);
    }

    #[tokio::test]
    async fn events_wait_for_a_carry_out_on_its_way_and_leave_in_its_call() {
        let (shared, bus) = (forever(), MemoryBus::default());
        let (first, second) = (shared.coming(), shared.coming());
        let mut waiting = Box::pin(shared.put(&bus, first, events(0, 2)));
        assert!(
            (&mut waiting).now_or_never().is_none(),
            "the second is coming"
        );
        let (put, other) = tokio::join!(waiting, shared.put(&bus, second, events(2, 3)));
        assert_eq!((put, other), (vec![false; 2], vec![false; 3]));
        assert_eq!(calls(&bus), [5], "one call for both");
    }

    #[tokio::test]
    async fn a_full_call_leaves_without_waiting_for_anyone() {
        let (shared, bus) = (forever(), MemoryBus::default());
        let _coming = shared.coming();
        let put = shared
            .put(&bus, shared.coming(), events(0, 12))
            .now_or_never();
        assert_eq!(put, Some(vec![false; 12]));
        assert_eq!(calls(&bus), [10, 2]);
    }

    #[tokio::test]
    async fn events_wait_for_company_no_longer_than_the_linger() {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let heard = asked.clone();
        let shared = SharedCalls::new(Arc::new(move |wait| {
            heard.lock().unwrap().push(wait);
            Box::pin(std::future::ready(()))
        }));
        let bus = MemoryBus::default();
        // Another carry-out is on its way and never arrives (its member lists throttled).
        let _stalled = shared.coming();
        let put = shared.put(&bus, shared.coming(), events(0, 1)).await;
        assert_eq!(put, [false]);
        assert_eq!(calls(&bus), [1]);
        assert_eq!(*asked.lock().unwrap(), [SHARED_CALL_LINGER]);
    }

    #[tokio::test]
    async fn each_carry_out_hears_which_of_its_own_events_were_refused() {
        let (shared, bus) = (forever(), MemoryBus::default());
        bus.refusals.lock().unwrap().push_back(vec![1, 3]);
        let (first, second) = (shared.coming(), shared.coming());
        let (put, other) = tokio::join!(
            shared.put(&bus, first, events(0, 2)),
            shared.put(&bus, second, events(2, 3))
        );
        assert_eq!(put, [false, true]);
        assert_eq!(other, [false, true, false]);
        bus.faults.fail("bus.put", unavailable(), 1);
        let failed = shared.put(&bus, shared.coming(), events(5, 2)).await;
        assert_eq!(failed, [true, true], "a failed call refuses all its events");
    }

    /// A bus whose first call never answers (its carry-out is dropped meanwhile).
    #[derive(Default)]
    struct FirstCallHangs {
        hung: AtomicBool,
        bus: MemoryBus,
    }

    impl EventBus for FirstCallHangs {
        const MAX_ENTRIES_PER_CALL: usize = MemoryBus::MAX_ENTRIES_PER_CALL;
        const MAX_BYTES_PER_CALL: usize = MemoryBus::MAX_BYTES_PER_CALL;

        fn entry_size(event: &ChangeEvent) -> usize {
            MemoryBus::entry_size(event)
        }

        async fn put(&self, events: &[&ChangeEvent]) -> Result<Vec<usize>, PortError> {
            if !self.hung.swap(true, Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            self.bus.put(events).await
        }
    }

    #[tokio::test]
    async fn events_whose_shared_call_was_dropped_with_its_maker_are_put_by_their_own() {
        let (shared, bus) = (forever(), FirstCallHangs::default());
        let (first, second) = (shared.coming(), shared.coming());
        let mut waiting = Box::pin(shared.put(&bus, first, events(0, 2)));
        assert!((&mut waiting).now_or_never().is_none());
        // The second makes the shared call, and its work is dropped mid-call (parked).
        let making = shared.put(&bus, second, events(2, 1)).now_or_never();
        assert!(making.is_none(), "the call hangs");
        assert_eq!(waiting.await, [false, false]);
        assert_eq!(calls(&bus.bus), [2], "the first's events, again, alone");
    }
}
