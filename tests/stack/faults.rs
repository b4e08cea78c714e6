//! DynamoDB or SQS failing: 503 `unavailable` with Retry-After (or 500 `internal` for
//! a request AWS calls malformed), never an AWS error string, and a key whose enqueue
//! failed is released. Faults come from the proxy `dev/stack.py run` puts between the
//! functions and the emulator; they are global, so this binary has a single test.

use crate::support::{clear_faults, error_of, set_faults, user_when, Stack, ALL_SCOPES};
use serde_json::{json, Value};

async fn inject(stack: &Stack, operations: &[&str], status: u16, code: &str) {
    set_faults(
        stack,
        &json!({"operations": operations, "status": status, "code": code}),
    )
    .await;
}

async fn clear(stack: &Stack) {
    clear_faults(stack).await;
}

/// Status, code and the whole body of an error answer, checked for leaks.
async fn failure(response: reqwest::Response) -> (u16, String, Option<String>) {
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    for leak in [
        "injected",
        "Exception",
        "ServiceUnavailable",
        "SendMessage",
        "dynamodb",
    ] {
        assert!(!body.contains(leak), "answer leaks {leak}: {body}");
    }
    let body: Value = serde_json::from_str(&body).unwrap();
    (
        status,
        body["errors"][0]["code"].as_str().unwrap().to_owned(),
        retry_after,
    )
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn aws_failures_are_503_or_500_and_change_nothing() {
    let stack = Stack::alone().await;
    let key = stack.key(&ALL_SCOPES).await;
    let body = r#"{"external_user_id":"f1","traits":{"plan":"pro"}}"#;

    // SQS down: 503, and the Idempotency-Key is released for the retry.
    inject(
        &stack,
        &["AmazonSQS.SendMessage"],
        503,
        "ServiceUnavailable",
    )
    .await;
    let (status, code, retry_after) =
        failure(stack.post_raw(&key, body.into(), Some("fault-1")).await).await;
    assert_eq!((status, code.as_str()), (503, "unavailable"));
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    clear(&stack).await;
    let retry = stack.post_raw(&key, body.into(), Some("fault-1")).await;
    assert_eq!(retry.status(), 202);
    assert!(
        retry.headers().get("idempotent-replayed").is_none(),
        "retry was replayed, not processed"
    );
    user_when(&stack, &key, "f1", |u| u["traits"]["plan"] == "pro").await;

    // DynamoDB throttling the idempotency record: 503, nothing enqueued.
    inject(
        &stack,
        &["DynamoDB_20120810.PutItem"],
        400,
        "ThrottlingException",
    )
    .await;
    let throttled = r#"{"external_user_id":"f2"}"#;
    let (status, code, _) = failure(
        stack
            .post_raw(&key, throttled.into(), Some("fault-2"))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (503, "unavailable"));
    clear(&stack).await;
    assert_eq!(error_of(stack.get_user(&key, "f2").await).await.0, 404);

    // DynamoDB refusing our request as malformed is a bug on our side: 500.
    let fresh_key = stack.key(&ALL_SCOPES).await;
    inject(
        &stack,
        &["DynamoDB_20120810.GetItem"],
        400,
        "ValidationException",
    )
    .await;
    let (status, code, _) = failure(
        stack
            .post(&fresh_key, &json!({"external_user_id": "f3"}))
            .await,
    )
    .await;
    clear(&stack).await;
    assert_eq!((status, code.as_str()), (500, "internal"));
}
