//! The accept flow over in-memory ports: the order that holds under Lambda's freeze,
//! what a refusal gives back, and batches that are partly enqueued.

use super::*;
use crate::app::fakes::*;
use crate::contract::{
    parse_batch, parse_segment_batch, parse_upsert, MAX_BATCH_BODY_BYTES, MAX_BATCH_USERS,
    MAX_BODY_BYTES,
};
use crate::domain::idempotency::KeyRecord;
use crate::domain::idempotency::LOCK_MS;
use serde_json::{json, Value};

const T0: i64 = 1_800_000_000_000;
const NOW: i64 = T0;
const WORKSPACE: &str = "ws";

struct World {
    keys: MemoryKeys,
    queue: MemoryQueue,
    journal: Journal,
    accept: Accept<MemoryKeys, MemoryQueue, Arc<MemoryCounters>>,
}

fn world() -> World {
    let journal = Journal::default();
    let keys = MemoryKeys {
        journal: journal.clone(),
        ..MemoryKeys::default()
    };
    let queue = MemoryQueue {
        journal: journal.clone(),
        ..MemoryQueue::default()
    };
    let limiter = Arc::new(RateLimiter::new(Arc::new(MemoryCounters::default())));
    World {
        accept: Accept::new(keys.clone(), queue.clone(), limiter),
        keys,
        queue,
        journal,
    }
}

fn caller(rate: u32) -> Caller {
    Caller {
        workspace_id: WORKSPACE.into(),
        rate,
    }
}

fn stamp(at: i64, request_id: &str) -> Stamp {
    Stamp::new(at, request_id)
}

fn upsert(body: Value, key: Option<&str>) -> Result<Checked, RequestError> {
    Ok(Checked {
        write: Write::Upsert(parse_upsert(body.to_string().as_bytes(), NOW).unwrap()),
        idempotency_key: key.map(str::to_owned),
    })
}

fn plan(name: &str) -> Value {
    json!({"external_user_id": "u1", "traits": {"plan": name}})
}

impl World {
    async fn send(
        &self,
        body: Value,
        key: Option<&str>,
        at: i64,
        id: &str,
    ) -> Result<Accepted, AppError> {
        self.accept
            .accept(&caller(100), upsert(body, key), stamp(at, id))
            .await
    }

    /// A key recorded by a request `r0` at `T0` that died before enqueueing.
    fn abandoned(&self, body: &Value) {
        let hash = parse_upsert(body.to_string().as_bytes(), NOW)
            .unwrap()
            .body_hash;
        let record = KeyRecord::claimed(&hash, &stamp(T0, "r0"));
        self.keys
            .records
            .lock()
            .unwrap()
            .insert(format!("{WORKSPACE}#k"), record);
    }
}

fn one(replayed: bool) -> Accepted {
    Accepted::One { replayed }
}

#[tokio::test]
async fn the_key_is_marked_done_after_the_send_and_before_the_answer() {
    let w = world();
    let accepted = w.send(plan("pro"), Some("k"), T0, "r1").await.unwrap();
    assert_eq!(accepted, one(false));
    assert_eq!(
        w.journal.calls(),
        ["keys.claim", "queue.send", "keys.complete"],
        "Lambda freezes the instance at the answer: the mark must come before it"
    );
    assert!(w.keys.record(WORKSPACE, "k").unwrap().done);
    let sent = w.queue.messages();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].stamp, stamp(T0, "r1"));
    assert!(!sent[0].erase);
}

#[tokio::test]
async fn the_largest_upserts_the_contract_takes_each_fit_one_queue_body() {
    let w = world();
    // A single upsert at the body limit, of characters JSON writes longest.
    let filler = |room: usize| "\u{1}".repeat(room / 6);
    let body = json!({"external_user_id": "u1", "traits": {"note": filler(MAX_BODY_BYTES - 100)}});
    assert!(body.to_string().len() <= MAX_BODY_BYTES);
    w.send(body, None, T0, "r1").await.unwrap();
    // A full batch: a thousand users at the batch's limit.
    let per_user = MAX_BATCH_BODY_BYTES / MAX_BATCH_USERS - 100;
    let users = (0..MAX_BATCH_USERS)
        .map(|i| json!({"external_user_id": format!("u{i}"), "traits": {"note": filler(per_user)}}))
        .collect();
    let accepted = w
        .accept
        .accept(&caller(100_000), batch(users, None), stamp(T0, "r2"))
        .await
        .unwrap();
    assert!(matches!(accepted, Accepted::Batch { .. }), "{accepted:?}");
    assert_eq!(w.queue.messages().len(), 1 + MAX_BATCH_USERS);
    let largest = w
        .queue
        .messages()
        .iter()
        .map(|m| serde_json::to_vec(m).unwrap().len())
        .max();
    assert!(largest.unwrap() * 4 < SQS_BODY_BYTES, "{largest:?}");
}

