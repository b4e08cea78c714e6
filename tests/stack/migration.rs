//! The users table's move to format 2 on the real path: items written by the code
//! before it (`tests/fixtures/users_v1.json`, captured from it) put into the table as
//! they were, read through the API as they answered then, counted by `vfctl users
//! formats`, and rewritten in format 2 by their next write, which merges with their
//! stamps exactly as before.

use crate::support::{until_consumed, vfctl_json, Stack, ALL_SCOPES};
use serde_json::{json, Value};
use vibefollow_users::app::ports::Users;
use vibefollow_users::aws_sdk_dynamodb::types::AttributeValue;
use vibefollow_users::clock::now_millis;
use vibefollow_users::contract::parse_upsert;
use vibefollow_users::domain::{user_view, Stamp};

type Item = std::collections::HashMap<String, AttributeValue>;

/// The fixtures' items, moved into `workspace` (they were written under `ws`), with
/// what a read answered.
fn fixtures(workspace: &str) -> Vec<(String, Item, Value)> {
    let cases: Vec<Value> =
        serde_json::from_str(include_str!("../fixtures/users_v1.json")).expect("fixtures");
    cases
        .into_iter()
        .map(|case| {
            let item: serde_dynamo::Item = serde_json::from_value(case["item"].clone()).unwrap();
            let mut item: Item = item.into();
            for name in ["pk", "workspace_shard", "workspace_id", "email_key"] {
                if let Some(AttributeValue::S(text)) = item.get_mut(name) {
                    *text = match text.split_once('#') {
                        Some((_, rest)) => format!("{workspace}#{rest}"),
                        None => workspace.to_owned(),
                    };
                }
            }
            let id = item["external_user_id"].as_s().unwrap().clone();
            (id, item, case["view"].clone())
        })
        .collect()
}

/// What a test compares of a read: `created_at` moves with a write stamped before the
/// user's first (these fixtures are stamped in 2027), and a rejection's time with it.
fn compared(view: &Value) -> Value {
    let names: Vec<&Value> = view["rejected_traits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| &r["name"])
        .collect();
    json!({"email": view["email"], "traits": view["traits"], "rejected": names})
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn format_1_items_answer_as_before_and_their_next_write_moves_them_to_format_2() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let fixtures = fixtures(&stack.workspace);
    for (_, item, _) in &fixtures {
        stack
            .dynamodb
            .put_item()
            .table_name(&stack.resources.users_table)
            .set_item(Some(item.clone()))
            .send()
            .await
            .expect("put a format-1 item");
    }
    // Counted, with whatever else the table holds.
    let count = vfctl_json(&["users", "formats"]);
    let format_1 = count["format_1"].as_u64().expect("format_1");
    assert!(format_1 >= fixtures.len() as u64, "{count}");
    assert!(count["items"].as_u64() >= Some(format_1), "{count}");

    let mut rewritten = Vec::new();
    for (id, _, view) in &fixtures {
        // Read as they answered then.
        let response = stack.get_user(&key, id).await;
        if view.is_null() {
            assert_eq!(response.status(), 404, "{id}");
        } else {
            assert_eq!(response.status(), 200, "{id}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(&body["data"], view, "{id}");
        }
        // A write that adds a trait and tries to change `plan`, stamped before every
        // stamp the item holds: the stored stamps decide, as they did in format 1.
        let body = json!({"external_user_id": id, "traits": {"migrated": true, "plan": "older"}});
        let mut expected = stack.stored(id).await.expect("readable");
        let changes = parse_upsert(body.to_string().as_bytes(), now_millis())
            .unwrap()
            .changes;
        let written = expected
            .profile
            .apply(&Stamp::new(now_millis(), "stack-test"), &changes);
        stack.accept(&key, &body).await;
        if written {
            rewritten.push((id.clone(), expected));
        }
    }
    // Stamped before every fixture's stamps, the write changes every user but those
    // erased (at any time: an erasure hides every older write).
    let writable = fixtures
        .iter()
        .filter(|(_, item, _)| !item.contains_key("erased"))
        .count();
    assert!(writable > 0);
    assert_eq!(rewritten.len(), writable);
    for (id, expected) in &rewritten {
        let user = until_consumed(&stack, &format!("{id} rewritten"), || async {
            stack
                .users()
                .get(&stack.workspace, id)
                .await
                .ok()
                .flatten()
                .filter(|user| user.version > expected.version)
        })
        .await;
        let response = stack.get_user(&key, id).await;
        let read: Value = response.json().await.unwrap();
        assert_eq!(
            compared(&read["data"]),
            compared(&user_view(id, &expected.profile, true)),
            "{id}"
        );
        assert_eq!(user.profile.traits, expected.profile.traits, "{id}");
        let item = stack.user_item(id).await.unwrap();
        assert!(
            item.contains_key("profile") && !item.contains_key("stamps"),
            "{id} still in format 1"
        );
    }
}
