//! Logs never carry an API key or an email address (contract: "No key and no email
//! address ever appears in a log line").

use crate::support::{eventually, user_when, Stack, ALL_SCOPES};
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

    let path = std::env::var("VF_FUNCTION_LOG").expect("VF_FUNCTION_LOG from the local stack");
    let log = eventually(Duration::from_secs(10), || async {
        let log = std::fs::read_to_string(&path).ok()?;
        log.contains(&request_id).then_some(log)
    })
    .await
    .expect("the request's log line was written");
    let secret = key.trim_start_matches("sk_test_");
    assert!(!log.contains(secret), "an API key appears in the logs");
    assert!(
        !log.contains("@logcheck.io"),
        "an email address appears in the logs"
    );
}
