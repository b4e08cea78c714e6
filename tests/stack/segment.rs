//! Segment's HTTP tracking API, for identify: the write key as Segment's libraries send
//! it, their message shapes, and 200 for a request whose unstorable messages are left
//! out one by one (a 4xx would make a library discard the valid ones beside them).

use crate::support::{error_of, user_when, Stack, ALL_SCOPES};
use base64::Engine;
use reqwest::{Method, Response};
use serde_json::{json, Value};
use vibefollow_users::domain::auth::Scope;

fn basic(key: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
    format!("Basic {encoded}")
}

async fn send(stack: &Stack, path: &str, authorization: Option<&str>, body: &Value) -> Response {
    let mut request = stack
        .request(Method::POST, path, None)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    request.send().await.expect("POST")
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_segment_batch_stores_its_identifies_and_lists_what_it_left_out() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let batch = json!({"sentAt": vibefollow_users::domain::format_millis(vibefollow_users::clock::now_millis()), "batch": [
        {"type": "identify", "userId": "seg-1", "messageId": "m1", "timestamp": vibefollow_users::domain::format_millis(vibefollow_users::clock::now_millis() - 1000),
         "traits": {"email": "seg1@acme.io", "createdAt": "2026-05-17T16:00:00+02:00", "company": {"name": "Acme", "plan": "enterprise"}, "favoriteColor": "teal"},
         "context": {"library": {"name": "analytics-node", "version": "2"}}, "integrations": {"All": true}},
        {"type": "track", "userId": "seg-1", "messageId": "m2", "event": "Signed Up"},
        {"type": "identify", "anonymousId": "anon", "messageId": "m3", "traits": {"plan": "pro"}},
    ]});
    let response = send(&stack, "/v1/batch", Some(&basic(&key)), &batch).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["success"], true);
    let dropped: Vec<(u64, &str, &str)> = answer["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["index"].as_u64().unwrap(),
                d["messageId"].as_str().unwrap(),
                d["errors"][0]["code"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        dropped,
        [(1, "m2", "unsupported_type"), (2, "m3", "required")]
    );
    let user = user_when(&stack, &key, "seg-1", |u| {
        u["traits"]["favoriteColor"] == "teal"
    })
    .await;
    assert_eq!(user["email"], "seg1@acme.io");
    assert_eq!(user["traits"]["signupDate"], "2026-05-17T14:00:00Z");
    assert_eq!(user["traits"]["company"], "Acme");
    assert_eq!(
        user["traits"]["companyDetails"],
        json!({"plan": "enterprise"})
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn the_write_key_may_travel_in_the_body_and_every_other_check_applies() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let identify = json!({"userId": "seg-2", "writeKey": key, "traits": {"plan": "pro"}});
    let response = send(&stack, "/v1/identify", None, &identify).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"success": true})
    );
    user_when(&stack, &key, "seg-2", |u| u["traits"]["plan"] == "pro").await;

    let unknown = format!("{key}0");
    let bad = send(&stack, "/v1/identify", Some(&basic(&unknown)), &identify).await;
    assert_eq!(error_of(bad).await.0, 401);
    let reader = stack.key(&[Scope::UsersRead]).await;
    let scoped = send(
        &stack,
        "/v1/batch",
        Some(&basic(&reader)),
        &json!({"batch": []}),
    )
    .await;
    assert_eq!(error_of(scoped).await.0, 403);
    let none = send(&stack, "/v1/identify", None, &json!({"userId": "x"})).await;
    assert_eq!(error_of(none).await.0, 401);
    let big = json!({"batch": [{"type": "identify", "userId": "x", "traits": {"pad": "x".repeat(520 * 1024)}}]});
    let over = send(&stack, "/v1/batch", Some(&basic(&key)), &big).await;
    assert_eq!(error_of(over).await.0, 413);
    let message = json!({"batch": [{"type": "identify", "userId": "seg-big", "traits": {"pad": "x".repeat(40 * 1024)}},
                                    {"type": "identify", "userId": "seg-small"}]});
    let one_too_big = send(&stack, "/v1/batch", Some(&basic(&key)), &message).await;
    let answer: Value = one_too_big.json().await.unwrap();
    assert_eq!(
        answer["dropped"][0]["errors"][0]["code"], "too_long",
        "{answer}"
    );
    user_when(&stack, &key, "seg-small", |_| true).await;

    let limited = stack.key_with_rate(&ALL_SCOPES, 1).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = send(&stack, "/v1/identify", Some(&basic(&limited)), &identify).await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn hostile_input_on_segments_routes_is_answered_in_bounds_and_stored_exactly() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let auth = basic(&key);
    // 15,000 messages that are not messages: 200, the first 100 listed, the rest counted.
    let ones = format!("{{\"batch\":[{}1]}}", "1,".repeat(14_999));
    let raw = |body: String, content_type: &str, authorization: Option<&str>| {
        let mut request = stack
            .request(Method::POST, "/v1/batch", None)
            .header("content-type", content_type.to_owned())
            .body(body);
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization.to_owned());
        }
        request.send()
    };
    let response = raw(ones, "application/json", Some(&auth)).await.unwrap();
    assert_eq!(response.status(), 200);
    let answer = response.bytes().await.unwrap();
    assert!(answer.len() < 1024 * 1024, "{} bytes", answer.len());
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["dropped"].as_array().unwrap().len(), 100);
    assert_eq!(answer["dropped_truncated"], 14_900);
    // More messages than 500 KB can hold of storable ones: refused whole, before any
    // per-message work, with the code at the top as RudderStack's libraries read it.
    let flood = format!("{{\"batch\":[{}1]}}", "1,".repeat(200_000));
    let refused = raw(flood, "application/json", Some(&auth)).await.unwrap();
    assert_eq!(refused.status(), 422);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(
        (
            refused["code"].as_str(),
            refused["errors"][0]["field"].as_str()
        ),
        (Some("too_many"), Some("batch"))
    );
    // No key in the headers: a body past 500 KB is not read for one.
    let far = format!(
        r#"{{"batch":[],"pad":"{}","writeKey":"{key}"}}"#,
        "x".repeat(520_000)
    );
    let anonymous = raw(far, "application/json", None).await.unwrap();
    assert_eq!(error_of(anonymous).await.0, 401);
    // Numbers exact or dropped with a reason; ids past 64 bits never merge; a member
    // named twice drops its message.
    let body = r#"{"batch":[
        {"type":"identify","userId":123456789012345678901234567890,"traits":{"plan":"a"}},
        {"type":"identify","userId":123456789012345678901234567891,"traits":{"plan":"b"}},
        {"type":"identify","userId":"seg-tiny","messageId":"t","traits":{"tiny":1e-400}},
        {"type":"identify","userId":"seg-twice","messageId":"d","traits":{"plan":"a","plan":"b"}}
    ]}"#;
    let answer: Value = raw(body.to_owned(), "application/json", Some(&auth))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dropped: Vec<(&str, &str, &str)> = answer["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let error = &d["errors"][0];
            (
                d["messageId"].as_str().unwrap(),
                error["code"].as_str().unwrap(),
                error["field"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        dropped,
        [
            ("t", "invalid_number", "traits.tiny"),
            ("d", "duplicate_field", "traits.plan")
        ]
    );
    let a = user_when(&stack, &key, "123456789012345678901234567890", |_| true).await;
    let b = user_when(&stack, &key, "123456789012345678901234567891", |_| true).await;
    assert_eq!(
        (a["traits"]["plan"].as_str(), b["traits"]["plan"].as_str()),
        (Some("a"), Some("b"))
    );
    // RudderStack's Node library: gzip labelled as a form, the traits in context too.
    let gzipped = {
        use std::io::Write;
        let body = json!({"batch": [{"type": "identify", "userId": "seg-rudder",
            "context": {"traits": {"plan": "team"}}, "originalTimestamp": "2026-01-01T00:00:00Z"}]});
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(body.to_string().as_bytes()).unwrap();
        encoder.finish().unwrap()
    };
    let response = stack
        .request(Method::POST, "/v1/batch", None)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("content-encoding", "gzip")
        .header("authorization", auth.clone())
        .body(gzipped)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    user_when(&stack, &key, "seg-rudder", |u| {
        u["traits"]["plan"] == "team"
    })
    .await;
}

/// Runs one of the drivers of `dev/segment/` (a library that speaks Segment's protocol,
/// from its registry, unchanged, pointed at this stack) and returns its JSON report.
fn drive(command: &mut std::process::Command) -> Value {
    let output = command.output().expect("run the driver");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "the driver printed no report: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(output.status.success() && report["ok"] == true, "{report}");
    report
}

/// What every identify of the drivers stored: email, and their traits mapped.
async fn check_driven(stack: &Stack, key: &str, report: &Value) {
    let ids: Vec<&str> = report["user_ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(ids.len(), 4, "{report}");
    for id in ids {
        let user = user_when(stack, key, id, |u| u["traits"]["plan"] == "pro").await;
        assert_eq!(user["email"], format!("{id}@example.com"));
        assert_eq!(
            user["traits"]["signupDate"], "2024-05-01T12:30:00Z",
            "{user}"
        );
        assert!(
            user["traits"]["company"]
                .as_str()
                .unwrap()
                .starts_with("Acme"),
            "{user}"
        );
        assert!(user["traits"]["name"].is_string(), "{user}");
    }
    for anonymous in report["anonymous_ids"].as_array().unwrap() {
        let stored = stack.get_user(key, anonymous.as_str().unwrap()).await;
        assert_eq!(stored.status(), 404, "an anonymous identify is not stored");
    }
    // The retried batch reached the API twice and was answered 200 both times.
    let retried: Vec<&Value> = report["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["phase"] == "c")
        .collect();
    assert_eq!(retried.len(), 2, "{report}");
    assert!(
        retried.iter().all(|r| r["upstream_status"] == 200),
        "{report}"
    );
}

/// Both drivers, Python's then Node's, with one family's libraries (`--library`) against
/// this stack, each with its library's defaults but for `python_options`; then what
/// their identifies stored.
async fn a_familys_libraries_identify_users_here_unchanged(library: &str, python_options: &[&str]) {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let root = env!("CARGO_MANIFEST_DIR");
    let run = format!("{}-{library}", stack.workspace);
    let python = drive(
        std::process::Command::new(format!("{root}/.venv/bin/python"))
            .arg(format!("{root}/dev/segment/python_driver.py"))
            .args([stack.api.as_str(), key.as_str(), run.as_str()])
            .args(["--library", library])
            .args(python_options),
    );
    check_driven(&stack, &key, &python).await;
    let node = drive(
        std::process::Command::new("node")
            .arg(format!("{root}/dev/segment/node_driver.mjs"))
            .args([stack.api.as_str(), key.as_str(), run.as_str()])
            .args(["--library", library]),
    );
    check_driven(&stack, &key, &node).await;
    eprintln!(
        "{library} libraries: {} {} (gzip {}), {} {} (gzip {})",
        python["library"]["package"],
        python["library"]["version"],
        python["gzip"],
        node["library"]["package"],
        node["library"]["version"],
        node["gzip"]
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn segments_own_libraries_identify_users_here_unchanged() {
    // Python's compresses only when asked: ask, so the gzip path is driven too.
    a_familys_libraries_identify_users_here_unchanged("segment", &["--gzip"]).await;
}

/// RudderStack's libraries speak Segment's protocol with habits of their own
/// (`dev/segment/README.md`): Python's puts an identify's traits only in
/// `context.traits`; Node's sends its gzipped batches as
/// `application/x-www-form-urlencoded`. Both compress by default, as driven here.
#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn rudderstacks_libraries_identify_users_here_unchanged() {
    a_familys_libraries_identify_users_here_unchanged("rudderstack", &[]).await;
}
