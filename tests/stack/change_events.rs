//! Change events against the local stack: the users stream → changes function →
//! EventBridge → (a rule of each test's own) → a queue the test reads.

use crate::support::{eventually, message, send_all, user_when, Stack, Subscription, ALL_SCOPES};
use rand::seq::SliceRandom;
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::time::Duration;
use vibefollow_users::aws::sqs::encode;
use vibefollow_users::domain::user_view;
use vibefollow_users::domain::{Changes, ProfileField, UpsertMessage, UserProfile};

/// Envelopes in version order: the order a view applies them in.
fn in_version_order(envelopes: &[Value]) -> Vec<Value> {
    let mut sorted = envelopes.to_vec();
    sorted.sort_by_key(|e| e["detail"]["version"].as_u64());
    sorted
}

fn of_user<'a>(envelopes: &'a [Value], user: &str) -> Vec<&'a Value> {
    envelopes
        .iter()
        .filter(|e| e["detail"]["external_user_id"] == user)
        .collect()
}

/// Replays one user's events in version order into a read view's email + traits.
fn replay(events: &[Value]) -> Option<Map<String, Value>> {
    let mut fields: Option<Map<String, Value>> = None;
    for event in events {
        if event["detail-type"] == "User Deleted" {
            fields = None;
            continue;
        }
        let current = fields.get_or_insert_with(Map::new);
        for (name, change) in event["detail"]["changed"].as_object().unwrap() {
            match change.get("new") {
                Some(new) => current.insert(name.clone(), new.clone()),
                None => current.remove(name),
            };
        }
    }
    fields
}

