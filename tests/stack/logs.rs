//! Logs never carry an API key or an email address (contract: "No key and no email
//! address ever appears in a log line").

use crate::support::{
    clear_faults, eventually, set_faults, until_consumed, user_when, Stack, ALL_SCOPES,
};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn no_key_and_no_email_in_function_logs() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let email = format!("{}@logcheck.io", stack.workspace);
    let body = json!({"external_user_id": "logged", "email": email, "traits": {"email": email}});
    let response = stack.post(&key, &body).await;
    assert_eq!(response.status(), 202);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // Errors are logged too: a bad address and a bad key.
    stack
        .post(
            &key,
            &json!({"external_user_id": "x", "email": format!("{email}@")}),
        )
        .await;
    stack.post(&format!("{key}0"), &body).await;
    user_when(&stack, &key, "logged", |u| u["email"] == email).await;

    let log = log_lines_with(&request_id).await;
    let secret = key.trim_start_matches("sk_test_");
    assert!(!log.contains(secret), "an API key appears in the logs");
    assert!(
        !log.contains("@logcheck.io"),
        "an email address appears in the logs"
    );
}

/// The log lines (text) that mention `text`, once at least one does.
async fn log_lines_with(text: &str) -> String {
    let path = std::env::var("VF_FUNCTION_LOG").expect("VF_FUNCTION_LOG from the local stack");
    eventually(Duration::from_secs(10), || async {
        let log = std::fs::read_to_string(&path).ok()?;
        log.contains(text).then_some(log)
    })
    .await
    .expect("the log line was written")
}

/// AWS error messages can quote what they refused: the functions log kinds and codes
/// only, never a message, on the api's path and the consumer's.
#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn aws_error_messages_that_quote_an_email_never_reach_the_logs() {
    let stack = Stack::alone().await;
    let key = stack.key(&ALL_SCOPES).await;
    let leaked = format!("{}@quoted-by-aws.io", stack.workspace);
    let message = format!("One or more parameter values were invalid: {leaked}");
    // The consumer's write is refused (as DynamoDB refuses an item, quoting it)…
    let marker = format!("quoted-{}", stack.workspace);
    let put_refused = json!({"operations": ["DynamoDB_20120810.PutItem"], "status": 400,
        "code": "ValidationException", "message": message, "matching": marker});
    set_faults(&stack, &put_refused).await;
    stack
        .accept(&key, &json!({"external_user_id": marker}))
        .await;
    let consumer_line = r#""error":"refused (ValidationException)""#;
    until_consumed(&stack, "the consumer logged the refusal", || async {
        let log = std::fs::read_to_string(std::env::var("VF_FUNCTION_LOG").ok()?).ok()?;
        log.contains(consumer_line).then_some(())
    })
    .await;
    // …and the api's send fails (SQS throttling, quoting the body).
    let send_failed = json!({"operations": ["AmazonSQS.SendMessage"], "status": 400,
        "code": "AWS.SimpleQueueService.RequestThrottled", "message": message});
    set_faults(&stack, &send_failed).await;
    let response = stack
        .post(&key, &json!({"external_user_id": "never-sent"}))
        .await;
    clear_faults(&stack).await;
    assert_eq!(response.status(), 503);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let log = log_lines_with(&request_id).await;
    let answered: Vec<&str> = log.lines().filter(|l| l.contains(&request_id)).collect();
    assert!(
        answered.iter().any(|l| l.contains("RequestThrottled")),
        "the api logs the code: {answered:?}"
    );
    assert!(log.contains(consumer_line));
    assert!(
        !log.contains(&leaked),
        "an AWS error message reached the logs"
    );
}
