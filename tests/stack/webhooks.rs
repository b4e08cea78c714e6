//! Webhook endpoints against the local stack (`docs/webhooks.md` §7, step 2): created
//! with a secret shown once, replaced keeping it, rotated, listed, deleted, at most 20
//! per workspace under concurrent `PUT`s, and every refusal a clear answer; the lanes
//! deliveries will wait in (step 3: the adapter's conditions). Delivery is not wired yet.

use crate::support::{clear_faults, error_of, fault_report, set_faults, Stack, ALL_SCOPES};
use aws_sdk_dynamodb::types::AttributeValue;
use futures::future::join_all;
use reqwest::{Method, Response};
use serde_json::{json, Value};
use vibefollow_users::app::ports::{
    Appended, DeliveryLog, DeliveryStatus, Disabling, Failed, Head, Lane, Lanes, LoggedAttempt,
    NewDelivery, Queued, Webhooks,
};
use vibefollow_users::aws::dynamodb::{LaneStore, WebhookStore};
use vibefollow_users::domain::auth::Scope;
use vibefollow_users::domain::webhook::{log_place, DisabledReason, LogRange};

impl Stack {
    pub(crate) async fn put_webhook(&self, key: &str, id: &str, body: &Value) -> Response {
        self.request(Method::PUT, &format!("/api/v1/webhooks/{id}"), Some(key))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("PUT webhook")
    }

