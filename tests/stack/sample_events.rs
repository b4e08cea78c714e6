//! The sample events in `events/` drive the real functions through the Lambda invoke
//! API that the local stack serves (what `cargo lambda invoke --data-file` does).

use crate::support::Stack;
use serde_json::{json, Value};

async fn invoke(stack: &Stack, function: &str, event_file: &str) -> Value {
    let event = std::fs::read_to_string(format!(
        "{}/events/{event_file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let url = format!("{}/2015-03-31/functions/{function}/invocations", stack.api);
    let response = stack.http.post(url).body(event).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn sqs_sample_event_reports_only_the_unreadable_message() {
    let stack = Stack::new().await;
    let result = invoke(&stack, "consumer", "sqs-upserts.json").await;
    assert_eq!(
        result,
        json!({"batchItemFailures": [{"itemIdentifier": "0b9e1d5c-1a52-4bde-9a55-7c6b1a3e0003"}]})
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn api_sample_event_is_answered_in_the_contract_envelope() {
    let stack = Stack::new().await;
    // The sample carries a placeholder key: the api function must refuse it cleanly.
    let result = invoke(&stack, "api", "apigw-post-user.json").await;
    assert_eq!(result["statusCode"], 401);
    let body: Value = serde_json::from_str(result["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["errors"][0]["code"], "invalid_api_key");
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn stream_sample_event_reports_the_unreadable_record_as_the_first_failure() {
    let stack = Stack::new().await;
    let result = invoke(&stack, "changes", "dynamodb-stream.json").await;
    assert_eq!(
        result,
        json!({"batchItemFailures": [{"itemIdentifier": "300"}]})
    );
}
