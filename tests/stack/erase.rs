//! `DELETE /api/v1/users/{id}`: 202 whether or not the user exists; the consumer erases
//! email, traits, the email-index entry and `rejected_traits`, order-proof; a tombstone
//! without PII that expires.

use crate::support::{
    error_of, message, queue_drained, send_all, until_consumed, user_when, Stack, ALL_SCOPES,
};
use reqwest::Method;
use serde_json::{json, Value};
use vibefollow_users::app::ports::Users;
use vibefollow_users::aws::sqs::encode;
use vibefollow_users::domain::auth::Scope;
use vibefollow_users::domain::format_millis;
use vibefollow_users::domain::{Changes, ProfileField, UpsertMessage};

async fn delete(
    stack: &Stack,
    key: &str,
    id: &str,
    idempotency_key: Option<&str>,
) -> reqwest::Response {
    let path = format!("/api/v1/users/{}", crate::support::percent_encode(id));
    let mut request = stack.request(Method::DELETE, &path, Some(key));
    if let Some(idempotency_key) = idempotency_key {
        request = request.header("idempotency-key", idempotency_key);
    }
    request.send().await.expect("DELETE")
}

async fn gone(stack: &Stack, key: &str, id: &str) {
    until_consumed(stack, &format!("{id} erased"), || async {
        (stack.get_user(key, id).await.status() == 404).then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn erasure_is_accepted_whether_or_not_the_user_exists_and_leaves_no_pii() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let email = format!("erase.me@{}.io", stack.workspace);
    let body = json!({"external_user_id": "doomed", "email": email,
                      "traits": {"name": "Jane", "plan": "pro", "blob": "x".repeat(31_000)}});
    stack.accept(&key, &body).await;
    user_when(&stack, &key, "doomed", |u| u["traits"]["plan"] == "pro").await;
    assert_eq!(
        stack.users_with_email(&key, &email).await["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let response = delete(&stack, &key, "doomed", None).await;
    assert_eq!(response.status(), 202);
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"data":{"accepted":true}}"#
    );
    gone(&stack, &key, "doomed").await;
    assert_eq!(
        stack.users_with_email(&key, &email).await,
        json!({"data": []})
    );
    // What stays: the ids and the erasure's stamp, expiring.
    let item = stack.user_item("doomed").await.expect("a tombstone");
    let mut names: Vec<&str> = item.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "expires_at",
            "external_user_id",
            "pk",
            "profile",
            "profile_version",
            "workspace_shard"
        ]
    );
    // The profile document holds the erasure's stamp and nothing of the user.
    let tombstone = stack
        .users()
        .get(&stack.workspace, "doomed")
        .await
        .unwrap()
        .expect("a tombstone");
    assert!(tombstone.profile.erased.is_some() && !tombstone.profile.exists());
    assert!(
        !format!("{tombstone:?}").contains("erase.me"),
        "the tombstone holds the email"
    );

    // No existence oracle: a user that never existed is erased the same way.
    assert_eq!(delete(&stack, &key, "never-was", None).await.status(), 202);
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn an_upsert_accepted_before_the_erasure_never_brings_data_back() {
    // It waits for the shared queue to drain.
    let stack = Stack::alone().await;
    let key = stack.key(&ALL_SCOPES).await;
    let ws = &stack.workspace;
    let mut before = Changes::default();
    before
        .profile
        .insert(ProfileField::Email, Some("late@example.com".into()));
    before.traits.insert("color".into(), Some(json!("teal")));
    // Stamps of now: a tombstone of long ago would have expired.
    let base = vibefollow_users::clock::now_millis();
    let erase = UpsertMessage {
        erase: true,
        ..message(ws, "late", base + 2, 2, Changes::default())
    };
    let mut after = Changes::default();
    after
        .profile
        .insert(ProfileField::Plan, Some("fresh".into()));
    // The erasure arrives first, the older upsert last, twice.
    send_all(&stack, &[encode(&erase)]).await;
    send_all(&stack, &[encode(&message(ws, "late", base + 3, 3, after))]).await;
    let user = user_when(&stack, &key, "late", |u| u["traits"]["plan"] == "fresh").await;
    let older = encode(&message(ws, "late", base + 1, 1, before));
    send_all(&stack, &[older.clone(), older]).await;
    // The late upsert was delivered (the queue drains) and changed nothing.
    queue_drained(&stack).await;
    let now = stack
        .get_user(&key, "late")
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        now["data"], user,
        "an upsert older than the erasure changed the user"
    );
    assert!(now["data"].get("email").is_none() && now["data"]["traits"].get("color").is_none());
    assert_eq!(
        user["created_at"].as_str(),
        format_millis(base + 3).as_deref(),
        "created afresh by the later upsert"
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn an_upsert_after_the_erasure_creates_the_user_afresh() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    stack
        .accept(
            &key,
            &json!({"external_user_id": "phoenix", "traits": {"old": 1}}),
        )
        .await;
    let first = user_when(&stack, &key, "phoenix", |u| u["traits"]["old"] == 1).await;
    assert_eq!(delete(&stack, &key, "phoenix", None).await.status(), 202);
    gone(&stack, &key, "phoenix").await;
    stack
        .accept(
            &key,
            &json!({"external_user_id": "phoenix", "traits": {"new": 2}}),
        )
        .await;
    let again = user_when(&stack, &key, "phoenix", |u| u["traits"]["new"] == 2).await;
    assert_eq!(again["traits"], json!({"new": 2}));
    assert!(
        again["created_at"].as_str() > first["created_at"].as_str(),
        "{again} after {first}"
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn erasure_needs_its_scope_and_honours_idempotency_keys() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let writer = stack.key(&[Scope::UsersWrite, Scope::UsersRead]).await;
    let (status, codes, _) = error_of(delete(&stack, &writer, "u1", None).await).await;
    assert_eq!(
        (status, codes),
        (403, vec!["insufficient_scope".to_owned()])
    );

    let first = delete(&stack, &key, "u1", Some("erase-1")).await;
    assert_eq!(first.status(), 202);
    let again = delete(&stack, &key, "u1", Some("erase-1")).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let other = delete(&stack, &key, "u2", Some("erase-1")).await;
    assert_eq!(error_of(other).await.1, ["idempotency_key_reused"]);

    let too_long = "x".repeat(256);
    assert_eq!(
        error_of(delete(&stack, &key, &too_long, None).await)
            .await
            .0,
        404
    );
    let response = stack
        .request(Method::PUT, "/api/v1/users/u1", Some(&key))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, DELETE");
}
