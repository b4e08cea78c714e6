//! The consumer's flow over an in-memory users table: one read and one write per user,
//! conflicts, refusals that fall back to one message at a time, partial failures.

use super::*;
use crate::app::fakes::*;
use crate::domain::{Changes, ProfileField, Stamp, MESSAGE_VERSION};
use serde_json::json;

const T0: i64 = 1_800_000_000_000;

fn message(user: &str, at: i64, traits: &[(&str, serde_json::Value)]) -> UpsertMessage {
    let mut changes = Changes::default();
    for (name, value) in traits {
        let value = (!value.is_null()).then(|| value.clone());
        match ProfileField::from_trait_name(name) {
            Some(field) => {
                changes
                    .profile
                    .insert(field, value.map(|v| v.as_str().unwrap().to_owned()));
            }
            None => {
                changes.traits.insert((*name).to_owned(), value);
            }
        }
    }
    UpsertMessage {
        version: MESSAGE_VERSION,
        workspace_id: "ws".into(),
        external_user_id: user.into(),
        stamp: Stamp::new(at, format!("r{at}")),
        changes,
        erase: false,
    }
}

fn users() -> (MemoryUsers, Apply<MemoryUsers>) {
    let users = MemoryUsers::default();
    (users.clone(), Apply::new(users))
}

/// Two users, one message each, both setting `plan` to `pro`.
fn two_users_on_pro() -> Vec<(&'static str, UpsertMessage)> {
    vec![
        ("m1", message("u1", T0, &[("plan", json!("pro"))])),
        ("m2", message("u2", T0, &[("plan", json!("pro"))])),
    ]
}

fn plan_of(users: &MemoryUsers, user: &str) -> Option<String> {
    users
        .user("ws", user)?
        .profile
        .profile
        .get(&ProfileField::Plan)
        .cloned()
}

#[tokio::test]
async fn a_users_messages_apply_in_stamp_order_with_one_read_and_one_write() {
    let (users, apply) = users();
    let messages = vec![
        ("m2", message("u1", T0 + 2, &[("plan", json!("pro"))])),
        ("m1", message("u1", T0 + 1, &[("plan", json!("trial"))])),
        ("m3", message("u2", T0 + 3, &[("plan", json!("free"))])),
    ];
    let applied = apply.apply(messages, T0 + 10).await;
    assert!(applied.failed.is_empty());
    assert_eq!(applied.users, 2);
    assert_eq!(applied.lag_ms.len(), 3);
    assert_eq!(plan_of(&users, "u1").as_deref(), Some("pro"));
    assert_eq!(
        users.journal.calls(),
        ["users.get_many", "users.put", "users.put"],
        "one read for the batch, one write per user"
    );
}

#[tokio::test]
async fn a_redelivered_batch_changes_nothing_and_writes_nothing() {
    let (users, apply) = users();
    let batch = || vec![("m1", message("u1", T0, &[("plan", json!("pro"))]))];
    apply.apply(batch(), T0).await;
    let stored = users.user("ws", "u1");
    let again = apply.apply(batch(), T0 + 5).await;
    assert!(again.failed.is_empty());
    assert_eq!(users.user("ws", "u1"), stored);
    assert_eq!(
        users.journal.calls(),
        ["users.get_many", "users.put", "users.get_many"]
    );
}

#[tokio::test]
async fn an_older_message_delivered_later_never_overwrites_a_newer_one() {
    let (users, apply) = users();
    apply
        .apply(
            vec![("m2", message("u1", T0 + 2, &[("plan", json!("pro"))]))],
            T0,
        )
        .await;
    apply
        .apply(
            vec![("m1", message("u1", T0 + 1, &[("plan", json!("trial"))]))],
            T0,
        )
        .await;
    assert_eq!(plan_of(&users, "u1").as_deref(), Some("pro"));
}

#[tokio::test]
async fn a_write_conflict_rereads_the_user_and_tries_again() {
    let (users, apply) = users();
    users.contend.lock().unwrap().insert("u1".into(), 2);
    let applied = apply
        .apply(
            vec![("m1", message("u1", T0, &[("plan", json!("pro"))]))],
            T0,
        )
        .await;
    assert!(applied.failed.is_empty());
    assert_eq!(plan_of(&users, "u1").as_deref(), Some("pro"));
    assert_eq!(
        users.journal.calls(),
        [
            "users.get_many",
            "users.put",
            "users.get",
            "users.put",
            "users.get",
            "users.put"
        ]
    );
}