    pub(crate) async fn webhook_call(&self, method: Method, key: &str, path: &str) -> (u16, Value) {
        let response = self
            .request(method, path, Some(key))
            .send()
            .await
            .expect("webhook call");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// An endpoint's secrets as stored: the current one and the previous one.
    async fn stored_secrets(&self, id: &str) -> (Option<String>, Option<String>) {
        let item = self
            .dynamodb
            .get_item()
            .table_name(&self.resources.webhooks_table)
            .key("pk", AttributeValue::S(format!("w#{}", self.workspace)))
            .key("sk", AttributeValue::S(format!("e#{id}")))
            .consistent_read(true)
            .send()
            .await
            .expect("read endpoint")
            .item
            .unwrap_or_default();
        let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
        (text("secret"), text("previous_secret"))
    }
}

fn hook(url: &str) -> Value {
    json!({"url": url, "events": ["audience.entered", "user.changed"]})
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn an_endpoint_is_created_with_a_secret_shown_once_replaced_rotated_and_deleted() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let created = stack
        .put_webhook(&key, "crm", &hook("https://hooks.example.com/a"))
        .await;
    assert_eq!(created.status(), 201);
    let data = created.json::<Value>().await.unwrap()["data"].clone();
    let secret = data["secret"]
        .as_str()
        .expect("secret on creation")
        .to_owned();
    assert!(
        secret.starts_with("whsec_") && secret.len() == 6 + 44,
        "{secret}"
    );
    assert_eq!(data["events"], json!(["user.changed", "audience.entered"]));
    assert_eq!(
        (data["status"].as_str(), data["audiences"].is_null()),
        (Some("enabled"), true)
    );

    let replaced = stack
        .put_webhook(&key, "crm", &json!({"url": "https://hooks.example.com/b", "events": ["user.deleted"], "audiences": ["trials"]}))
        .await;
    assert_eq!(replaced.status(), 200);
    let data = replaced.json::<Value>().await.unwrap()["data"].clone();
    assert!(
        data.get("secret").is_none(),
        "a replacement shows no secret: {data}"
    );
    assert_eq!(
        (data["url"].as_str(), data["audiences"].clone()),
        (Some("https://hooks.example.com/b"), json!(["trials"]))
    );
    assert_eq!(
        stack.stored_secrets("crm").await,
        (Some(secret.clone()), None),
        "the secret is kept"
    );

    let (status, read) = stack
        .webhook_call(Method::GET, &key, "/api/v1/webhooks/crm")
        .await;
    assert_eq!(status, 200);
    assert_eq!(read["data"], data, "GET shows what PUT answered");

    let (status, rotated) = stack
        .webhook_call(Method::POST, &key, "/api/v1/webhooks/crm/rotate-secret")
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["data"]["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert!(rotated["data"]["previous_secret_expires_at"].is_string());
    assert_eq!(
        stack.stored_secrets("crm").await,
        (Some(new_secret), Some(secret))
    );

    let (status, _) = stack
        .webhook_call(Method::DELETE, &key, "/api/v1/webhooks/crm")
        .await;
    assert_eq!(status, 202);
    let (status, _) = stack
        .webhook_call(Method::DELETE, &key, "/api/v1/webhooks/crm")
        .await;
    assert_eq!(status, 202, "deleting what is not there is done");
    let (status, body) = stack
        .webhook_call(Method::GET, &key, "/api/v1/webhooks/crm")
        .await;
    assert_eq!(
        (status, body["errors"][0]["field"].as_str()),
        (404, Some("webhook_id"))
    );
    let (status, _) = stack
        .webhook_call(Method::POST, &key, "/api/v1/webhooks/crm/rotate-secret")
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_workspace_keeps_at_most_twenty_endpoints_under_concurrent_puts() {
    let stack = Stack::new().await;
    let key = stack.key_with_rate(&ALL_SCOPES, 10_000).await;
    // As a client does: a 503 (the count's transactions kept meeting each other) is sent
    // again after its Retry-After, a bounded number of times.
    let puts = (0..25).map(|n| {
        let (stack, key) = (&stack, &key);
        async move {
            let id = format!("e{n:02}");
            for _ in 0..10 {
                let response = stack
                    .put_webhook(key, &id, &hook("https://hooks.example.com/"))
                    .await;
                if response.status() != 503 {
                    return response;
                }
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .expect("a 503 says when to retry");
                tokio::time::sleep(std::time::Duration::from_secs(retry_after)).await;
            }
            panic!("{id}: 503 ten times");
        }
    });
    let mut created = 0;
    for response in join_all(puts).await {
        match response.status().as_u16() {
            // 200: a retry that found its own earlier attempt applied.
            201 | 200 => created += 1,
            _ => {
                let (status, codes, fields) = error_of(response).await;
                assert_eq!(
                    (status, codes, fields),
                    (
                        422,
                        vec!["too_many".to_owned()],
                        vec!["webhook_id".to_owned()]
                    )
                );
            }
        }
    }
    assert_eq!(created, 20);
    let (status, page) = stack
        .webhook_call(Method::GET, &key, "/api/v1/webhooks")
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["data"].as_array().map(Vec::len), Some(20));
    assert_eq!(page["next_cursor"], Value::Null, "one page holds them all");
    let (_, first) = stack
        .webhook_call(Method::GET, &key, "/api/v1/webhooks?limit=15")
        .await;
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let (_, second) = stack
        .webhook_call(
            Method::GET,
            &key,
            &format!("/api/v1/webhooks?limit=15&cursor={cursor}"),
        )
        .await;
    assert_eq!(second["data"].as_array().map(Vec::len), Some(5));

    let existing = page["data"][0]["webhook_id"].as_str().unwrap().to_owned();
    let replaced = stack
        .put_webhook(&key, &existing, &hook("https://hooks.example.com/x"))
        .await;
    assert_eq!(
        replaced.status(),
        200,
        "replacing one at the most is no new one"
    );
    let (status, _) = stack
        .webhook_call(
            Method::DELETE,
            &key,
            &format!("/api/v1/webhooks/{existing}"),
        )
        .await;
    assert_eq!(status, 202);
    let again = stack
        .put_webhook(&key, "one-more", &hook("https://hooks.example.com/"))
        .await;
    assert_eq!(again.status(), 201, "a delete frees its place");
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn refused_endpoints_and_keys_get_clear_answers() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let refusals = [
        (
            "crm",
            hook("http://hooks.example.com/"),
            422,
            "invalid_format",
            "url",
        ),
        (
            "crm",
            hook("https://169.254.169.254/latest/meta-data/"),
            422,
            "invalid_format",
            "url",
        ),
        (
            "crm",
            hook("https://2852039166/"),
            422,
            "invalid_format",
            "url",
        ),
        (
            "crm",
            hook("https://user:pw@hooks.example.com/"),
            422,
            "invalid_format",
            "url",
        ),
        (
            "crm",
            json!({"url": "https://hooks.example.com/", "events": []}),
            422,
            "empty",
            "events",
        ),
        (
            "crm",
            json!({"url": "https://hooks.example.com/", "events": ["user.created"]}),
            422,
            "invalid_format",
            "events[0]",
        ),
        (
            "not%20an%20id",
            hook("https://hooks.example.com/"),
            422,
            "invalid_format",
            "webhook_id",
        ),
    ];
    for (id, body, status, code, field) in refusals {
        let answer = error_of(stack.put_webhook(&key, id, &body).await).await;
        assert_eq!(
            answer,
            (status, vec![code.to_owned()], vec![field.to_owned()]),
            "{body}"
        );
    }
    let profile = json!({"url": "https://hooks.example.com/", "events": ["user.changed"], "include": ["profile"]});
    let without_pii = stack
        .key(&[Scope::WebhooksWrite, Scope::WebhooksRead])
        .await;
    let answer = error_of(stack.put_webhook(&without_pii, "crm", &profile).await).await;
    assert_eq!(
        answer,
        (
            403,
            vec!["insufficient_scope".to_owned()],
            vec!["include".to_owned()]
        )
    );
    assert_eq!(
        stack.put_webhook(&key, "crm", &profile).await.status(),
        201,
        "with users:read_pii"
    );
    let reader = stack.key(&[Scope::WebhooksRead]).await;
    let answer = error_of(
        stack
            .put_webhook(&reader, "crm", &hook("https://hooks.example.com/"))
            .await,
    )
    .await;
    assert_eq!(answer.0, 403);
    let (status, read) = stack
        .webhook_call(Method::GET, &reader, "/api/v1/webhooks/crm")
        .await;
    assert_eq!(
        (status, read["data"]["include"].clone()),
        (200, json!(["profile"]))
    );
    let (status, _) = stack
        .webhook_call(Method::GET, &key, "/api/v1/webhooks/not%20an%20id")
        .await;
    assert_eq!(status, 404);
    // The local stack's switch (WEBHOOK_ALLOW_LOCAL): a listener on this machine, by
    // its literal address only.
    let local = stack
        .put_webhook(&key, "local", &hook("http://127.0.0.1:8080/hook"))
        .await;
    assert_eq!(local.status(), 201);
    let by_name = stack
        .put_webhook(&key, "local", &hook("http://localhost:8080/"))
        .await;
    assert_eq!(
        error_of(by_name).await,
        (
            422,
            vec!["invalid_format".to_owned()],
            vec!["url".to_owned()]
        )
    );
}

impl Stack {
    pub(crate) fn lanes(&self) -> LaneStore {
        LaneStore::new(self.dynamodb.clone(), &self.resources.webhooks_table)
    }

    /// The lane of the endpoint `crm` for `user`.
    pub(crate) fn lane(&self, user: &str) -> Lane {
        Lane {
            workspace_id: self.workspace.clone(),
            webhook_id: "crm".into(),
            user_id: user.into(),
        }
    }
}

/// A delivery to append, its user's version its sequence.
fn delivery(message_id: &str, sequence: u64) -> NewDelivery<'_> {
    NewDelivery {
        message_id,
        sequence,
        order: sequence,
        body: "{}",
    }
}

fn failed(attempts: usize, next_at: i64, lease_until: i64) -> Failed {
    Failed {
        attempts,
        next_at,
        lease_until,
    }
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_lanes_deliveries_are_arranged_only_as_they_were_read() {
    let stack = Stack::new().await;
    let lanes = stack.lanes();
    let lane = stack.lane("u1");
    for (id, sequence, order) in [("msg_1", 1, 5), ("msg_2", 2, 30), ("msg_3", 3, 10)] {
        let delivery = NewDelivery {
            order,
            ..delivery(id, sequence)
        };
        lanes.append(&lane, delivery, 0, 60_000).await.unwrap();
    }
    let head = lanes.head(&lane).await.unwrap();
    let orders: Vec<(u64, u64, u64)> = head
        .behind
        .iter()
        .map(|q| (q.slot, q.sequence, q.order))
        .collect();
    assert_eq!(orders, [(2, 2, 30), (3, 3, 10)]);
    let swapped = [
        Queued {
            slot: 2,
            sequence: 2,
            ..head.behind[1].clone()
        },
        Queued {
            slot: 3,
            sequence: 3,
            ..head.behind[0].clone()
        },
    ];
    lanes
        .append(&lane, delivery("msg_4", 4), 0, 60_000)
        .await
        .unwrap();
    assert!(
        !lanes.arrange(&lane, &head, &swapped).await.unwrap(),
        "the lane changed since it was read"
    );
    let head = lanes.head(&lane).await.unwrap();
    assert!(lanes.arrange(&lane, &head, &swapped).await.unwrap());
    let after = lanes.head(&lane).await.unwrap();
    let ids: Vec<(&str, u64)> = after
        .behind
        .iter()
        .map(|q| (q.message_id.as_str(), q.sequence))
        .collect();
    assert_eq!(ids, [("msg_3", 2), ("msg_2", 3), ("msg_4", 4)]);
}

/// The lanes' adapter keeps DynamoDB's conditions as the use case's fakes do: slots in
/// order, the lease taken by the append that finds it lapsed and let go by the worker
/// that empties the lane, a worker's moves only from the head it read, sequences only
/// upwards, and concurrent appends each in a slot of its own.
#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn lanes_keep_their_order_lease_and_sequence_in_dynamodb() {
    let stack = Stack::new().await;
    let other = stack.other_workspace().await;
    let lanes = stack.lanes();
    let ws = stack.workspace.as_str();
    assert_eq!(lanes.sequence_block(ws, "crm", 100).await.unwrap(), 1);
    assert_eq!(lanes.sequence_block(ws, "crm", 100).await.unwrap(), 101);
    assert_eq!(
        lanes
            .sequence_block(&other.workspace, "crm", 100)
            .await
            .unwrap(),
        1
    );

    let (lane, now, lease) = (stack.lane("u1"), 1_000, 61_000);
    let append = |id: &'static str, sequence: u64, at: i64| {
        let (lanes, lane) = (lanes.clone(), lane.clone());
        async move {
            lanes
                .append(&lane, delivery(id, sequence), at, at + 60_000)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        append("msg_1", 1, now).await,
        Appended::At {
            slot: 1,
            wake: true
        }
    );
    assert_eq!(
        append("msg_2", 2, now).await,
        Appended::At {
            slot: 2,
            wake: false
        }
    );
    assert_eq!(append("msg_0", 2, now).await, Appended::SequenceBehind);

    let head = lanes.head(&lane).await.unwrap();
    let Some(Head::Waiting(next)) = head.next else {
        panic!("slot 1 waits: {head:?}");
    };
    assert_eq!(
        (next.slot, next.message_id.as_str(), head.attempts),
        (1, "msg_1", 0)
    );
    assert!(lanes
        .postpone(&lane, 1, failed(1, now + 5_000, lease))
        .await
        .unwrap());
    assert!(
        !lanes
            .postpone(&lane, 2, failed(1, now, lease))
            .await
            .unwrap(),
        "not the head"
    );
    let head = lanes.head(&lane).await.unwrap();
    assert_eq!((head.attempts, head.next_at), (1, now + 5_000));

    assert_eq!(
        lanes.advance(&lane, 1, lease).await.unwrap(),
        Some(true),
        "slot 2 waits"
    );
    assert_eq!(
        lanes.advance(&lane, 1, lease + 1).await.unwrap(),
        None,
        "moved already, by a worker of another lease"
    );
    assert_eq!(lanes.head(&lane).await.unwrap().attempts, 0);
    assert_eq!(
        lanes.advance(&lane, 2, lease).await.unwrap(),
        Some(false),
        "emptied"
    );
    assert_eq!(lanes.head(&lane).await.unwrap().next, None);
    assert_eq!(
        append("msg_3", 3, now).await,
        Appended::At {
            slot: 3,
            wake: true
        },
        "the lease was let go"
    );
    // Slot 3 expires (TTL) before its delivery: the head says so, for the worker to pass.
    stack
        .dynamodb
        .delete_item()
        .table_name(&stack.resources.webhooks_table)
        .key("pk", AttributeValue::S(format!("l#{ws}#crm#u1")))
        .key("sk", AttributeValue::S(format!("{:012}", 3)))
        .send()
        .await
        .expect("expire slot 3");
    assert_eq!(
        lanes.head(&lane).await.unwrap().next,
        Some(Head::Expired(3))
    );

    let busy = stack.lane("u2");
    let appends = (10..20u64).map(|sequence| {
        let (lanes, busy) = (lanes.clone(), busy.clone());
        async move {
            lanes
                .append(&busy, delivery("msg", sequence), now, lease)
                .await
        }
    });
    let mut slots: Vec<u64> = join_all(appends)
        .await
        .into_iter()
        .filter_map(|appended| match appended {
            Ok(Appended::At { slot, .. }) => Some(slot),
            _ => None,
        })
        .collect();
    slots.sort_unstable();
    assert!(!slots.is_empty());
    assert_eq!(
        slots,
        (1..=slots.len() as u64).collect::<Vec<_>>(),
        "a slot each, none twice"
    );

    // A message whose append took the lease comes again (its wake may never have gone
    // out): the lease is its own, so it wakes; another message's append does not.
    let again = stack.lane("u3");
    let mut woken = Vec::new();
    for (sequence, id) in [(1, "msg_a"), (2, "msg_b"), (3, "msg_b"), (4, "msg_a")] {
        match lanes
            .append(&again, delivery(id, sequence), now, lease)
            .await
        {
            Ok(Appended::At { wake, .. }) => woken.push(wake),
            other => panic!("appended at a slot: {other:?}"),
        }
    }
    assert_eq!(woken, [true, false, false, true]);
    // A worker's move shows a wake arrived: the message again wakes nobody now.
    assert!(lanes
        .postpone(&again, 1, failed(1, now + 5_000, lease))
        .await
        .unwrap());
    let after_move = lanes.append(&again, delivery("msg_a", 5), now, lease).await;
    assert!(
        matches!(after_move, Ok(Appended::At { wake: false, .. })),
        "{after_move:?}"
    );
}

/// A worker's move applied whose answer was lost: the SDK's retry meets the move
/// already made and fails its condition. The adapter knows the lease it set and goes
/// on, so the lane is not left with work and no worker.
#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_lane_move_whose_answer_was_lost_is_known_as_its_own() {
    let stack = Stack::alone().await;
    let (lanes, lane) = (stack.lanes(), stack.lane("u1"));
    for sequence in 1..=2 {
        lanes
            .append(&lane, delivery("msg", sequence), 0, 60_000)
            .await
            .unwrap();
    }
    let lease = 987_654_321_987_i64; // the one call that carries it loses its answer
    set_faults(
        &stack,
        &json!({"operations": ["DynamoDB_20120810.UpdateItem"], "action": "lose",
                "times": 1, "matching": lease.to_string()}),
    )
    .await;
    let moved = lanes.advance(&lane, 1, lease).await;
    clear_faults(&stack).await;
    let report = fault_report(&stack).await;
    assert_eq!(
        report["injected"]["lose"], 1,
        "the answer was lost: {report}"
    );
    assert_eq!(
        moved.unwrap(),
        Some(true),
        "its own move: slot 2 waits for it"
    );
    let head = lanes.head(&lane).await.unwrap();
    assert!(
        matches!(&head.next, Some(Head::Waiting(next)) if next.slot == 2),
        "{head:?}"
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_worker_s_move_that_meets_a_transaction_in_flight_is_tried_again() {
    let stack = Stack::alone().await;
    let (lanes, lane) = (stack.lanes(), stack.lane("u1"));
    lanes
        .append(&lane, delivery("msg", 1), 0, 60_000)
        .await
        .unwrap();
    // DynamoDB's answer to a plain update of an item a transaction holds (400, not
    // retried by the SDK), twice: the third try moves the lane.
    let lease = 876_543_210_876_i64;
    let failed_before = fault_report(&stack).await["injected"]["fail"]
        .as_u64()
        .unwrap_or(0);
    set_faults(
        &stack,
        &json!({"operations": ["DynamoDB_20120810.UpdateItem"], "status": 400,
                "code": "com.amazonaws.dynamodb.v20120810#TransactionConflictException",
                "times": 2, "matching": lease.to_string()}),
    )
    .await;
    let postponed = lanes.postpone(&lane, 1, failed(1, 5_000, lease)).await;
    clear_faults(&stack).await;
    let report = fault_report(&stack).await;
    let failed_now = report["injected"]["fail"].as_u64().unwrap_or(0);
    assert_eq!(failed_now - failed_before, 2, "{report}");
    assert_eq!(postponed, Ok(true));
    assert_eq!(lanes.head(&lane).await.unwrap().attempts, 1);
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn an_endpoint_s_health_is_written_only_as_its_conditions_allow() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let put = stack
        .put_webhook(&key, "crm", &hook("https://hooks.example.com/a"))
        .await;
    assert_eq!(put.status(), 201);
    let store = WebhookStore::new(stack.dynamodb.clone(), &stack.resources.webhooks_table);
    let ws = stack.workspace.as_str();
    let read = || async { store.endpoint(ws, "crm").await.unwrap().unwrap() };
    let updated = read().await.updated_at;
    let disabling = |reason, at, updated_at, failing_since| Disabling {
        reason,
        at,
        updated_at,
        failing_since,
    };

    store.mark_failing(ws, "crm", 1_000).await.unwrap();
    store.mark_failing(ws, "crm", 2_000).await.unwrap();
    assert_eq!(
        read().await.failing_since,
        Some(1_000),
        "a streak keeps its start"
    );
    assert!(
        !store
            .disable(
                ws,
                "crm",
                disabling(DisabledReason::Failing, 9_000, updated, Some(2_000))
            )
            .await
            .unwrap(),
        "not the streak that was read"
    );
    store.mark_recovered(ws, "crm").await.unwrap();
    assert_eq!(read().await.failing_since, None);
    assert!(
        !store
            .disable(
                ws,
                "crm",
                disabling(DisabledReason::Failing, 9_000, updated, Some(1_000))
            )
            .await
            .unwrap(),
        "a 2xx ended the streak"
    );

    store.mark_failing(ws, "crm", 3_000).await.unwrap();
    assert!(
        !store
            .disable(
                ws,
                "crm",
                disabling(DisabledReason::Gone, 9_000, updated - 1, None)
            )
            .await
            .unwrap(),
        "a PUT changed the endpoint since it was read"
    );
    assert!(store
        .disable(
            ws,
            "crm",
            disabling(DisabledReason::Failing, 9_000, updated, Some(3_000))
        )
        .await
        .unwrap());
    assert!(
        !store
            .disable(
                ws,
                "crm",
                disabling(DisabledReason::Gone, 9_500, updated, None)
            )
            .await
            .unwrap(),
        "disabled once"
    );
    store.mark_announced(ws, "crm", 8_000).await.unwrap();
    assert!(
        !read().await.disabled.unwrap().announced,
        "another disabling"
    );
    store.mark_announced(ws, "crm", 9_000).await.unwrap();
    let disabled = read().await.disabled.unwrap();
    assert_eq!(
        (disabled.reason, disabled.at, disabled.announced),
        (DisabledReason::Failing, 9_000, true)
    );

    let put = stack
        .put_webhook(&key, "crm", &hook("https://hooks.example.com/a"))
        .await;
    assert_eq!(put.status(), 200);
    let shown = put.json::<Value>().await.unwrap()["data"].clone();
    assert_eq!(shown["status"], "enabled");
    let enabled = read().await;
    assert_eq!((enabled.disabled, enabled.failing_since), (None, None));

    // An endpoint not there is not made by a health write.
    store.mark_failing(ws, "nope", 1).await.unwrap();
    store.mark_recovered(ws, "nope").await.unwrap();
    assert!(!store
        .disable(
            ws,
            "nope",
            disabling(DisabledReason::Gone, 1, updated, None)
        )
        .await
        .unwrap());
    assert_eq!(store.endpoint(ws, "nope").await.unwrap(), None);
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn an_attempt_log_spread_over_its_partitions_pages_newest_first_without_a_gap() {
    let stack = Stack::new().await;
    let store = WebhookStore::new(stack.dynamodb.clone(), &stack.resources.webhooks_table);
    let ws = stack.workspace.as_str();
    let line = |n: i64| LoggedAttempt {
        at: 1_800_000_000_000 + n / 3,
        message_id: format!("msg_ev{n}"),
        user_id: if n == 7 {
            String::new()
        } else {
            format!("u{n}")
        },
        sequence: n as u64,
        body: format!(r#"{{"type":"user.changed","sequence":{n}}}"#),
        status: DeliveryStatus::Retrying,
        http_status: (n % 2 == 0).then_some(503),
        error: (n % 2 == 1).then(|| "timeout".to_owned()),
        latency_ms: Some(n),
        next_attempt_at: Some(1_800_000_005_000 + n),
    };
    let written: Vec<LoggedAttempt> = (0..25).map(line).collect();
    for recorded in join_all(written.iter().map(|l| store.record(ws, "crm", l))).await {
        recorded.unwrap();
    }
    store.record(ws, "ops", &line(99)).await.unwrap();
    // Lines of an endpoint that had the id before: older than the present one.
    let predecessor = |n: i64| LoggedAttempt {
        at: 1_700_000_000_000 + n,
        ..line(100 + n)
    };
    for n in 0..3 {
        store.record(ws, "crm", &predecessor(n)).await.unwrap();
    }
    let created_at = 1_800_000_000_000;
    let store = &store;
    // Pages of 3: each partition (about 3 lines) often stops early, bounding the page.
    let read = |range: LogRange| async move {
        let mut read = Vec::new();
        let mut range = range;
        loop {
            let page = store.attempts(ws, "crm", &range, 3).await.unwrap();
            assert!(page.attempts.len() <= 3);
            read.extend(page.attempts);
            match page.next_after {
                Some(next) => range.after = Some(next),
                None => return read,
            }
        }
    };
    let mut in_order = written.clone();
    in_order.sort_by_key(|l| log_place(l.at, &l.message_id));
    let since_created = LogRange {
        since_ms: created_at,
        ..LogRange::default()
    };
    let newest_first: Vec<_> = in_order.iter().rev().cloned().collect();
    assert_eq!(
        read(since_created.clone()).await,
        newest_first,
        "every line once, newest first, as written"
    );
    // A replay's pages: oldest first, up to (not at) `until`.
    let until_ms = 1_800_000_000_006;
    let replayed = read(LogRange {
        until_ms: Some(until_ms),
        oldest_first: true,
        ..since_created
    })
    .await;
    let before_until: Vec<_> = in_order.into_iter().filter(|l| l.at < until_ms).collect();
    assert_eq!(replayed.len(), 18);
    assert_eq!(replayed, before_until, "oldest first, every line once");
}
