//! A build's progress against the emulator: recorded on an item of its own, never on
//! its workspace's definitions key until the build is done; a build started before
//! progress had items of its own ends on its definition, as it began.

use crate::support::Stack;
use serde_json::json;
use vibefollow_users::app::ports::{Audience, Audiences, BuildRecord, BuildStep};
use vibefollow_users::aws::dynamodb::Item;
use vibefollow_users::aws_sdk_dynamodb::types::AttributeValue;
use vibefollow_users::contract::parse_rule;

const AUDIENCE: &str = "trials";

fn audience(rule_rev: u64) -> Audience {
    let rule_json = json!({"field": "plan", "op": "eq", "value": "trial"});
    Audience {
        audience_id: AUDIENCE.into(),
        name: "Trials".into(),
        rule: parse_rule(&rule_json).unwrap(),
        rule_json,
        rule_rev,
        since_rev: 1,
        building: Some(0),
        updated_at: 1_800_000_000_000,
        counted: true,
        sharded: true,
    }
}

fn step(from: Option<&str>, to: Option<&str>, scanned: u64) -> BuildStep {
    BuildStep {
        from: from.map(Into::into),
        to: to.map(Into::into),
        scanned,
    }
}

async fn item(stack: &Stack, pk: String, sk: &str) -> Option<Item> {
    stack
        .dynamodb
        .get_item()
        .table_name(&stack.resources.audiences_table)
        .key("pk", AttributeValue::S(pk))
        .key("sk", AttributeValue::S(sk.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

async fn scanned(stack: &Stack) -> Option<u64> {
    let store = stack.audiences();
    let got = store.get(&stack.workspace, AUDIENCE).await.unwrap();
    let listed = store.list(&stack.workspace).await.unwrap();
    let building = got.expect("defined").building;
    assert_eq!(listed.audiences[0].building, building, "get and list agree");
    building
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_build_records_its_pages_on_its_own_key_and_its_definition_only_once_done() {
    let stack = Stack::new().await;
    let store = stack.audiences();
    let ws = stack.workspace.as_str();
    let definition = || item(&stack, ws.to_owned(), AUDIENCE);
    let progress = || item(&stack, format!("b#{ws}#{AUDIENCE}"), "build");
    assert!(store.define(ws, &audience(1), 0).await.unwrap());
    let written = definition().await.unwrap();
    assert!(progress().await.is_some(), "written with the definition");

    let first = step(None, Some("c1"), 200);
    assert_eq!(
        store.record_build(ws, AUDIENCE, 1, &first).await.unwrap(),
        BuildRecord::Recorded
    );
    assert_eq!(scanned(&stack).await, Some(200));
    assert_eq!(
        definition().await.unwrap(),
        written,
        "a page leaves the definition alone"
    );
    // A redelivered page counts nothing twice.
    assert_eq!(
        store.record_build(ws, AUDIENCE, 1, &first).await.unwrap(),
        BuildRecord::AlreadyAt(Some("c1".into()))
    );
    assert_eq!(scanned(&stack).await, Some(200));

    let last = step(Some("c1"), None, 50);
    assert_eq!(
        store.record_build(ws, AUDIENCE, 1, &last).await.unwrap(),
        BuildRecord::Recorded
    );
    assert_eq!(scanned(&stack).await, None, "ready");
    assert!(!definition().await.unwrap().contains_key("building"));
    // Redelivered after the end: done, and the definition stays ready.
    assert_eq!(
        store.record_build(ws, AUDIENCE, 1, &last).await.unwrap(),
        BuildRecord::AlreadyAt(None)
    );
    assert_eq!(scanned(&stack).await, None);

    // Defined anew: the old build's pages are refused, the new one starts at 0.
    assert!(store.define(ws, &audience(2), 1).await.unwrap());
    assert_eq!(
        store.record_build(ws, AUDIENCE, 1, &first).await.unwrap(),
        BuildRecord::Replaced
    );
    assert_eq!(scanned(&stack).await, Some(0));
    // Deleted: its progress goes with it, and so do its pages.
    assert!(store.delete(ws, AUDIENCE, 2).await.unwrap());
    assert!(progress().await.is_none());
    let first = step(None, Some("c1"), 10);
    assert_eq!(
        store.record_build(ws, AUDIENCE, 2, &first).await.unwrap(),
        BuildRecord::Replaced
    );
    assert!(
        definition().await.is_none(),
        "a refused page writes no item"
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_build_started_before_progress_items_ends_on_its_definition() {
    let stack = Stack::new().await;
    let store = stack.audiences();
    let ws = stack.workspace.as_str();
    // As the code before wrote it: the progress on the definition, and no item of its own.
    let s = |v: &str| AttributeValue::S(v.into());
    let n = |v: u64| AttributeValue::N(v.to_string());
    let old = Item::from([
        ("pk".to_owned(), s(ws)),
        ("sk".to_owned(), s(AUDIENCE)),
        ("name".to_owned(), s("Trials")),
        ("rule".to_owned(), s(&audience(1).rule_json.to_string())),
        ("rule_rev".to_owned(), n(1)),
        ("since_rev".to_owned(), n(1)),
        ("updated_at".to_owned(), n(1_800_000_000_000)),
        ("building".to_owned(), n(200)),
        ("build_cursor".to_owned(), s("c1")),
    ]);
    stack
        .dynamodb
        .put_item()
        .table_name(&stack.resources.audiences_table)
        .set_item(Some(old))
        .send()
        .await
        .unwrap();
    assert_eq!(scanned(&stack).await, Some(200));
    let next = step(Some("c1"), Some("c2"), 100);
    assert_eq!(
        store.record_build(ws, AUDIENCE, 1, &next).await.unwrap(),
        BuildRecord::Recorded
    );
    assert_eq!(scanned(&stack).await, Some(300));
    assert_eq!(
        store.record_build(ws, AUDIENCE, 1, &next).await.unwrap(),
        BuildRecord::AlreadyAt(Some("c2".into()))
    );
    let last = step(Some("c2"), None, 7);
    assert_eq!(
        store.record_build(ws, AUDIENCE, 1, &last).await.unwrap(),
        BuildRecord::Recorded
    );
    assert_eq!(scanned(&stack).await, None, "ready");
    assert!(item(&stack, format!("b#{ws}#{AUDIENCE}"), "build")
        .await
        .is_none());
}