#[tokio::test]
async fn a_user_that_keeps_changing_under_us_fails_only_its_records() {
    let (users, apply) = users();
    users
        .contend
        .lock()
        .unwrap()
        .insert("u1".into(), usize::MAX);
    let applied = apply.apply(two_users_on_pro(), T0).await;
    assert_eq!(applied.failed.iter().collect::<Vec<_>>(), ["m1"]);
    assert_eq!(plan_of(&users, "u2").as_deref(), Some("pro"));
    assert_eq!(applied.lag_ms.len(), 1, "lag of applied messages only");
}

#[tokio::test]
async fn a_write_the_table_refuses_falls_back_to_one_message_at_a_time() {
    let (users, apply) = users();
    // As DynamoDB refuses an item it cannot store: here, any holding the trait `poison`.
    *users.refuse_put.lock().unwrap() = Some(|user: &crate::app::ports::StoredUser| {
        user.profile.traits.contains_key("poison").then(refused)
    });
    let applied = apply
        .apply(
            vec![
                ("m1", message("u1", T0 + 1, &[("plan", json!("pro"))])),
                ("m2", message("u1", T0 + 2, &[("poison", json!(1))])),
                ("m3", message("u1", T0 + 3, &[("name", json!("Jane"))])),
            ],
            T0,
        )
        .await;
    assert_eq!(
        applied.failed.iter().collect::<Vec<_>>(),
        ["m2"],
        "only the message that cannot be applied"
    );
    let stored = users.user("ws", "u1").unwrap().profile;
    assert_eq!(
        stored.profile.get(&ProfileField::Plan).map(String::as_str),
        Some("pro")
    );
    assert_eq!(
        stored.profile.get(&ProfileField::Name).map(String::as_str),
        Some("Jane")
    );
    assert!(!stored.traits.contains_key("poison"));
}

#[tokio::test]
async fn a_transient_failure_of_a_users_write_fails_its_records_for_a_retry() {
    let (users, apply) = users();
    users.faults.fail("users.put", unavailable(), 1);
    let applied = apply
        .apply(
            vec![
                ("m1", message("u1", T0 + 1, &[("plan", json!("pro"))])),
                ("m2", message("u1", T0 + 2, &[("name", json!("Jane"))])),
            ],
            T0,
        )
        .await;
    assert_eq!(applied.failed.len(), 2, "retried whole, not one by one");
    assert_eq!(users.user("ws", "u1"), None);
}

#[tokio::test]
async fn a_failed_read_fails_every_record_of_the_round() {
    let (users, apply) = users();
    users.faults.fail("users.get_many", unavailable(), 1);
    let applied = apply.apply(two_users_on_pro(), T0).await;
    assert_eq!(applied.failed.len(), 2);
    assert_eq!(users.journal.calls(), ["users.get_many"]);
}

#[tokio::test]
async fn a_packed_record_fails_when_any_of_its_upserts_fails_and_its_retry_changes_nothing_else() {
    let (users, apply) = users();
    *users.refuse_put.lock().unwrap() =
        Some(|user: &crate::app::ports::StoredUser| (user.external_user_id == "u2").then(refused));
    let packed = || {
        vec![
            ("batch", message("u1", T0, &[("plan", json!("pro"))])),
            ("batch", message("u2", T0, &[("plan", json!("pro"))])),
        ]
    };
    let applied = apply.apply(packed(), T0).await;
    assert_eq!(applied.failed.iter().collect::<Vec<_>>(), ["batch"]);
    let u1 = users.user("ws", "u1");
    apply.apply(packed(), T0 + 10).await;
    assert_eq!(
        users.user("ws", "u1"),
        u1,
        "the retry re-applies u1's upsert: no change"
    );
}

#[tokio::test]
async fn budget_refusals_are_counted_once_and_never_fail_the_message() {
    let (_, apply) = users();
    let big = json!("x".repeat(200 * 1024));
    let batch = || {
        vec![
            ("m1", message("u1", T0 + 1, &[("a", big.clone())])),
            ("m2", message("u1", T0 + 2, &[("b", big.clone())])),
        ]
    };
    let applied = apply.apply(batch(), T0).await;
    assert!(applied.failed.is_empty());
    assert_eq!(applied.rejected_traits, 1);
    assert_eq!(
        apply.apply(batch(), T0).await.rejected_traits,
        0,
        "a redelivery adds none"
    );
}
