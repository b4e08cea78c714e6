//! `vfctl dlq`: upserts the consumer could not apply wait in the dead-letter queue; once
//! the cause is fixed, a redrive brings them back and they are applied.

use crate::support::{
    clear_faults, dead_letters_with, set_faults, until_consumed, user_when, vfctl_json, Stack,
    ALL_SCOPES,
};
use serde_json::json;

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn dead_letters_are_counted_and_applied_after_a_redrive() {
    let stack = Stack::alone().await;
    let key = stack.key(&ALL_SCOPES).await;
    let marker = format!("dead-{}", stack.workspace);
    // The cause: every write of these users refused, until it is fixed.
    let refused = json!({"operations": ["DynamoDB_20120810.PutItem"], "status": 400,
        "code": "ValidationException", "matching": marker});
    set_faults(&stack, &refused).await;
    let started_ms = vibefollow_users::clock::now_millis();
    for i in 0..3 {
        let user = json!({"external_user_id": format!("{marker}-{i}"), "traits": {"n": i}});
        stack.accept(&key, &user).await;
    }
    until_consumed(&stack, "three upserts in the DLQ", || async {
        (dead_letters_with(&stack, &marker).await == 3).then_some(())
    })
    .await;
    clear_faults(&stack).await;

    let status = vfctl_json(&["dlq", "status"]);
    assert!(status["messages"].as_u64() >= Some(3), "{status}");
    let oldest = status["oldest_sent_at_ms"]
        .as_i64()
        .expect("an oldest message");
    assert!(oldest <= started_ms + 60_000, "{status}");
    let hours = status["oldest_expires_in_hours"].as_f64().unwrap();
    assert!((300.0..=336.0).contains(&hours), "{status}");
    assert_eq!(
        dead_letters_with(&stack, &marker).await,
        3,
        "a status read leaves the messages where they are"
    );

    let redriven = vfctl_json(&["dlq", "redrive"]);
    assert_eq!(redriven["method"], "receive-send-delete", "{redriven}");
    assert!(redriven["messages"].as_u64() >= Some(3), "{redriven}");
    for i in 0..3 {
        user_when(&stack, &key, &format!("{marker}-{i}"), |u| {
            u["traits"]["n"] == i
        })
        .await;
    }
    assert_eq!(dead_letters_with(&stack, &marker).await, 0);
}

/// Ticks EventBridge could not deliver: shown, never redriven (a tick carries nothing;
/// the next one settles whatever is due).
#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn missed_ticks_are_shown_and_a_redrive_of_them_says_why_not() {
    let status = vfctl_json(&["dlq", "status", "--queue", "ticks"]);
    assert!(status["messages"].is_u64(), "{status}");
    let refused = crate::support::vfctl()
        .args(["--local", "dlq", "redrive", "--queue", "ticks"])
        .output()
        .expect("run vfctl");
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("nothing to redrive"), "{said}");
}