#[tokio::test]
async fn a_message_too_long_for_one_queue_body_is_refused_as_sqs_refuses_it() {
    let queue = MemoryQueue::default();
    let changes = crate::domain::Changes::default();
    let long_id = "x".repeat(SQS_BODY_BYTES);
    let message = crate::domain::UpsertMessage::new("ws", long_id, stamp(T0, "r1"), changes, true);
    assert!(matches!(
        queue.send(&message).await,
        Err(PortError::Refused(_))
    ));
    let unsent = queue.send_all(std::slice::from_ref(&message)).await;
    assert_eq!(unsent.messages, [0]);
    assert!(queue.messages().is_empty());
}

#[tokio::test]
async fn a_retry_of_an_answered_request_replays_and_sends_nothing_again() {
    let w = world();
    w.send(plan("pro"), Some("k"), T0, "r1").await.unwrap();
    // Another instance, an hour later, the same body with members reordered.
    let body = json!({"traits": {"plan": "pro"}, "external_user_id": "u1"});
    let again = w.send(body, Some("k"), T0 + 3_600_000, "r2").await.unwrap();
    assert_eq!(again, one(true));
    assert_eq!(w.queue.messages().len(), 1);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_refused_as_reused() {
    let w = world();
    w.send(plan("pro"), Some("k"), T0, "r1").await.unwrap();
    let other = w.send(plan("free"), Some("k"), T0 + 10, "r2").await;
    assert!(
        matches!(other, Err(AppError::IdempotencyKeyReused)),
        "{other:?}"
    );
    assert_eq!(w.queue.messages().len(), 1);
}

#[tokio::test]
async fn a_key_held_by_a_live_request_is_in_use() {
    let w = world();
    w.abandoned(&plan("pro"));
    let during = w.send(plan("pro"), Some("k"), T0 + LOCK_MS - 1, "r1").await;
    assert!(
        matches!(during, Err(AppError::IdempotencyKeyInUse)),
        "{during:?}"
    );
    assert!(w.queue.messages().is_empty());
}

#[tokio::test]
async fn an_abandoned_key_is_taken_over_and_sent_with_its_original_stamp() {
    let w = world();
    w.abandoned(&plan("pro"));
    let after_lock = w.send(plan("pro"), Some("k"), T0 + LOCK_MS, "r1").await;
    assert_eq!(after_lock.unwrap(), one(false));
    // A duplicate of anything the dead request sent: the merge ignores it.
    assert_eq!(w.queue.messages()[0].stamp, stamp(T0, "r0"));
    assert!(w.keys.record(WORKSPACE, "k").unwrap().done);
}

#[tokio::test]
async fn a_rate_limited_request_gives_its_key_back() {
    let w = world();
    let rate_one = caller(1);
    let first = w
        .accept
        .accept(&rate_one, upsert(plan("a"), Some("k1")), stamp(T0, "r1"))
        .await;
    assert_eq!(first.unwrap(), one(false));
    let limited = w
        .accept
        .accept(
            &rate_one,
            upsert(plan("b"), Some("k2")),
            stamp(T0 + 1, "r2"),
        )
        .await;
    assert!(
        matches!(
            limited,
            Err(AppError::RateLimited {
                rate: 1,
                retry_after_secs: 1
            })
        ),
        "{limited:?}"
    );
    assert_eq!(
        w.keys.record(WORKSPACE, "k2"),
        None,
        "a 429 leaves no trace of its key"
    );
    assert_eq!(w.queue.messages().len(), 1);
    // Its retry, a second later, is processed, not replayed.
    let retried = w
        .accept
        .accept(
            &rate_one,
            upsert(plan("b"), Some("k2")),
            stamp(T0 + 1_000, "r3"),
        )
        .await;
    assert_eq!(retried.unwrap(), one(false));
    assert_eq!(w.queue.messages().len(), 2);
}

#[tokio::test]
async fn a_rate_limited_takeover_reopens_the_key_with_its_original_stamp() {
    let w = world();
    let rate_one = caller(1);
    w.accept
        .accept(
            &rate_one,
            upsert(plan("x"), None),
            stamp(T0 + LOCK_MS, "r1"),
        )
        .await
        .unwrap();
    w.abandoned(&plan("pro"));
    let limited = w
        .accept
        .accept(
            &rate_one,
            upsert(plan("pro"), Some("k")),
            stamp(T0 + LOCK_MS + 1, "r2"),
        )
        .await;
    assert!(
        matches!(limited, Err(AppError::RateLimited { .. })),
        "{limited:?}"
    );
    let record = w.keys.record(WORKSPACE, "k").unwrap();
    assert_eq!(
        (record.stamp, record.lock_until, record.done),
        (stamp(T0, "r0"), 0, false)
    );
    // The retry takes it over at once, without waiting out a lock.
    let retried = w
        .accept
        .accept(
            &rate_one,
            upsert(plan("pro"), Some("k")),
            stamp(T0 + LOCK_MS + 1_000, "r3"),
        )
        .await;
    assert_eq!(retried.unwrap(), one(false));
    assert_eq!(w.queue.messages()[1].stamp, stamp(T0, "r0"));
}

#[tokio::test]
async fn a_failed_send_releases_the_key_and_answers_unavailable() {
    let w = world();
    w.queue.faults.fail("queue.send", unavailable(), 1);
    let failed = w.send(plan("pro"), Some("k"), T0, "r1").await;
    assert!(
        matches!(failed, Err(AppError::Port(PortError::Unavailable(_)))),
        "{failed:?}"
    );
    assert_eq!(
        w.journal.calls(),
        ["keys.claim", "queue.send", "keys.release"]
    );
    assert_eq!(w.keys.record(WORKSPACE, "k"), None);
    assert_eq!(
        w.send(plan("pro"), Some("k"), T0 + 5, "r2").await.unwrap(),
        one(false)
    );
    assert_eq!(w.queue.messages().len(), 1);
}

#[tokio::test]
async fn a_failed_send_whose_key_cannot_be_given_back_still_answers_unavailable() {
    // The release fails as a refusal would (a 500 if it were the answer): the send's
    // 503 stands, and the key frees itself when its lock runs out.
    let w = world();
    w.queue.faults.fail("queue.send", unavailable(), 1);
    w.keys.faults.fail("keys.release", refused(), 1);
    let failed = w.send(plan("pro"), Some("k"), T0, "r1").await;
    assert!(
        matches!(failed, Err(AppError::Port(PortError::Unavailable(_)))),
        "{failed:?}"
    );
    let meanwhile = w.send(plan("pro"), Some("k"), T0 + 5, "r2").await;
    assert!(
        matches!(meanwhile, Err(AppError::IdempotencyKeyInUse)),
        "{meanwhile:?}"
    );
    let later = w.send(plan("pro"), Some("k"), T0 + LOCK_MS + 5, "r3").await;
    assert_eq!(later.unwrap(), one(false));
    assert_eq!(w.queue.messages().len(), 1);
}

#[tokio::test]
async fn a_takeover_another_request_wins_first_is_in_flight_and_sends_nothing() {
    let w = world();
    w.abandoned(&plan("pro"));
    *w.keys.outrun_takeovers.lock().unwrap() = 1;
    let outrun = w.send(plan("pro"), Some("k"), T0 + LOCK_MS, "r1").await;
    assert!(
        matches!(outrun, Err(AppError::IdempotencyKeyInUse)),
        "{outrun:?}"
    );
    assert!(w.queue.messages().is_empty());
    // The winner's lock runs out too: the next retry takes over, with the first stamp.
    let later = w
        .send(plan("pro"), Some("k"), T0 + 2 * LOCK_MS + 1, "r2")
        .await;
    assert_eq!(later.unwrap(), one(false));
    assert_eq!(w.queue.messages()[0].stamp, stamp(T0, "r0"));
}

#[tokio::test]
async fn a_failed_send_after_a_takeover_reopens_the_key_and_keeps_the_original_stamp() {
    let w = world();
    w.abandoned(&plan("pro"));
    w.queue.faults.fail("queue.send", unavailable(), 1);
    let failed = w.send(plan("pro"), Some("k"), T0 + LOCK_MS, "r1").await;
    assert!(
        matches!(failed, Err(AppError::Port(PortError::Unavailable(_)))),
        "{failed:?}"
    );
    let record = w.keys.record(WORKSPACE, "k").unwrap();
    assert_eq!((record.stamp, record.lock_until), (stamp(T0, "r0"), 0));
    w.send(plan("pro"), Some("k"), T0 + LOCK_MS + 5, "r2")
        .await
        .unwrap();
    assert_eq!(w.queue.messages()[0].stamp, stamp(T0, "r0"));
}

#[tokio::test]
async fn a_mark_that_fails_still_answers_accepted() {
    let w = world();
    w.keys.faults.fail("keys.complete", unavailable(), 1);
    assert_eq!(
        w.send(plan("pro"), Some("k"), T0, "r1").await.unwrap(),
        one(false)
    );
    assert_eq!(w.queue.messages().len(), 1);
    assert!(!w.keys.record(WORKSPACE, "k").unwrap().done);
}

#[tokio::test]
async fn a_claim_that_fails_sends_nothing() {
    let w = world();
    w.keys.faults.fail("keys.claim", unavailable(), 1);
    let failed = w.send(plan("pro"), Some("k"), T0, "r1").await;
    assert!(
        matches!(failed, Err(AppError::Port(PortError::Unavailable(_)))),
        "{failed:?}"
    );
    assert!(w.queue.messages().is_empty());
}

#[tokio::test]
async fn a_request_refused_by_its_checks_is_answered_after_the_rate_check() {
    let w = world();
    let rate_one = caller(1);
    let refused = || Err(RequestError::UnsupportedMediaType);
    let first = w.accept.accept(&rate_one, refused(), stamp(T0, "r1")).await;
    assert!(
        matches!(
            first,
            Err(AppError::Request(RequestError::UnsupportedMediaType))
        ),
        "{first:?}"
    );
    let second = w
        .accept
        .accept(&rate_one, refused(), stamp(T0 + 1, "r2"))
        .await;
    assert!(
        matches!(second, Err(AppError::RateLimited { .. })),
        "{second:?}"
    );
    assert!(w.journal.calls().is_empty(), "no claim, no send");
}

#[tokio::test]
async fn an_erasure_travels_as_an_erase_message_under_its_own_hash() {
    let w = world();
    let erase = Ok(Checked {
        write: Write::Erase {
            external_user_id: "u1".into(),
        },
        idempotency_key: Some("k".into()),
    });
    let accepted = w.accept.accept(&caller(100), erase, stamp(T0, "r1")).await;
    assert_eq!(accepted.unwrap(), one(false));
    let sent = w.queue.messages();
    assert!(sent[0].erase && sent[0].changes == Changes::default());
    assert_eq!(
        w.keys.record(WORKSPACE, "k").unwrap().body_hash,
        erase_hash("u1")
    );
}

fn batch(users: Vec<Value>, key: Option<&str>) -> Result<Checked, RequestError> {
    let body = json!({ "users": users }).to_string();
    Ok(Checked {
        write: Write::Batch(parse_batch(body.as_bytes(), NOW).unwrap()),
        idempotency_key: key.map(str::to_owned),
    })
}

fn users(count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| json!({"external_user_id": format!("u{i}")}))
        .collect()
}

