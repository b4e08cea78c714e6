//! `POST /api/v1/users/batch` against the local stack: the contract's rows (202, 207
//! with indices and prefixed fields, whole-batch refusals, idempotent replay of a 207,
//! `unavailable` entries under a fault, rate accounting) and the cost in SQS calls.

use crate::support::{
    clear_faults, error_of, set_faults, upsert_queue_calls, user_when, Stack, ALL_SCOPES,
};
use reqwest::{Method, Response};
use serde_json::{json, Value};
use vibefollow_users::domain::auth::Scope;

async fn post_batch(
    stack: &Stack,
    key: &str,
    body: String,
    idempotency_key: Option<&str>,
) -> Response {
    let mut request = stack
        .request(Method::POST, "/api/v1/users/batch", Some(key))
        .header("content-type", "application/json")
        .body(body);
    if let Some(idempotency_key) = idempotency_key {
        request = request.header("idempotency-key", idempotency_key);
    }
    request.send().await.expect("POST batch")
}

async fn answer(response: Response) -> (u16, Value, bool) {
    let status = response.status().as_u16();
    let replayed = response.headers().contains_key("idempotent-replayed");
    (
        status,
        response.json().await.expect("JSON answer"),
        replayed,
    )
}

fn users(count: usize, prefix: &str) -> Vec<Value> {
    (0..count)
        .map(|i| json!({"external_user_id": format!("{prefix}-{i}"), "traits": {"plan": "pro", "seq": i, "note": "x".repeat(200)}}))
        .collect()
}

