//! `timestamp` (source time) and `set_once`: history never overwrites the present, in
//! any delivery order; an import repeated after its keys expired changes nothing newer.

use crate::support::{error_of, queue_drained, user_when, vfctl, Stack, ALL_SCOPES};
use serde_json::{json, Value};
use std::path::PathBuf;
use vibefollow_users::aws::dynamodb::{Item, PARTITION_KEY, TTL_ATTRIBUTE};
use vibefollow_users::domain::format_millis;

fn ago(ms: i64) -> String {
    format_millis(vibefollow_users::clock::now_millis() - ms).unwrap()
}

const HOUR: i64 = 3_600_000;

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_write_stamped_earlier_at_the_source_never_overwrites_a_later_one() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    stack
        .accept(
            &key,
            &json!({"external_user_id": "s", "traits": {"plan": "now"}}),
        )
        .await;
    let old = json!({"external_user_id": "s", "timestamp": ago(HOUR),
        "traits": {"plan": "an hour ago", "color": "teal"}});
    stack.accept(&key, &old).await;
    let user = user_when(&stack, &key, "s", |u| u["traits"]["color"] == "teal").await;
    assert_eq!(
        user["traits"]["plan"], "now",
        "the older write lost the field it shared"
    );
    let newer = json!({"external_user_id": "s", "timestamp": ago(0), "traits": {"plan": "newest"}});
    stack.accept(&key, &newer).await;
    user_when(&stack, &key, "s", |u| u["traits"]["plan"] == "newest").await;
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn set_once_keeps_the_first_value_in_source_order_whatever_arrives_first() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let later =
        json!({"external_user_id": "o", "set_once": {"first_plan": "pro", "first_seen": "web"}});
    let earlier = json!({"external_user_id": "o", "timestamp": ago(24 * HOUR),
        "set_once": {"first_plan": "trial"}, "traits": {"plan": "trial"}});
    stack.accept(&key, &later).await;
    stack.accept(&key, &earlier).await;
    let user = user_when(&stack, &key, "o", |u| u["traits"]["plan"] == "trial").await;
    assert_eq!(
        user["traits"]["first_plan"], "trial",
        "the earlier set_once was first"
    );
    assert_eq!(user["traits"]["first_seen"], "web");
    // Removed, then set_once again: it sets.
    let removed = json!({"external_user_id": "o", "traits": {"first_plan": null}});
    stack.accept(&key, &removed).await;
    user_when(&stack, &key, "o", |u| {
        u["traits"].get("first_plan").is_none()
    })
    .await;
    let again = json!({"external_user_id": "o", "set_once": {"first_plan": "enterprise"}});
    stack.accept(&key, &again).await;
    user_when(&stack, &key, "o", |u| {
        u["traits"]["first_plan"] == "enterprise"
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn timestamp_and_set_once_are_validated_where_they_stand() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let future = format_millis(vibefollow_users::clock::now_millis() + 10 * 60_000).unwrap();
    let cases = [
        (
            json!({"external_user_id": "v", "timestamp": "1999-12-31T23:59:59Z"}),
            "out_of_range",
            "timestamp",
        ),
        (
            json!({"external_user_id": "v", "timestamp": future}),
            "out_of_range",
            "timestamp",
        ),
        (
            json!({"external_user_id": "v", "timestamp": "yesterday"}),
            "invalid_datetime",
            "timestamp",
        ),
        (
            json!({"external_user_id": "v", "set_once": {"plan": null}}),
            "invalid_type",
            "set_once.plan",
        ),
        (
            json!({"external_user_id": "v", "set_once": null}),
            "invalid_type",
            "set_once",
        ),
        (
            json!({"external_user_id": "v", "traits": {"plan": "a"}, "set_once": {"plan": "b"}}),
            "conflict",
            "set_once.plan",
        ),
        (
            json!({"external_user_id": "v", "email": "a@b.io", "set_once": {"email": "c@d.io"}}),
            "conflict",
            "set_once.email",
        ),
    ];
    for (body, code, field) in cases {
        let (status, codes, fields) = error_of(stack.post(&key, &body).await).await;
        assert_eq!(
            (status, codes[0].as_str(), fields[0].as_str()),
            (422, code, field),
            "{body}"
        );
    }
}

/// Sets `expires_at` of this workspace's Idempotency-Key records in the past: what 24
/// hours do to them (an expired record counts as absent).
async fn expire_keys(stack: &Stack) {
    let table = &stack.resources.idempotency_table;
    let prefix = format!("{}#", stack.workspace);
    let scanned = stack
        .dynamodb
        .scan()
        .table_name(table)
        .send()
        .await
        .unwrap();
    let mine: Vec<&Item> = scanned
        .items()
        .iter()
        .filter(|item| {
            item[PARTITION_KEY]
                .as_s()
                .is_ok_and(|pk| pk.starts_with(&prefix))
        })
        .collect();
    assert!(!mine.is_empty(), "the import recorded its keys");
    for item in mine {
        stack
            .dynamodb
            .update_item()
            .table_name(table)
            .key(PARTITION_KEY, item[PARTITION_KEY].clone())
            .update_expression("SET #ttl = :past")
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(
                ":past",
                aws_sdk_dynamodb::types::AttributeValue::N("1".into()),
            )
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn an_import_repeated_after_its_keys_expired_never_overwrites_a_live_change() {
    // Alone: it waits for the shared queue to drain to know the import was applied.
    let stack = Stack::alone().await;
    let key = stack.key(&ALL_SCOPES).await;
    let dir = std::env::temp_dir().join(format!("vf-source-time-{}", stack.workspace));
    std::fs::create_dir_all(&dir).unwrap();
    let file: PathBuf = dir.join("crm.csv");
    let exported = ago(HOUR);
    let mut text = String::from("external_user_id,updated,plan,first_plan\n");
    for i in 0..200 {
        text.push_str(&format!("crm-{i},{exported},from-crm,trial\n"));
    }
    std::fs::write(&file, text).unwrap();
    let import = || {
        let output = vfctl()
            .args(["users", "import"])
            .arg(&file)
            .args([
                "--url",
                &stack.api,
                "--timestamp-column",
                "updated",
                "--once-columns",
                "first_plan",
            ])
            .env("VIBEFOLLOW_API_KEY", &key)
            .env_remove("VIBEFOLLOW_BASE_URL")
            .output()
            .expect("run vfctl");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    let first = import();
    assert_eq!(first["accepted"], 200);
    user_when(&stack, &key, "crm-199", |u| {
        u["traits"]["plan"] == "from-crm"
    })
    .await;
    // A user changes live, after the export.
    let live =
        json!({"external_user_id": "crm-7", "traits": {"plan": "live", "first_plan": "pro"}});
    stack.accept(&key, &live).await;
    user_when(&stack, &key, "crm-7", |u| u["traits"]["plan"] == "live").await;

    // The same file again, its keys expired and its checkpoint gone: every batch is sent
    // and accepted anew, and still changes nothing newer.
    expire_keys(&stack).await;
    std::fs::remove_file(dir.join("crm.csv.checkpoint")).unwrap();
    let second = import();
    assert_eq!(
        (
            second["accepted"].as_u64(),
            second["replayed_batches"].as_u64()
        ),
        (Some(200), Some(0))
    );
    queue_drained(&stack).await;
    let user = user_when(&stack, &key, "crm-7", |_| true).await;
    assert_eq!(
        user["traits"]["plan"], "live",
        "the repeated import overwrote a live change"
    );
    assert_eq!(
        user["traits"]["first_plan"], "pro",
        "a live overwrite wins over set_once"
    );
    let untouched = user_when(&stack, &key, "crm-8", |_| true).await;
    assert_eq!(
        (
            untouched["traits"]["plan"].as_str(),
            untouched["traits"]["first_plan"].as_str()
        ),
        (Some("from-crm"), Some("trial"))
    );
    eprintln!("import twice: 200 users, second run {second}, crm-7 kept plan=live");
}