#[tokio::test]
async fn batch_entries_the_queue_refuses_are_listed_and_replayed_as_unavailable() {
    let w = world();
    let mut entries = users(4);
    entries[1] = json!({"external_user_id": ""});
    // Messages are the valid entries 0, 2, 3: the queue refuses the second, entry 2.
    w.queue.refuse.lock().unwrap().push(1);
    let accepted = w
        .accept
        .accept(
            &caller(100),
            batch(entries.clone(), Some("k")),
            stamp(T0, "r1"),
        )
        .await
        .unwrap();
    let Accepted::Batch {
        replayed,
        accepted: count,
        rejected,
    } = &accepted
    else {
        panic!("{accepted:?}")
    };
    assert_eq!((*replayed, *count), (false, 2));
    let listed: Vec<(usize, ErrorCode)> = rejected
        .iter()
        .map(|r| (r.index, r.errors[0].code))
        .collect();
    assert_eq!(listed, [(1, ErrorCode::Empty), (2, ErrorCode::Unavailable)]);
    assert_eq!(w.keys.record(WORKSPACE, "k").unwrap().unsent, [2]);
    let again = w
        .accept
        .accept(
            &caller(100),
            batch(entries, Some("k")),
            stamp(T0 + 50, "r2"),
        )
        .await
        .unwrap();
    let Accepted::Batch {
        replayed: true,
        accepted: 2,
        rejected: replayed_rejected,
    } = again
    else {
        panic!("{again:?}")
    };
    assert_eq!(&replayed_rejected, rejected);
    assert_eq!(w.queue.messages().len(), 2);
}