async fn sqs_sends(stack: &Stack) -> u64 {
    upsert_queue_calls(stack, "AmazonSQS.SendMessage").await
        + upsert_queue_calls(stack, "AmazonSQS.SendMessageBatch").await
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_thousand_users_are_202_in_a_few_sqs_calls_and_all_applied() {
    let stack = Stack::alone().await;
    let key = stack.key(&ALL_SCOPES).await;
    let before = sqs_sends(&stack).await;
    let body = json!({ "users": users(1_000, "bulk") }).to_string();
    let (status, body, replayed) = answer(post_batch(&stack, &key, body, None).await).await;
    assert_eq!(
        (status, &body, replayed),
        (202, &json!({"data": {"accepted": 1000}}), false)
    );
    let calls = sqs_sends(&stack).await - before;
    assert!(calls <= 3, "{calls} SQS calls for 1,000 users");
    for i in [0, 499, 999] {
        let user = user_when(&stack, &key, &format!("bulk-{i}"), |u| {
            u["traits"]["seq"] == i
        })
        .await;
        assert_eq!(user["traits"]["plan"], "pro");
    }
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn later_entries_for_the_same_user_win() {
    let stack = Stack::alone().await;
    let key = stack.key(&ALL_SCOPES).await;
    // Index 10 must beat index 9: stamps compare as strings.
    let mut entries: Vec<Value> = (0..11)
        .map(|i| json!({"external_user_id": "same", "traits": {"plan": format!("p{i}")}}))
        .collect();
    entries[3] =
        json!({"external_user_id": "same", "email": "first@acme.io", "traits": {"color": "red"}});
    let (status, _, _) =
        answer(post_batch(&stack, &key, json!({"users": entries}).to_string(), None).await).await;
    assert_eq!(status, 202);
    let user = user_when(&stack, &key, "same", |u| u["traits"]["plan"] == "p10").await;
    assert_eq!(
        (user["email"].as_str(), &user["traits"]["color"]),
        (Some("first@acme.io"), &json!("red"))
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn refused_entries_are_207_with_indices_and_prefixed_fields_and_the_rest_applied() {
    let stack = Stack::alone().await;
    let key = stack.key(&ALL_SCOPES).await;
    let body = json!({"users": [
        {"external_user_id": "ok-0", "traits": {"plan": "pro"}},
        {"external_user_id": "bad-1", "email": "not-an-email", "traits": {"plan": 7}},
        {"external_user_id": "ok-2"},
        "nope",
    ]});
    let (status, answer_body, _) =
        answer(post_batch(&stack, &key, body.to_string(), None).await).await;
    assert_eq!(status, 207);
    assert_eq!(answer_body["data"]["accepted"], 2);
    let rejected = answer_body["data"]["rejected"].as_array().unwrap();
    let summary: Vec<(u64, Vec<(&str, &str)>)> = rejected
        .iter()
        .map(|r| {
            let errors = r["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e["code"].as_str().unwrap(), e["field"].as_str().unwrap()))
                .collect();
            (r["index"].as_u64().unwrap(), errors)
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                1,
                vec![
                    ("invalid_email", "users[1].email"),
                    ("invalid_type", "users[1].traits.plan")
                ]
            ),
            (3, vec![("invalid_type", "users[3]")]),
        ]
    );
    assert!(
        !answer_body.to_string().contains("not-an-email"),
        "an error never echoes a stored-to-be email"
    );
    user_when(&stack, &key, "ok-0", |u| u["traits"]["plan"] == "pro").await;
    user_when(&stack, &key, "ok-2", |_| true).await;
    assert_eq!(stack.get_user(&key, "bad-1").await.status(), 404);
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn whole_batch_refusals_use_the_usual_statuses_and_enqueue_nothing() {
    let stack = Stack::alone().await;
    let key = stack.key(&ALL_SCOPES).await;
    let read_only = stack.key(&[Scope::UsersRead]).await;
    let before = sqs_sends(&stack).await;
    let one = json!({"users": [{"external_user_id": "never"}]}).to_string();
    let over = format!(
        r#"{{"users":[{{"external_user_id":"never","traits":{{"pad":"{}"}}}}]}}"#,
        "x".repeat(512 * 1024)
    );
    let too_many = json!({"users": vec![json!({"external_user_id": "never"}); 1001]}).to_string();
    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        (key.as_str(), over, 413, "payload_too_large", "body"),
        (
            key.as_str(),
            "{\"users\":[".into(),
            400,
            "invalid_json",
            "body",
        ),
        (key.as_str(), "[]".into(), 400, "invalid_json", "body"),
        (key.as_str(), "{}".into(), 422, "required", "users"),
        (
            key.as_str(),
            r#"{"users":{"external_user_id":"never"}}"#.into(),
            422,
            "invalid_type",
            "users",
        ),
        (
            key.as_str(),
            r#"{"users":[]}"#.into(),
            422,
            "empty",
            "users",
        ),
        (key.as_str(), too_many, 422, "too_many", "users"),
        (
            read_only.as_str(),
            one.clone(),
            403,
            "insufficient_scope",
            "Authorization",
        ),
        (
            "sk_test_000000000000000000000000",
            one.clone(),
            401,
            "invalid_api_key",
            "Authorization",
        ),
    ];
    for (key, body, status, code, field) in cases {
        let (got, codes, fields) = error_of(post_batch(&stack, key, body, None).await).await;
        assert_eq!(
            (got, codes[0].as_str(), fields[0].as_str()),
            (status, code, field)
        );
    }
    let wrong_type = stack
        .request(Method::POST, "/api/v1/users/batch", Some(&key))
        .header("content-type", "text/plain")
        .body(one)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(wrong_type).await.0, 415);
    assert_eq!(
        sqs_sends(&stack).await,
        before,
        "a refused batch enqueues nothing"
    );
    assert_eq!(stack.get_user(&key, "never").await.status(), 404);
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_replayed_207_has_the_same_status_and_body_and_enqueues_nothing() {
    let stack = Stack::alone().await;
    let key = stack.key(&ALL_SCOPES).await;
    let body = json!({"users": [{"external_user_id": "r-0"}, {"external_user_id": ""}, {"external_user_id": "r-2"}]});
    let first = answer(post_batch(&stack, &key, body.to_string(), Some("batch-key-1")).await).await;
    assert_eq!((first.0, first.2), (207, false));
    let before = sqs_sends(&stack).await;
    // The same JSON, laid out differently.
    let spaced = serde_json::to_string_pretty(&body).unwrap();
    let again = answer(post_batch(&stack, &key, spaced, Some("batch-key-1")).await).await;
    assert_eq!((again.0, &again.1, again.2), (207, &first.1, true));
    assert_eq!(sqs_sends(&stack).await, before);
    let other = json!({"users": [{"external_user_id": "r-0"}]}).to_string();
    let (status, codes, _) =
        error_of(post_batch(&stack, &key, other, Some("batch-key-1")).await).await;
    assert_eq!((status, codes[0].as_str()), (422, "idempotency_key_reused"));
}

/// The proxy fails every SendMessageBatch carrying `marker`: the entries of that call
/// are `unavailable`, the others accepted; a replay reports the same.
#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn entries_sqs_would_not_take_are_unavailable_and_the_rest_stay_accepted() {
    let stack = Stack::alone().await;
    let key = stack.key(&ALL_SCOPES).await;
    let marker = format!("unsendable-{}", stack.workspace);
    // 600 users pack into 12 bodies: two SendMessageBatch calls (10 + 2 bodies).
    let mut entries = users(600, "part");
    entries[590] = json!({"external_user_id": marker, "traits": {"plan": "x"}});
    let faults = json!({"operations": ["AmazonSQS.SendMessageBatch"], "status": 503,
                        "code": "ServiceUnavailable", "matching": marker});
    set_faults(&stack, &faults).await;
    let body = json!({"users": entries}).to_string();
    let first = answer(post_batch(&stack, &key, body.clone(), Some("partly")).await).await;
    let replay = answer(post_batch(&stack, &key, body, Some("partly")).await).await;
    let all_failing = json!({"users": [{"external_user_id": marker}]}).to_string();
    let refused = post_batch(&stack, &key, all_failing.clone(), Some("all-failing")).await;
    let refused_status = refused.status().as_u16();
    let retry_after = refused.headers().contains_key("retry-after");
    clear_faults(&stack).await;

    assert_eq!(first.0, 207, "{}", first.1);
    let rejected = first.1["data"]["rejected"].as_array().unwrap();
    let indices: Vec<u64> = rejected
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(
        indices,
        (500..600).collect::<Vec<u64>>(),
        "the second call's entries"
    );
    assert!(rejected
        .iter()
        .all(|r| r["errors"][0]["code"] == "unavailable"
            && r["errors"][0]["field"] == format!("users[{}]", r["index"])));
    assert_eq!(first.1["data"]["accepted"], 500);
    assert_eq!((replay.0, &replay.1, replay.2), (207, &first.1, true));
    user_when(&stack, &key, "part-499", |u| u["traits"]["seq"] == 499).await;
    assert_eq!(stack.get_user(&key, "part-500").await.status(), 404);
    // Nothing enqueued at all: a whole 503, and the key is free for the retry.
    assert_eq!((refused_status, retry_after), (503, true));
    let retried = answer(post_batch(&stack, &key, all_failing, Some("all-failing")).await).await;
    assert_eq!((retried.0, retried.2), (202, false));
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_batch_counts_one_request_per_started_hundred_users() {
    let stack = Stack::alone().await;
    let key = stack.key_with_rate(&ALL_SCOPES, 20).await;
    let body = json!({ "users": users(250, "rate") }).to_string();
    assert_eq!(
        answer(post_batch(&stack, &key, body, None).await).await.0,
        202
    );
    let counter = stack
        .rate_limits()
        .counter(&stack.workspace)
        .await
        .unwrap()
        .expect("counter");
    assert_eq!(
        counter.used + counter.previous,
        3,
        "250 users count as 3 requests"
    );
    // A key whose rate is below a full batch's cost can still send one.
    let slow = stack
        .key_in(&format!("{}-slow", stack.workspace), &ALL_SCOPES, 2)
        .await;
    let full = json!({ "users": users(1_000, "slow") }).to_string();
    assert_eq!(
        answer(post_batch(&stack, &slow, full, None).await).await.0,
        202
    );
}

/// The worst batches: 1,000 refused entries that each name 30 unknown members, and
/// 466 KB of entries that each name 256 unstorable numbers. The 207 lists every refused
/// entry with 1 to 20 errors, stays under an error answer's 1 MiB, and the valid entry
/// beside them is applied.
#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn the_worst_batch_is_answered_within_lambdas_limits() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let numbers: serde_json::Map<String, Value> = (0..256)
        .map(|i| (format!("n{i:03}"), json!(1e300)))
        .collect();
    let unknown: serde_json::Map<String, Value> =
        (0..30).map(|i| (format!("x{i:02}"), json!(1))).collect();
    let fine = json!({"external_user_id": "fine", "traits": {"plan": "ok"}});
    let mut many = vec![fine.clone()];
    many.extend((1..1_000).map(|_| Value::Object(unknown.clone())));
    let mut wide = vec![fine];
    let mut body = json!({ "users": wide }).to_string();
    while body.len() < 466 * 1024 {
        let id = format!("worst-{}", wide.len());
        wide.push(json!({"external_user_id": id, "traits": numbers}));
        body = json!({ "users": wide }).to_string();
    }
    for entries in [many, wide] {
        let refused = entries.len() - 1;
        let body = json!({ "users": entries }).to_string();
        let response = post_batch(&stack, &key, body, None).await;
        assert_eq!(response.status(), 207);
        let text = response.text().await.unwrap();
        assert!(text.len() < 1024 * 1024, "{} bytes", text.len());
        let answer: Value = serde_json::from_str(&text).unwrap();
        let rejected = answer["data"]["rejected"].as_array().unwrap();
        assert_eq!(
            (answer["data"]["accepted"].as_u64(), rejected.len()),
            (Some(1), refused)
        );
        assert!(rejected.iter().all(|r| {
            let listed = r["errors"].as_array().unwrap().len();
            (1..=20).contains(&listed) && r["errors_truncated"] == true
        }));
    }
    user_when(&stack, &key, "fine", |u| u["traits"]["plan"] == "ok").await;
}
