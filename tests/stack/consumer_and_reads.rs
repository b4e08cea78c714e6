//! The consumer through SQS and the read API, against the local stack.

use crate::support::{
    dead_letters_with, error_of, message, percent_encode, send_all, until_consumed, user_when,
    Stack, ALL_SCOPES,
};
use rand::seq::SliceRandom;
use reqwest::Method;
use serde_json::{json, Value};
use vibefollow_users::aws::sqs::encode;
use vibefollow_users::domain::auth::Scope;
use vibefollow_users::domain::user_view;
use vibefollow_users::domain::{Changes, ProfileField, UserProfile};

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn upsert_becomes_visible_through_get_in_the_contract_shape() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let body = json!({
        "external_user_id": "usr_42",
        "email": "Jane@Acme.io",
        "traits": {"name": "Jane Doe", "plan": "trial", "signupDate": "2026-05-17T16:00:00+02:00",
                   "company": "Acme Inc.", "role": "engineering_lead", "favoriteColor": "teal"}
    });
    assert_eq!(stack.post(&key, &body).await.status(), 202);
    let user = user_when(&stack, &key, "usr_42", |_| true).await;
    assert_eq!(user["email"], "Jane@Acme.io");
    assert_eq!(
        user["traits"],
        json!({"name": "Jane Doe", "plan": "trial", "signupDate": "2026-05-17T14:00:00Z",
               "company": "Acme Inc.", "role": "engineering_lead", "favoriteColor": "teal"})
    );
    let created = user["created_at"].as_str().unwrap();
    assert!(
        created.ends_with('Z') && created.len() == "2026-11-27T10:00:00.123Z".len(),
        "{created}"
    );

    // Known traits live in their own attributes, custom ones in the traits map.
    let stored = stack.stored("usr_42").await.unwrap();
    assert_eq!(stored.profile.profile[&ProfileField::Plan], "trial");
    assert_eq!(
        stored.profile.traits.keys().collect::<Vec<_>>(),
        ["favoriteColor"]
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn upserts_merge_and_null_removes() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let first = json!({"external_user_id": "m", "email": "m@x.io", "traits": {"plan": "trial", "a": 1, "b": 2}});
    assert_eq!(stack.post(&key, &first).await.status(), 202);
    user_when(&stack, &key, "m", |u| u["traits"]["b"] == 2).await;
    let second = json!({"external_user_id": "m", "email": null, "traits": {"plan": null, "b": {"x": [1]}, "c": true}});
    assert_eq!(stack.post(&key, &second).await.status(), 202);
    let user = user_when(&stack, &key, "m", |u| u["traits"]["c"] == true).await;
    assert_eq!(user["traits"], json!({"a": 1, "b": {"x": [1]}, "c": true}));
    assert!(
        user.get("email").is_none(),
        "removed fields are absent: {user}"
    );
    assert!(user["updated_at"].as_str() > user["created_at"].as_str());
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn shuffled_and_duplicated_messages_converge_to_the_in_order_result() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let mut rng = rand::rng();
    let mut messages = Vec::new();
    for i in 0..30 {
        let mut changes = Changes::default();
        let plan = ["free", "trial", "pro"][i % 3];
        changes.profile.insert(
            ProfileField::Plan,
            (i % 7 != 0).then(|| format!("{plan}-{i}")),
        );
        changes
            .traits
            .insert(format!("t{}", i % 4), (i % 5 != 0).then(|| json!(i)));
        if i % 6 == 0 {
            changes
                .profile
                .insert(ProfileField::Email, Some(format!("user{i}@shuffle.io")));
        }
        // Several upserts share a millisecond: the request id breaks the tie.
        messages.push(message(
            &stack.workspace,
            "shuffled",
            1_700_000_000_000 + (i as i64 / 3),
            i,
            changes,
        ));
    }
    let mut expected = UserProfile::default();
    for m in &messages {
        expected.apply(&m.stamp, &m.changes);
    }
    let expected = user_view("shuffled", &expected, true);

    let mut bodies: Vec<String> = messages.iter().map(encode).collect();
    bodies.extend(messages.iter().step_by(3).map(encode));
    bodies.shuffle(&mut rng);
    send_all(&stack, &bodies).await;
    let user = user_when(&stack, &key, "shuffled", |u| *u == expected).await;
    assert_eq!(user, expected);
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn poison_message_reaches_the_dlq_and_does_not_block_other_users() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let marker = format!("poison-{}", stack.workspace);
    let mut good = Changes::default();
    good.profile.insert(ProfileField::Plan, Some("ok".into()));
    let bodies = [
        format!("{{\"not an upsert\":\"{marker}\"}}"),
        encode(&message(&stack.workspace, "healthy", 1, 1, good)),
    ];
    send_all(&stack, &bodies).await;
    user_when(&stack, &key, "healthy", |u| u["traits"]["plan"] == "ok").await;

    until_consumed(&stack, "the poison message in the DLQ", || async {
        (dead_letters_with(&stack, &marker).await > 0).then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn get_needs_read_scope_and_shows_email_only_with_read_pii() {
    let stack = Stack::new().await;
    let writer = stack.key(&ALL_SCOPES).await;
    stack
        .accept(
            &writer,
            &json!({"external_user_id": "p", "email": "p@x.io"}),
        )
        .await;
    user_when(&stack, &writer, "p", |u| u["email"] == "p@x.io").await;
    let reader = stack.key(&[Scope::UsersRead]).await;
    let body: Value = stack.get_user(&reader, "p").await.json().await.unwrap();
    assert!(body["data"].get("email").is_none(), "{body}");
    assert_eq!(body["data"]["external_user_id"], "p");
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn unknown_user_is_404_and_ids_are_url_decoded() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let (status, codes, _) = error_of(stack.get_user(&key, "nobody").await).await;
    assert_eq!((status, codes[0].as_str()), (404, "not_found"));
    let odd = "usr/42 é#?";
    stack.accept(&key, &json!({"external_user_id": odd})).await;
    let user = user_when(&stack, &key, odd, |_| true).await;
    assert_eq!(user["external_user_id"], odd);
    assert!(!percent_encode(odd).contains('/'));
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn lookup_by_email_is_case_insensitive_and_needs_read_pii() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    stack
        .accept(
            &key,
            &json!({"external_user_id": "e1", "email": "Mixed.Case@Example.COM"}),
        )
        .await;
    user_when(&stack, &key, "e1", |u| {
        u["email"] == "Mixed.Case@Example.COM"
    })
    .await;
    let body = stack.users_with_email(&key, "mixed.case@example.com").await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["email"], "Mixed.Case@Example.COM");
    let body = stack.users_with_email(&key, "nobody@example.com").await;
    assert_eq!(body, json!({"data": []}));
    let reader = stack.key(&[Scope::UsersRead]).await;
    assert_eq!(
        error_of(stack.find_by_email(&reader, "mixed.case@example.com").await)
            .await
            .0,
        403
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn workspaces_never_see_each_others_users() {
    let a = Stack::new().await;
    let b = a.other_workspace().await;
    let key_a = a.key(&ALL_SCOPES).await;
    let key_b = b.key(&ALL_SCOPES).await;
    a.accept(
        &key_a,
        &json!({"external_user_id": "same", "email": "iso@x.io", "traits": {"plan": "a"}}),
    )
    .await;
    b.accept(
        &key_b,
        &json!({"external_user_id": "same", "traits": {"plan": "b"}}),
    )
    .await;
    user_when(&a, &key_a, "same", |u| u["traits"]["plan"] == "a").await;
    let user_b = user_when(&b, &key_b, "same", |u| u["traits"]["plan"] == "b").await;
    assert!(user_b.get("email").is_none());
    let found: Value = b
        .request(Method::GET, "/api/v1/users", Some(&key_b))
        .query(&[("email", "iso@x.io")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found, json!({"data": []}));
}