#[tokio::test]
async fn later_entries_of_a_batch_sort_after_earlier_ones() {
    let w = world();
    let entries = vec![plan("first"), plan("second")];
    w.accept
        .accept(&caller(100), batch(entries, None), stamp(T0, "r1"))
        .await
        .unwrap();
    let sent = w.queue.messages();
    assert_eq!(sent[0].stamp, stamp(T0, "r1.00000"));
    assert_eq!(sent[1].stamp, stamp(T0, "r1.00001"));
    assert!(sent[0].stamp < sent[1].stamp);
}

#[tokio::test]
async fn entry_ten_thousand_sorts_after_entry_two_thousand() {
    // A Segment batch can pass 10,000 messages; "10000" must not sort before "2000".
    let w = world();
    let messages: Vec<Value> = (0..10_001)
        .map(|i| json!({"type": "identify", "userId": "u1", "traits": {"plan": format!("p{i}")}}))
        .collect();
    let body = json!({ "batch": messages }).to_string();
    let segment = parse_segment_batch(body.as_bytes(), NOW).unwrap();
    let checked = Ok(Checked {
        write: Write::Batch(segment.batch),
        idempotency_key: None,
    });
    w.accept
        .accept(&caller(1_000), checked, stamp(T0, "r1"))
        .await
        .unwrap();
    let sent = w.queue.messages();
    assert_eq!(sent.len(), 10_001);
    assert!(sent[2_000].stamp < sent[10_000].stamp);
    assert!(sent.windows(2).all(|pair| pair[0].stamp < pair[1].stamp));
}

