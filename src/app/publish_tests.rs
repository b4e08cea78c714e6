//! Publishing over an in-memory bus: stream order, refusals resent from the first one,
//! and the first failure that the event source mapping retries from.

use super::*;
use crate::app::fakes::*;
use crate::domain::change::USER_CHANGED;
use crate::domain::{Changes, ProfileField, Stamp};
use std::convert::Infallible;
use std::sync::Arc;

/// The user `id` after setting `plan` at `at`, on top of `before`.
fn user(id: &str, before: Option<&StoredUser>, at: i64, plan: &str) -> StoredUser {
    let mut user = before.cloned().unwrap_or_else(|| StoredUser::new(id));
    let mut changes = Changes::default();
    changes
        .profile
        .insert(ProfileField::Plan, Some(plan.into()));
    user.profile
        .apply(&Stamp::new(at, format!("r{at}")), &changes);
    user.version += 1;
    user
}

/// A user's writes, each as (position, old image, new image).
fn history(id: &str, plans: &[&str]) -> Vec<(String, UserImage, UserImage)> {
    let mut records = Vec::new();
    let mut current: Option<StoredUser> = None;
    for (i, plan) in plans.iter().enumerate() {
        let next = user(id, current.as_ref(), 1_000 + i as i64, plan);
        let old = current.map(|u| ("ws".to_owned(), u));
        records.push((
            format!("{id}-{i}"),
            old,
            Some(("ws".to_owned(), next.clone())),
        ));
        current = Some(next);
    }
    records
}

fn changes(records: &[(String, UserImage, UserImage)]) -> Vec<StreamChange<'_, Infallible>> {
    records
        .iter()
        .map(|(position, old, new)| StreamChange {
            position,
            images: Ok((old.clone(), new.clone())),
        })
        .collect()
}

fn plans(events: &[ChangeEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            e.detail["changed"]["plan"]["new"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn a_users_events_go_out_in_stream_order() {
    let bus = MemoryBus::default();
    let publish = Publish::new(bus.clone());
    let records = history("u1", &["a", "b", "c"]);
    let published = publish.publish(&changes(&records)).await;
    assert_eq!(
        published,
        Published {
            events: 3,
            first_failure: None
        }
    );
    let events = bus.accepted();
    assert_eq!(plans(&events), ["a", "b", "c"]);
    assert!(events.iter().all(|e| e.detail_type == USER_CHANGED));
}

#[tokio::test]
async fn a_partly_refused_call_is_sent_again_from_its_first_refusal_on() {
    let bus = MemoryBus::default();
    bus.refusals.lock().unwrap().push_back(vec![1]);
    let publish = Publish::new(bus.clone());
    let records = history("u1", &["a", "b", "c"]);
    let published = publish.publish(&changes(&records)).await;
    assert_eq!(published.first_failure, None);
    let calls = bus.calls.lock().unwrap().clone();
    assert_eq!(
        plans(&calls[0]),
        ["a", "c"],
        "the bus took all but the refused one"
    );
    assert_eq!(
        plans(&calls[1]),
        ["b", "c"],
        "resent from the refusal on, c again after b"
    );
}

#[test]
fn what_a_partly_refused_call_sends_again() {
    assert_eq!(still_waiting(vec![4, 5, 6, 7], &[3, 1]), vec![5, 6, 7]);
    assert_eq!(still_waiting(vec![4, 5, 6, 7], &[]), Vec::<usize>::new());
    assert_eq!(still_waiting(vec![9], &[0]), vec![9]);
}

#[tokio::test]
async fn events_the_bus_keeps_refusing_make_their_record_the_first_failure() {
    let bus = MemoryBus::default();
    bus.faults.fail("bus.put", unavailable(), PUT_ATTEMPTS);
    // The waits between tries, as the publisher asks for them (none taken here).
    let waits = Arc::new(std::sync::Mutex::new(Vec::new()));
    let asked = Arc::clone(&waits);
    let backoff: Timer = Arc::new(move |wait| {
        asked.lock().unwrap().push(wait);
        Box::pin(async {})
    });
    let publish = Publish::with_backoff(bus.clone(), backoff);
    let records = history("u1", &["a", "b"]);
    let published = publish.publish(&changes(&records)).await;
    assert_eq!(published.first_failure, Some("u1-0"));
    assert!(bus.accepted().is_empty());
    let ms = |ms| std::time::Duration::from_millis(ms);
    assert_eq!(
        *waits.lock().unwrap(),
        [ms(100), ms(200)],
        "backoff doubles"
    );
}

#[tokio::test]
async fn a_record_that_cannot_be_read_stops_the_batch_there() {
    let bus = MemoryBus::default();
    let publish = Publish::new(bus.clone());
    let records = history("u1", &["a", "b", "c"]);
    let mut batch: Vec<StreamChange<'_, &str>> = records
        .iter()
        .map(|(position, old, new)| StreamChange {
            position,
            images: Ok((old.clone(), new.clone())),
        })
        .collect();
    batch[1].images = Err("the new image is not a user item");
    let published = publish.publish(&batch).await;
    assert_eq!(
        published,
        Published {
            events: 1,
            first_failure: Some("u1-1")
        }
    );
    assert_eq!(plans(&bus.accepted()), ["a"]);
}

#[tokio::test]
async fn a_write_no_read_would_notice_publishes_nothing() {
    let bus = MemoryBus::default();
    let publish = Publish::new(bus.clone());
    let first = user("u1", None, 1_000, "pro");
    // Same value again, later: stamps move, a read shows the same.
    let same = user("u1", Some(&first), 2_000, "pro");
    let records = vec![(
        "p".to_owned(),
        Some(("ws".to_owned(), first)),
        Some(("ws".to_owned(), same)),
    )];
    let published = publish.publish(&changes(&records)).await;
    assert_eq!(
        published,
        Published {
            events: 0,
            first_failure: None
        }
    );
    assert!(bus.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn many_users_are_published_in_calls_of_at_most_ten() {
    let bus = MemoryBus::default();
    let publish = Publish::new(bus.clone());
    let records: Vec<_> = (0..25)
        .flat_map(|i| history(&format!("u{i}"), &["a", "b"]))
        .collect();
    let published = publish.publish(&changes(&records)).await;
    assert_eq!(published.events, 50);
    let calls = bus.calls.lock().unwrap().clone();
    assert!(calls
        .iter()
        .all(|call| call.len() <= MemoryBus::MAX_ENTRIES_PER_CALL));
    // Each user's events in order, whatever lane it went to.
    for i in 0..25 {
        let id = format!("u{i}");
        let mine: Vec<ChangeEvent> = bus
            .accepted()
            .into_iter()
            .filter(|e| e.detail["external_user_id"] == id.as_str())
            .collect();
        assert_eq!(plans(&mine), ["a", "b"], "{id}");
    }
}
