//! Webhook deliveries through the whole local stack (`docs/webhooks.md` §1–4): an
//! upsert's change event goes from the bus through the intake queue, the fan-out and a
//! lane to a listener on this machine, signed to Standard Webhooks: every delivery is
//! verified by the specification's own libraries, from PyPI and npm, unchanged, across
//! a rotation. A later event waits while an earlier one is retried (`Retry-After`);
//! no body holds PII. A 410 disables an endpoint, and the workspace's other endpoint
//! hears of it; a replay sends what it missed.

use crate::support::{until_working, Stack, ALL_SCOPES};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vibefollow_users::app::deliveries::ENDPOINTS_KEPT_FOR;
use vibefollow_users::app::ports::Lanes;
use vibefollow_users::app::webhook_marks::WORKSPACES_KEPT_FOR;
use vibefollow_users::clock::now_millis;
use vibefollow_users::domain::format_millis;

/// A request as the listener received it: lower-case header names.
#[derive(Debug, Clone)]
struct Received {
    headers: BTreeMap<String, String>,
    body: String,
}

impl Received {
    fn id(&self) -> &str {
        self.headers.get("webhook-id").map_or("", String::as_str)
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A customer's endpoint on loopback: answers with `status` as it is at each request
/// (200, 410, or 503 with `Retry-After: 1`); keeps what it received, in order.
async fn listener(status: Arc<AtomicU16>) -> (u16, Arc<Mutex<Vec<Received>>>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = socket.accept().await {
            let (kept, status) = (Arc::clone(&kept), Arc::clone(&status));
            tokio::spawn(async move {
                let Some(request) = read_request(&mut stream).await else {
                    return;
                };
                kept.lock().unwrap().push(request);
                let answer = match status.load(Ordering::SeqCst) {
                    503 => "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1",
                    410 => "HTTP/1.1 410 Gone",
                    _ => "HTTP/1.1 200 OK",
                };
                let reply = format!("{answer}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    (port, received)
}

/// One HTTP/1.1 request: its head, then as many body bytes as it announces.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut bytes = Vec::new();
    let mut buffer = [0; 8192];
    loop {
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 {
            return None;
        }
        bytes.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let headers: BTreeMap<String, String> = text[..end]
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_owned()))
            .collect();
        let length: usize = headers
            .get("content-length")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if bytes.len() >= end + 4 + length {
            let body = String::from_utf8_lossy(&bytes[end + 4..end + 4 + length]).into_owned();
            return Some(Received { headers, body });
        }
    }
}

/// Runs a verifier of `dev/webhooks/` over `deliveries` signed with `secret`; its report.
fn verified(command: &mut std::process::Command, secret: &str, deliveries: &[Received]) -> Value {
    let input = json!({
        "secret": secret,
        "deliveries": deliveries.iter().map(|d| json!({"headers": d.headers, "body": d.body})).collect::<Vec<_>>(),
    });
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the verifier");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Both libraries verify every delivery with `secret`.
fn both_libraries_verify(secret: &str, deliveries: &[Received]) {
    let root = env!("CARGO_MANIFEST_DIR");
    let python = verified(
        std::process::Command::new(format!("{root}/.venv/bin/python"))
            .arg(format!("{root}/dev/webhooks/verify.py")),
        secret,
        deliveries,
    );
    let node = verified(
        std::process::Command::new("node").arg(format!("{root}/dev/webhooks/verify.mjs")),
        secret,
        deliveries,
    );
    for report in [python, node] {
        assert_eq!(
            report["verified"].as_u64(),
            Some(deliveries.len() as u64),
            "{report}"
        );
        assert_eq!(report["library"]["version"], "1.3.0", "{report}");
    }
}

/// The secret an answer of `status` shows.
async fn secret_of(answer: reqwest::Response, status: u16) -> String {
    assert_eq!(answer.status(), status);
    let body: Value = answer.json().await.unwrap();
    body["data"]["secret"].as_str().unwrap().to_owned()
}

/// What the listener received, once it holds `distinct` messages (by `webhook-id`).
async fn until_received(
    stack: &Stack,
    received: &Arc<Mutex<Vec<Received>>>,
    distinct: usize,
) -> Vec<Received> {
    until_working(
        stack,
        &["consumer", "changes", "webhooks"],
        &format!("{distinct} webhook messages received"),
        || async {
            let all = received.lock().unwrap().clone();
            let mut ids: Vec<&str> = all.iter().map(Received::id).collect();
            ids.sort_unstable();
            ids.dedup();
            (ids.len() >= distinct).then(|| all.clone())
        },
    )
    .await
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn changes_reach_the_customer_s_endpoint_signed_in_order_and_without_pii() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let status = Arc::new(AtomicU16::new(503));
    let (port, received) = listener(Arc::clone(&status)).await;
    let secret = stack.subscribe(&key, "crm", port, &["user.changed"]).await;
    // The contract's bound for a new endpoint's workspace to be marked: every producer
    // instance's list of workspaces with webhooks was read since the `PUT` (wall clock,
    // the same on any machine).
    tokio::time::sleep(WORKSPACES_KEPT_FOR).await;

    // A change of one user, refused (503, Retry-After: 1) and retried while two more
    // changes come: they wait in its lane, in the user's order whatever order the bus
    // and the intake queue gave them.
    let change = |step: u64| json!({"external_user_id": "u1", "email": "jane@acme.io", "traits": {"step": step}});
    stack.accept(&key, &change(1)).await;
    until_received(&stack, &received, 1).await;
    for step in 2..=3 {
        stack.accept(&key, &change(step)).await;
    }
    let lanes = stack.lanes();
    until_working(
        &stack,
        &["consumer", "changes", "webhooks"],
        "two changes waiting behind the first",
        || async {
            let head = lanes.head(&stack.lane("u1")).await.ok()?;
            (head.behind.len() == 2).then_some(())
        },
    )
    .await;
    let failing_since = until_working(&stack, &["webhooks"], "the streak recorded", || async {
        let (_, shown) = stack.webhook(&key, "crm").await;
        shown["data"]["failing_since"].as_str().map(str::to_owned)
    })
    .await;
    assert!(failing_since.ends_with('Z'), "{failing_since}");
    status.store(200, Ordering::SeqCst);
    let all = until_working(&stack, &["webhooks"], "the endpoint recovered", || async {
        let all = received.lock().unwrap().clone();
        let others = all.iter().filter(|r| r.id() != all[0].id()).count();
        (others == 2).then_some(all)
    })
    .await;

    let (_, shown) = stack.webhook(&key, "crm").await;
    assert_eq!(
        shown["data"]["failing_since"],
        Value::Null,
        "a 2xx ended it"
    );
    assert_eq!(shown["data"]["status"], "enabled");
    // The attempt log, newest first: the first change's refusals, then its delivery.
    let log_path = "/api/v1/webhooks/crm/deliveries?limit=100";
    let (status, log) = stack.webhook_call(Method::GET, &key, log_path).await;
    assert_eq!(status, 200, "{log}");
    let first: Vec<&Value> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|line| line["webhook_message_id"] == all[0].id())
        .collect();
    let last = first.last().unwrap();
    assert_eq!(
        (&last["status"], &last["http_status"]),
        (&json!("retrying"), &json!(503)),
        "its first attempt: {log}"
    );
    assert!(last["next_attempt_at"].is_string(), "{log}");
    assert_eq!(
        (&first[0]["status"], &first[0]["http_status"]),
        (&json!("delivered"), &json!(200)),
        "{log}"
    );
    assert!(first[0]["latency_ms"].as_i64().is_some(), "{log}");

    // The first was attempted until it was delivered, before any other was.
    let retried = all.iter().take_while(|r| r.id() == all[0].id()).count();
    assert!(retried >= 2, "{all:#?}");
    let first_receipts: Vec<&Received> = all[retried - 1..].iter().collect();
    let bodies: Vec<Value> = first_receipts.iter().map(|r| r.json()).collect();
    let versions: Vec<i64> = bodies
        .iter()
        .map(|b| b["data"]["version"].as_i64().unwrap())
        .collect();
    let sequences: Vec<i64> = bodies
        .iter()
        .map(|b| b["sequence"].as_i64().unwrap())
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "user versions in order: {versions:?}"
    );
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "sequences in order: {sequences:?}"
    );
    for (delivery, body) in first_receipts.iter().zip(&bodies) {
        assert_eq!(body["type"], "user.changed");
        assert_eq!(body["webhook_id"], "crm");
        assert_eq!(body["data"]["external_user_id"], "u1");
        assert!(
            !delivery.body.contains("acme"),
            "no email: {}",
            delivery.body
        );
        assert_eq!(
            delivery.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
    }
    both_libraries_verify(&secret, &all);

    // After a rotation both secrets sign: receivers holding either verify.
    let rotated = stack
        .request(
            Method::POST,
            "/api/v1/webhooks/crm/rotate-secret",
            Some(&key),
        )
        .send()
        .await
        .unwrap();
    let new_secret = secret_of(rotated, 200).await;
    stack
        .accept(
            &key,
            &json!({"external_user_id": "u1", "traits": {"step": 4}}),
        )
        .await;
    let all = until_received(&stack, &received, 4).await;
    let after = &all[all.len() - 1..];
    assert_eq!(after[0].json()["data"]["changed"], json!(["step"]));
    assert_eq!(
        after[0].headers["webhook-signature"].split(' ').count(),
        2,
        "two signatures during a rotation"
    );
    both_libraries_verify(&new_secret, after);
    both_libraries_verify(&secret, after);
}

impl Stack {
    /// `GET /api/v1/webhooks/{id}`: its status and body.
    async fn webhook(&self, key: &str, id: &str) -> (u16, Value) {
        let path = format!("/api/v1/webhooks/{id}");
        self.webhook_call(Method::GET, key, &path).await
    }

    /// `PUT`s endpoint `id` to the listener on `port` for `events`; its secret if new.
    async fn subscribe(&self, key: &str, id: &str, port: u16, events: &[&str]) -> String {
        let body = json!({"url": format!("http://127.0.0.1:{port}/hooks"), "events": events});
        let answer = self.put_webhook(key, id, &body).await;
        let status = answer.status().as_u16();
        assert!(status == 200 || status == 201, "PUT {id}: {status}");
        let shown: Value = answer.json().await.unwrap();
        // Shown on creation only: a replacement keeps its secret.
        shown["data"]["secret"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_410_disables_the_endpoint_at_once_and_the_workspace_s_other_endpoint_is_told() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let gone_status = Arc::new(AtomicU16::new(410));
    let (gone_port, gone_received) = listener(Arc::clone(&gone_status)).await;
    let (ops_port, ops_received) = listener(Arc::new(AtomicU16::new(200))).await;
    let since = format_millis(now_millis() - 1_000);
    let crm_secret = stack
        .subscribe(&key, "crm", gone_port, &["user.changed"])
        .await;
    let events = ["user.changed", "webhook.disabled"];
    let ops_secret = stack.subscribe(&key, "ops", ops_port, &events).await;
    tokio::time::sleep(WORKSPACES_KEPT_FOR).await;

    let change = |step: u64| json!({"external_user_id": "u1", "traits": {"step": step}});
    stack.accept(&key, &change(1)).await;
    // ops: the change, then crm's disabling (its lane is not the user's: either order).
    let told = until_received(&stack, &ops_received, 2).await;
    let disabled = told
        .iter()
        .find(|r| r.json()["type"] == "webhook.disabled")
        .expect("webhook.disabled")
        .json();
    assert_eq!(disabled["webhook_id"], "ops");
    assert_eq!(disabled["data"]["webhook_id"], "crm");
    assert_eq!(disabled["data"]["reason"], "gone");
    both_libraries_verify(&ops_secret, &told);
    let (status, shown) = stack.webhook(&key, "crm").await;
    assert_eq!(status, 200);
    assert_eq!(shown["data"]["status"], "disabled");
    assert_eq!(shown["data"]["disabled_reason"], "gone");
    assert_eq!(
        shown["data"]["disabled_at"],
        disabled["data"]["disabled_at"]
    );

    // While disabled, crm takes nothing: ops receiving change 2 shows it fanned out.
    stack.accept(&key, &change(2)).await;
    until_received(&stack, &ops_received, 3).await;

    // A `PUT` enables it again; once every webhooks instance has read the endpoint
    // afresh (wall clock, the same on any machine), the next change reaches it.
    gone_status.store(200, Ordering::SeqCst);
    stack
        .subscribe(&key, "crm", gone_port, &["user.changed"])
        .await;
    let (_, shown) = stack.webhook(&key, "crm").await;
    assert_eq!(shown["data"]["status"], "enabled");
    assert_eq!(shown["data"]["disabled_reason"], Value::Null);
    tokio::time::sleep(ENDPOINTS_KEPT_FOR).await;
    stack.accept(&key, &change(3)).await;
    let crm = until_received(&stack, &gone_received, 2).await;
    let steps: Vec<Value> = crm
        .iter()
        .map(|r| r.json()["data"]["changed"].clone())
        .collect();
    assert_eq!(
        crm.len(),
        2,
        "one attempt answered 410, then change 3: {steps:?}"
    );
    let versions: Vec<i64> = crm
        .iter()
        .map(|r| r.json()["data"]["version"].as_i64().unwrap())
        .collect();
    assert!(versions[0] < versions[1], "{versions:?}");

    // A replay of what crm was given up sends change 1 (answered 410) and change 2
    // (missed while disabled) again, in order, under the ids ops got them by.
    let replay = stack
        .request(Method::POST, "/api/v1/webhooks/crm/replay", Some(&key))
        .json(&json!({"since": since, "status": "given_up"}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status().as_u16(), 202);
    let crm = until_received(&stack, &gone_received, 3).await;
    let ops_changes: Vec<String> = ops_received
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.json()["type"] == "user.changed")
        .map(|r| r.id().to_owned())
        .collect();
    let replayed: Vec<&str> = crm[2..].iter().map(Received::id).collect();
    assert_eq!(replayed, ops_changes[..2], "changes 1 and 2, once each");
    let sequence = |r: &Received| r.json()["sequence"].as_u64().unwrap();
    assert!(crm[2..].iter().all(|r| sequence(r) > sequence(&crm[1])));
    both_libraries_verify(&crm_secret, &crm[2..]);
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn an_endpoint_that_asks_for_the_profile_gets_it_signed_as_read_at_the_attempt() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let (port, received) = listener(Arc::new(AtomicU16::new(200))).await;
    let body = json!({
        "url": format!("http://127.0.0.1:{port}/hooks"),
        "events": ["user.changed"],
        "include": ["profile"],
    });
    let put = stack.put_webhook(&key, "crm", &body).await;
    let secret = secret_of(put, 201).await;
    tokio::time::sleep(WORKSPACES_KEPT_FOR).await;

    let change =
        json!({"external_user_id": "u1", "email": "Jane@Acme.io", "traits": {"plan": "trial"}});
    stack.accept(&key, &change).await;
    let [delivery] = until_received(&stack, &received, 1)
        .await
        .try_into()
        .unwrap();
    let profile = &delivery.json()["data"]["profile"];
    assert_eq!(profile["email"], "Jane@Acme.io", "{profile}");
    assert_eq!(profile["traits"]["plan"], "trial");
    assert_eq!(profile["version"], delivery.json()["data"]["version"]);
    both_libraries_verify(&secret, &[delivery]);

    let log_path = "/api/v1/webhooks/crm/deliveries";
    let (status, log) = stack.webhook_call(Method::GET, &key, log_path).await;
    assert_eq!(status, 200);
    assert_eq!(log["data"][0]["status"], "delivered", "{log}");
}
