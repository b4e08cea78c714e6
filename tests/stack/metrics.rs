//! Metrics as CloudWatch Embedded Metric Format lines in the functions' logs: requests
//! by outcome and code, consumer applied/failed/rejected traits and lag.

use crate::support::{eventually, user_when, Stack, ALL_SCOPES};
use serde_json::{json, Value};
use std::time::Duration;

/// The EMF documents the functions wrote after `offset` bytes of their log.
fn emf_after(path: &str, offset: usize) -> Vec<Value> {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    log.get(offset..)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("\"_aws\""))
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn has(lines: &[Value], wanted: &Value) -> bool {
    lines.iter().any(|line| {
        wanted
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| &line[k] == v)
    })
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn requests_and_batches_are_counted_in_emf_lines() {
    let stack = Stack::new().await;
    let path = std::env::var("VF_FUNCTION_LOG").expect("VF_FUNCTION_LOG from the local stack");
    let offset = std::fs::read_to_string(&path).map_or(0, |log| log.len());
    let key = stack.key(&ALL_SCOPES).await;
    let body = json!({"external_user_id": "measured", "traits": {"plan": "pro"}}).to_string();
    for _ in 0..2 {
        let response = stack.post_raw(&key, body.clone(), Some("metrics-1")).await;
        assert_eq!(response.status(), 202);
    }
    let refused = json!({"external_user_id": "measured", "email": "nope"});
    assert_eq!(stack.post(&key, &refused).await.status(), 422);
    user_when(&stack, &key, "measured", |u| u["traits"]["plan"] == "pro").await;

    let lines = eventually(Duration::from_secs(10), || async {
        let lines = emf_after(&path, offset);
        let consumer = lines
            .iter()
            .any(|l| l["Function"] == "consumer" && l["Applied"].as_u64() > Some(0));
        consumer.then_some(lines)
    })
    .await
    .expect("no consumer EMF line after the upsert was applied");
    for wanted in [
        json!({"Function": "api", "Outcome": "accepted", "Code": "-", "Requests": 1}),
        json!({"Function": "api", "Outcome": "replayed", "Code": "-", "Requests": 1}),
        json!({"Function": "api", "Outcome": "refused", "Code": "invalid_email", "Requests": 1}),
        json!({"Function": "api", "Outcome": "served", "Code": "-", "Requests": 1}),
    ] {
        assert!(has(&lines, &wanted), "no EMF line with {wanted}");
    }
    for line in &lines {
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        assert!(directive["Namespace"]
            .as_str()
            .is_some_and(|ns| ns.starts_with("VibeFollow/")));
        for metric in directive["Metrics"].as_array().unwrap() {
            let name = metric["Name"].as_str().unwrap();
            assert!(
                line[name].is_number() || line[name].is_array(),
                "{name} has no value: {line}"
            );
        }
    }
    let lag = lines
        .iter()
        .find(|l| l["Function"] == "consumer" && l["Lag"].is_array())
        .expect("consumer lag as a distribution");
    assert!(lag["Lag"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v.as_i64().is_some_and(|ms| ms >= 0)));
}
