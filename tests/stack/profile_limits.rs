//! Profiles at DynamoDB's limits, against the local stack (whose proxy refuses what
//! DynamoDB refuses): never a stranded 202, never an unreadable user.

use crate::support::{error_of, message, send_all, user_when, Stack, ALL_SCOPES};
use serde_json::{json, Value};
use vibefollow_users::aws::sqs::encode;
use vibefollow_users::domain::budget::MAX_REMOVED_STAMPS;
use vibefollow_users::domain::{Changes, ProfileField};

fn names_in(view: &Value, member: &str) -> Vec<String> {
    match &view[member] {
        Value::Object(traits) => traits.keys().cloned().collect(),
        Value::Array(rejected) => rejected
            .iter()
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn traits_past_the_budget_are_listed_and_nothing_is_stranded() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let big = "x".repeat(31_000);
    let names: Vec<String> = (0..16).map(|i| format!("blob{i:02}")).collect();
    for name in &names {
        stack
            .accept(
                &key,
                &json!({"external_user_id": "full", "traits": {name: big}}),
            )
            .await;
    }
    stack
        .accept(
            &key,
            &json!({"external_user_id": "full", "traits": {"plan": "pro"}}),
        )
        .await;
    // Every upsert ends applied: its trait stored or listed as rejected.
    let user = user_when(&stack, &key, "full", |u| {
        let mut seen = names_in(u, "traits");
        seen.extend(names_in(u, "rejected_traits"));
        u["traits"]["plan"] == "pro" && names.iter().all(|n| seen.contains(n))
    })
    .await;
    let stored = names_in(&user, "traits").len() - 1;
    let rejected = user["rejected_traits"].as_array().expect("rejected_traits");
    assert!(
        stored >= 7 && stored + rejected.len() == 16,
        "{stored} stored, {rejected:?}"
    );
    for entry in rejected {
        assert_eq!(entry["reason"], "profile_budget");
        assert!(entry["accepted_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')));
    }
    let times: Vec<&str> = rejected
        .iter()
        .filter_map(|r| r["accepted_at"].as_str())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "most recent first: {times:?}"
    );

    // Removing a stored trait makes room: a later upsert of a refused one is stored and
    // leaves the list.
    let kept = names_in(&user, "traits")
        .into_iter()
        .find(|n| n != "plan")
        .unwrap();
    let refused = rejected[0]["name"].as_str().unwrap().to_owned();
    stack
        .accept(
            &key,
            &json!({"external_user_id": "full", "traits": {kept.clone(): null}}),
        )
        .await;
    stack
        .accept(
            &key,
            &json!({"external_user_id": "full", "traits": {refused.clone(): "small now"}}),
        )
        .await;
    let user = user_when(&stack, &key, "full", |u| {
        u["traits"][&refused] == "small now"
    })
    .await;
    assert!(!names_in(&user, "rejected_traits").contains(&refused));
    assert!(!names_in(&user, "traits").contains(&kept));
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn values_dynamodb_cannot_store_are_422_at_their_path() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let cases = [
        (
            r#"{"prefs": {"": 1}}"#,
            "invalid_trait_name",
            "traits.prefs",
        ),
        (
            r#"{"n": 123456789012345678901234567890123456789}"#,
            "invalid_number",
            "traits.n",
        ),
        (r#"{"n": [1e-400]}"#, "invalid_number", "traits.n[0]"),
        (
            r#"{"n": {"deep": 1e400}}"#,
            "invalid_number",
            "traits.n.deep",
        ),
    ];
    for (traits, code, field) in cases {
        let body = format!(r#"{{"external_user_id": "u1", "traits": {traits}}}"#);
        let answer = error_of(stack.post_raw(&key, body, None).await).await;
        assert_eq!(
            answer,
            (422, vec![code.to_owned()], vec![field.to_owned()]),
            "{traits}"
        );
    }
    // Numbers at the edges of what is stored come back digit for digit.
    let edges = r#"{"external_user_id": "edges", "traits": {"n": [18446744073709551615, -9223372036854775808, 9.5e125, -1e-130, 0.1, 0]}}"#;
    assert_eq!(stack.post_raw(&key, edges.into(), None).await.status(), 202);
    let user = user_when(&stack, &key, "edges", |u| u["traits"]["n"].is_array()).await;
    let sent: Value = serde_json::from_str(
        "[18446744073709551615, -9223372036854775808, 9.5e125, -1e-130, 0.1, 0]",
    )
    .unwrap();
    assert_eq!(user["traits"]["n"], sent);
    assert_eq!(stack.get_user(&key, "u1").await.status(), 404);
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn ids_longer_than_any_stored_read_as_404_without_a_dynamodb_call() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    // 3,000 bytes: DynamoDB (and the local stack's limits layer) would refuse the key,
    // so a 404 rather than a 503 shows no call was made.
    for id in ["x".repeat(256), "é".repeat(1_500)] {
        let (status, codes, _) = error_of(stack.get_user(&key, &id).await).await;
        assert_eq!((status, codes), (404, vec!["not_found".to_owned()]));
    }
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn email_lookup_answers_every_match_up_to_100_then_truncates() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let bulky = "y".repeat(30_000);
    let mut bodies: Vec<Value> = (0..40)
        .map(|i| json!({"external_user_id": format!("big{i:02}"), "email": "Shared@Example.com", "traits": {"bulk": bulky}}))
        .collect();
    bodies.extend(
        (0..105).map(
            |i| json!({"external_user_id": format!("many{i:03}"), "email": "many@example.com"}),
        ),
    );
    for chunk in bodies.chunks(10) {
        futures::future::join_all(chunk.iter().map(|body| stack.accept(&key, body))).await;
    }
    // Complete once every upsert is applied: 100 answered of the 105 is not enough (the
    // other 5 may not be in yet), truncation says all 105 are.
    let (shared, many) = crate::support::until_consumed(&stack, "every match found", || async {
        let shared = stack.users_with_email(&key, "shared@example.com").await;
        let many = stack.users_with_email(&key, "many@example.com").await;
        let complete = shared["data"].as_array()?.len() == 40
            && many["data"].as_array()?.len() == 100
            && many["truncated"] == true
            && many["data"][99]["external_user_id"] == "many099";
        complete.then_some((shared, many))
    })
    .await;
    assert!(
        shared.get("truncated").is_none(),
        "40 matches fit one answer"
    );
    assert_eq!(many["truncated"], true);
    let ids: Vec<&str> = many["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["external_user_id"].as_str())
        .collect();
    let expected: Vec<String> = (0..100).map(|i| format!("many{i:03}")).collect();
    assert_eq!(ids, expected, "the first 100 by external_user_id");
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn churning_trait_names_never_fills_a_profile() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    for round in 0..40 {
        let mut traits = serde_json::Map::new();
        for i in 0..5 {
            traits.insert(format!("r{round}-{i}"), json!(round));
            if round > 0 {
                traits.insert(format!("r{}-{i}", round - 1), Value::Null);
            }
        }
        stack
            .accept(
                &key,
                &json!({"external_user_id": "churn", "traits": traits}),
            )
            .await;
    }
    // Round 39 can be applied before round 38 (another batch): the user is final once
    // round 39 shows and round 38 has removed round 37's names.
    let user = user_when(&stack, &key, "churn", |u| {
        u["traits"]["r39-0"] == 39 && u["traits"].get("r37-0").is_none()
    })
    .await;
    assert_eq!(names_in(&user, "traits").len(), 5);
    let stored = stack.stored("churn").await.unwrap();
    let removed = stored.profile.stamps.len() - stored.profile.traits.len();
    assert!(
        removed <= MAX_REMOVED_STAMPS,
        "{removed} removal stamps kept"
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_message_that_cannot_be_applied_fails_alone() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let ws = &stack.workspace;
    let mut plan = Changes::default();
    plan.profile.insert(ProfileField::Plan, Some("kept".into()));
    let mut broken = Changes::default();
    // Never accepted by the api (an email is at most 254 bytes); DynamoDB refuses the
    // item: its `email_key`, the email index's partition key, passes 2,048 bytes.
    let long_email = format!("{}@example.com", "e".repeat(2_100));
    broken.profile.insert(ProfileField::Email, Some(long_email));
    let mut color = Changes::default();
    color.traits.insert("color".into(), Some(json!("teal")));
    let now = 1_800_000_000_000;
    let bodies = [
        encode(&message(ws, "isolated", now, 1, plan)),
        encode(&message(ws, "isolated", now + 1, 2, broken)),
        encode(&message(ws, "isolated", now + 2, 3, color)),
    ];
    send_all(&stack, &bodies).await;
    let user = user_when(&stack, &key, "isolated", |u| {
        u["traits"]["plan"] == "kept" && u["traits"]["color"] == "teal"
    })
    .await;
    assert!(user.get("email").is_none(), "{user}");
}
