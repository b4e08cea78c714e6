//! `vfctl users import` against the local stack: NDJSON and typed CSV, the rejected
//! file, and a run killed halfway that resumes without enqueueing any batch twice.

use crate::support::{eventually, user_when, Stack, ALL_SCOPES};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn import_command(stack: &Stack, key: &str, file: &Path, extra: &[&str]) -> Command {
    let mut command = crate::support::vfctl();
    command
        .args(["users", "import"])
        .arg(file)
        .args(["--url", &stack.api])
        .args(extra)
        .env("VIBEFOLLOW_API_KEY", key)
        .env_remove("VIBEFOLLOW_BASE_URL");
    command
}

fn summary(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "vfctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JSON summary on stdout")
}

fn scratch(stack: &Stack, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vf-import-{}", stack.workspace));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn lines_of(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn ndjson_import_lists_refused_users_with_their_line_and_applies_the_rest() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let file = scratch(&stack, "users.ndjson");
    let mut text = String::new();
    for i in 1..=1_200 {
        let line = match i {
            5 => "{not json".to_owned(),
            700 => json!({"external_user_id": "", "traits": {"plan": "pro"}}).to_string(),
            _ => json!({"external_user_id": format!("n-{i}"), "email": format!("n{i}@acme.io"), "traits": {"line": i}}).to_string(),
        };
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(&file, text).unwrap();
    let run = summary(
        &import_command(&stack, &key, &file, &["--batch-size", "500"])
            .output()
            .unwrap(),
    );
    assert_eq!(
        (
            run["users"].as_u64(),
            run["accepted"].as_u64(),
            run["rejected"].as_u64()
        ),
        (Some(1200), Some(1198), Some(2))
    );
    assert_eq!(run["batches"], 3);
    let rejected = lines_of(&PathBuf::from(format!(
        "{}.rejected.ndjson",
        file.display()
    )));
    // Batches finish in any order, and are listed so.
    let mut listed: Vec<(u64, &str, Option<&str>)> = rejected
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["errors"][0]["code"].as_str().unwrap(),
                r["errors"][0]["field"].as_str(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            (5, "invalid_json", None),
            (700, "empty", Some("external_user_id"))
        ]
    );
    let refused_700 = rejected.iter().find(|r| r["line"] == 700).unwrap();
    assert_eq!(
        refused_700["body"]["traits"]["plan"], "pro",
        "the refused body is kept for fixing"
    );
    let user = user_when(&stack, &key, "n-1200", |u| u["traits"]["line"] == 1200).await;
    assert_eq!(user["email"], "n1200@acme.io");

    // Run again: everything is recorded, nothing is sent.
    let again = summary(
        &import_command(&stack, &key, &file, &["--batch-size", "500"])
            .output()
            .unwrap(),
    );
    assert_eq!(
        (again["batches"].as_u64(), again["skipped_batches"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(
        lines_of(&PathBuf::from(format!(
            "{}.rejected.ndjson",
            file.display()
        )))
        .len(),
        2
    );
    // Another batch size cannot reuse this checkpoint.
    let other = import_command(&stack, &key, &file, &["--batch-size", "400"])
        .output()
        .unwrap();
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("checkpoint"));
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn csv_columns_are_typed() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let file = scratch(&stack, "users.csv");
    std::fs::write(
        &file,
        "external_user_id,email,plan,seats:number,active:boolean,tags:json,signupDate\n\
         c-1,ann@acme.io,pro,12,true,\"[\"\"a\"\",2]\",2026-05-17T16:00:00+02:00\n\
         c-2,,,,,,\n\
         c-3,,trial,many,,,\n",
    )
    .unwrap();
    let run = summary(&import_command(&stack, &key, &file, &[]).output().unwrap());
    assert_eq!(
        (run["accepted"].as_u64(), run["rejected"].as_u64()),
        (Some(2), Some(1))
    );
    let user = user_when(&stack, &key, "c-1", |_| true).await;
    assert_eq!(user["email"], "ann@acme.io");
    assert_eq!(
        user["traits"],
        json!({"plan": "pro", "seats": 12, "active": true, "tags": ["a", 2], "signupDate": "2026-05-17T14:00:00Z"})
    );
    user_when(&stack, &key, "c-2", |u| u["traits"] == json!({})).await;
    let rejected = lines_of(&PathBuf::from(format!(
        "{}.rejected.ndjson",
        file.display()
    )));
    assert_eq!(
        (
            rejected[0]["line"].as_u64(),
            rejected[0]["errors"][0]["code"].as_str()
        ),
        (Some(4), Some("invalid_csv"))
    );
}

/// Batches this workspace's api requests enqueued (not replays), from the functions'
/// request log lines.
fn enqueued_batches(workspace: &str) -> usize {
    let path = std::env::var("VF_FUNCTION_LOG").expect("VF_FUNCTION_LOG from the local stack");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| {
            line["workspace"] == workspace
                && line["route"] == "POST /api/v1/users/batch"
                && line["status"] == 202
                && line["replayed"] == false
        })
        .count()
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_killed_import_resumes_and_enqueues_every_batch_exactly_once() {
    let stack = Stack::new().await;
    // 30 batches of 100 users, each counting as one request: about 4 batches a second.
    let key = stack.key_with_rate(&ALL_SCOPES, 4).await;
    let file = scratch(&stack, "resume.ndjson");
    let text: String = (0..3_000)
        .map(|i| {
            json!({"external_user_id": format!("r-{i}"), "traits": {"i": i}}).to_string() + "\n"
        })
        .collect();
    std::fs::write(&file, text).unwrap();
    let args = ["--batch-size", "100", "--concurrency", "2"];
    let mut first = import_command(&stack, &key, &file, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let checkpoint = PathBuf::from(format!("{}.checkpoint", file.display()));
    let halfway = eventually(Duration::from_secs(30), || async {
        (lines_of(&checkpoint).len() > 10).then_some(())
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(halfway.is_some(), "the first run made no progress");
    let done_before = lines_of(&checkpoint).len() - 1;
    assert!(
        done_before < 30,
        "the first run finished before it was killed"
    );

    let second = summary(&import_command(&stack, &key, &file, &args).output().unwrap());
    assert_eq!(second["skipped_batches"].as_u64(), Some(done_before as u64));
    assert_eq!(second["batches"].as_u64(), Some(30 - done_before as u64));
    assert!(
        second["replayed_batches"].as_u64().unwrap() <= 2,
        "only batches in flight at the kill are resent"
    );
    assert_eq!(second["users"], 3000);
    user_when(&stack, &key, "r-2999", |u| u["traits"]["i"] == 2999).await;
    let once = eventually(Duration::from_secs(10), || async {
        (enqueued_batches(&stack.workspace) >= 30).then_some(())
    })
    .await;
    assert!(once.is_some(), "not every batch was enqueued");
    assert_eq!(
        enqueued_batches(&stack.workspace),
        30,
        "a batch was enqueued twice"
    );
}