fn view_fields(view: &Value) -> Map<String, Value> {
    let mut fields = view["traits"].as_object().unwrap().clone();
    if let Some(email) = view.get("email") {
        fields.insert("email".into(), email.clone());
    }
    fields
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn each_changed_field_once_with_old_and_new_and_nothing_for_no_ops_or_replays() {
    let stack = Stack::new().await;
    let subscription = Subscription::new(&stack, "vibefollow.users").await;
    let key = stack.key(&ALL_SCOPES).await;
    let first = json!({"external_user_id": "u1", "email": "ann@acme.io", "traits": {"plan": "free", "color": "red", "n": 1}});
    let sent = stack
        .post_raw(&key, first.to_string(), Some("change-k1"))
        .await;
    assert_eq!(sent.status(), 202);
    user_when(&stack, &key, "u1", |u| u["traits"]["plan"] == "free").await;
    // A replay, and the same values again: neither changes what a read shows.
    assert_eq!(
        stack
            .post_raw(&key, first.to_string(), Some("change-k1"))
            .await
            .status(),
        202
    );
    stack.accept(&key, &first).await;
    stack
        .accept(
            &key,
            &json!({"external_user_id": "u1", "traits": {"plan": "pro", "color": null, "n": 1}}),
        )
        .await;
    let mut received = Vec::new();
    subscription
        .until(&stack, &mut received, |all| {
            all.iter()
                .any(|e| e["detail"]["changed"]["plan"]["new"] == "pro")
        })
        .await;
    let events: Vec<Value> = in_version_order(&received)
        .into_iter()
        .map(|e| e["detail"].clone())
        .collect();
    assert_eq!(
        events.len(),
        2,
        "one event per change, none for the replay or the no-op: {events:#?}"
    );
    assert_eq!(
        events[0]["changed"],
        json!({
        "email": {"new": "ann@acme.io"}, "plan": {"new": "free"}, "color": {"new": "red"}, "n": {"new": 1}})
    );
    assert_eq!(
        events[1]["changed"],
        json!({"plan": {"old": "free", "new": "pro"}, "color": {"old": "red"}})
    );
    assert!(events[0]["version"].as_u64() < events[1]["version"].as_u64());
    assert_ne!(events[0]["id"], events[1]["id"]);
    assert_eq!(
        (
            received[0]["source"].as_str(),
            received[0]["detail-type"].as_str()
        ),
        (Some("vibefollow.users"), Some("User Changed"))
    );
    assert!(
        !received.iter().any(|e| e.to_string().contains("sk_")),
        "an event carries an API key"
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn an_erase_is_user_deleted_without_pii_and_a_later_upsert_starts_afresh() {
    let stack = Stack::new().await;
    let subscription = Subscription::new(&stack, "vibefollow.users").await;
    let key = stack.key(&ALL_SCOPES).await;
    stack.accept(&key, &json!({"external_user_id": "gone", "email": "gone@acme.io", "traits": {"plan": "pro"}})).await;
    user_when(&stack, &key, "gone", |u| u["traits"]["plan"] == "pro").await;
    let erased = stack
        .request(Method::DELETE, "/api/v1/users/gone", Some(&key))
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 202);
    let mut received = Vec::new();
    subscription
        .until(&stack, &mut received, |all| {
            all.iter().any(|e| e["detail-type"] == "User Deleted")
        })
        .await;
    stack
        .accept(
            &key,
            &json!({"external_user_id": "gone", "traits": {"plan": "team"}}),
        )
        .await;
    subscription
        .until(&stack, &mut received, |all| all.len() >= 3)
        .await;
    let deleted = received
        .iter()
        .find(|e| e["detail-type"] == "User Deleted")
        .unwrap();
    assert!(
        !deleted.to_string().contains("gone@acme.io") && deleted["detail"].get("changed").is_none()
    );
    let events = in_version_order(&received);
    assert_eq!(
        events[2]["detail"]["changed"],
        json!({"plan": {"new": "team"}}),
        "created afresh: {events:#?}"
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn shuffled_delivery_still_publishes_in_version_order_and_replays_to_the_final_user() {
    let stack = Stack::new().await;
    let subscription = Subscription::new(&stack, "vibefollow.users").await;
    let key = stack.key(&ALL_SCOPES).await;
    let mut messages: Vec<UpsertMessage> = Vec::new();
    for i in 0..20 {
        let mut changes = Changes::default();
        changes
            .profile
            .insert(ProfileField::Plan, Some(format!("p{i}")));
        changes
            .traits
            .insert(format!("t{}", i % 3), (i % 4 != 0).then(|| json!(i)));
        if i % 5 == 0 {
            changes
                .profile
                .insert(ProfileField::Email, Some(format!("s{i}@acme.io")));
        }
        messages.push(message(
            &stack.workspace,
            "shuffled",
            1_700_000_000_000 + i as i64,
            i,
            changes,
        ));
    }
    // What in-order application gives: the user every delivery order must end at.
    let mut expected = UserProfile::default();
    for m in &messages {
        expected.apply(&m.stamp, &m.changes);
    }
    let expected = user_view("shuffled", &expected, true);
    let mut bodies: Vec<String> = messages.iter().map(encode).collect();
    bodies.shuffle(&mut rand::rng());
    send_all(&stack, &bodies).await;
    let view = user_when(&stack, &key, "shuffled", |u| *u == expected).await;
    let mut received = Vec::new();
    subscription
        .until(&stack, &mut received, |all| {
            let mine: Vec<Value> = of_user(all, "shuffled").into_iter().cloned().collect();
            replay(&in_version_order(&mine)) == Some(view_fields(&view))
        })
        .await;
    let versions: Vec<u64> = in_version_order(&received)
        .iter()
        .map(|e| e["detail"]["version"].as_u64().unwrap())
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "one event per version: {versions:?}"
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_redelivered_stream_record_publishes_the_same_event_id() {
    let stack = Stack::new().await;
    let subscription = Subscription::new(&stack, "vibefollow.users").await;
    let image = json!({
        "pk": {"S": format!("{}#again", stack.workspace)}, "workspace_id": {"S": stack.workspace},
        "external_user_id": {"S": "again"}, "plan": {"S": "pro"}, "stamps": {"M": {"plan": {"S": "5/r1"}}},
        "version": {"N": "1"}, "created_at": {"N": "5"}, "updated_at": {"N": "5"}
    });
    // A record as Lambda delivers it (the fields aws_lambda_events requires).
    let event = json!({"Records": [{
        "eventID": "1", "eventName": "INSERT", "awsRegion": "us-east-1",
        "dynamodb": {"SequenceNumber": "1", "SizeBytes": 200, "NewImage": image}
    }]});
    for _ in 0..2 {
        let answer = crate::support::fleet_invoke(&stack, "changes", &event).await;
        assert_eq!(answer, json!({"batchItemFailures": []}));
    }
    let mut received = Vec::new();
    subscription
        .until(&stack, &mut received, |all| all.len() >= 2)
        .await;
    assert_eq!(
        received[0]["detail"], received[1]["detail"],
        "a redelivery is the same event, id included"
    );
    assert_eq!(received[0]["detail"]["id"].as_str().map(str::len), Some(32));
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_poison_record_goes_to_the_failure_queue_and_the_shard_moves_on() {
    let stack = Stack::new().await;
    let subscription = Subscription::new(&stack, "vibefollow.users").await;
    let key = stack.key(&ALL_SCOPES).await;
    // Not a user item: the changes function cannot read it.
    stack
        .dynamodb
        .put_item()
        .table_name(&stack.resources.users_table)
        .item(
            "pk",
            vibefollow_users::aws_sdk_dynamodb::types::AttributeValue::S(format!(
                "{}#poison",
                stack.workspace
            )),
        )
        .item(
            "workspace_id",
            vibefollow_users::aws_sdk_dynamodb::types::AttributeValue::S(stack.workspace.clone()),
        )
        .send()
        .await
        .unwrap();
    stack
        .accept(
            &key,
            &json!({"external_user_id": "after", "traits": {"plan": "pro"}}),
        )
        .await;
    let mut received = Vec::new();
    subscription
        .until(&stack, &mut received, |all| {
            !of_user(all, "after").is_empty()
        })
        .await;

    let failures = std::env::var("VF_CHANGES_FAILURE_QUEUE_URL").expect("from the local stack");
    let found = eventually(Duration::from_secs(90), || async {
        let out = stack
            .sqs
            .receive_message()
            .queue_url(&failures)
            .max_number_of_messages(10)
            .send()
            .await
            .ok()?;
        out.messages()
            .iter()
            .filter_map(|m| serde_json::from_str::<Value>(m.body()?).ok())
            .find(|m| m["DDBStreamBatchInfo"]["batchSize"] == 1)
    })
    .await
    .expect("the poison record reached the failure queue");
    let info = &found["DDBStreamBatchInfo"];
    assert_eq!(
        info["startSequenceNumber"], info["endSequenceNumber"],
        "bisected down to the one record"
    );
}
