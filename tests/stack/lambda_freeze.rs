//! Idempotency as Lambda runs the api: the instance that answered is frozen the moment
//! its answer arrives (`dev/faithful`), and the client's retry reaches another
//! instance at once. This binary has one test: it counts the stack's SendMessage calls.

use crate::support::{fleet, instance_of, upsert_queue_calls, Stack, ALL_SCOPES};
use reqwest::Method;
use serde_json::json;

const PAIRS: usize = 1_000;
const CLIENTS: usize = 4;

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_retry_after_a_frozen_202_is_replayed_at_another_instance() {
    let stack = Stack::alone().await;
    let key = stack.key(&ALL_SCOPES).await;
    // Enough warm instances that every retry finds one other than the frozen one.
    fleet(
        &stack,
        Method::POST,
        "/scale",
        Some(json!({"function": "api", "instances": 2 * CLIENTS})),
    )
    .await;
    let sends_before = upsert_queue_calls(&stack, "AmazonSQS.SendMessage").await;
    let clients = (0..CLIENTS).map(|client| {
        let (stack, key) = (&stack, &key);
        async move {
            let mut in_use = 0;
            for n in (client..PAIRS).step_by(CLIENTS) {
                let body = json!({"external_user_id": format!("frozen{n}"), "traits": {"n": n}})
                    .to_string();
                let idempotency_key = format!("freeze-{n}-{}", stack.workspace);
                let first = stack
                    .post_raw(key, body.clone(), Some(&idempotency_key))
                    .await;
                assert_eq!(first.status(), 202, "pair {n}");
                let retry = stack.post_raw(key, body, Some(&idempotency_key)).await;
                assert_ne!(
                    instance_of(&first),
                    instance_of(&retry),
                    "pair {n}: same instance"
                );
                match retry.status().as_u16() {
                    202 => assert_eq!(retry.headers()["idempotent-replayed"], "true", "pair {n}"),
                    409 => in_use += 1,
                    other => panic!("pair {n}: retry answered {other}"),
                }
            }
            in_use
        }
    });
    let in_use: usize = futures::future::join_all(clients).await.into_iter().sum();
    let sends = upsert_queue_calls(&stack, "AmazonSQS.SendMessage").await - sends_before;
    eprintln!("{PAIRS} pairs: {in_use} × 409, {sends} SendMessage calls");
    assert_eq!(in_use, 0, "retries after a 202 answered 409");
    assert_eq!(sends, PAIRS as u64, "SendMessage calls ≠ accepted upserts");
}