#[tokio::test]
async fn a_batch_nothing_of_which_is_enqueued_is_unavailable_and_gives_its_key_back() {
    let w = world();
    w.queue.faults.fail("queue.send_all", refused(), 1);
    let failed = w
        .accept
        .accept(&caller(100), batch(users(3), Some("k")), stamp(T0, "r1"))
        .await;
    assert!(
        matches!(failed, Err(AppError::Port(PortError::Unavailable(_)))),
        "{failed:?}"
    );
    assert_eq!(w.keys.record(WORKSPACE, "k"), None);
}

#[tokio::test]
async fn a_batch_counts_one_request_per_started_hundred_users() {
    let w = world();
    let rate_two = caller(2);
    let accepted = w
        .accept
        .accept(&rate_two, batch(users(101), None), stamp(T0, "r1"))
        .await;
    assert!(
        matches!(accepted, Ok(Accepted::Batch { accepted: 101, .. })),
        "{accepted:?}"
    );
    let next = w
        .accept
        .accept(&rate_two, upsert(plan("x"), None), stamp(T0 + 1, "r2"))
        .await;
    assert!(
        matches!(next, Err(AppError::RateLimited { .. })),
        "{next:?}"
    );
}

#[tokio::test]
async fn a_batch_with_no_valid_entry_enqueues_nothing_but_counts_against_the_rate() {
    let w = world();
    let invalid = vec![json!({"external_user_id": ""})];
    let accepted = w
        .accept
        .accept(
            &caller(1),
            batch(invalid.clone(), Some("k")),
            stamp(T0, "r1"),
        )
        .await;
    assert!(
        matches!(accepted, Ok(Accepted::Batch { accepted: 0, .. })),
        "{accepted:?}"
    );
    assert!(w.journal.calls().is_empty());
    let next = w
        .accept
        .accept(&caller(1), batch(invalid, Some("k")), stamp(T0 + 1, "r2"))
        .await;
    assert!(
        matches!(next, Err(AppError::RateLimited { .. })),
        "{next:?}"
    );
}
