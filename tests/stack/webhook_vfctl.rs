//! `vfctl webhooks …` against the local stack, as `make dev` tells a developer to use
//! it: `listen --register` points an endpoint at itself and prints the deliveries it
//! verifies; the other commands call the API with the key given.

use crate::support::{until_working, vfctl, Stack, ALL_SCOPES};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use vibefollow_users::app::webhook_marks::WORKSPACES_KEPT_FOR;
use vibefollow_users::clock::now_millis;
use vibefollow_users::domain::format_millis;

/// `vfctl --local webhooks <args>`, the key in the environment (out of the process list).
fn webhooks(key: &str, args: &[&str]) -> Output {
    vfctl()
        .args(["--local", "webhooks"])
        .args(args)
        .env("VIBEFOLLOW_API_KEY", key)
        .output()
        .expect("run vfctl")
}

/// Each line of stdout as JSON.
fn lines(output: &Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// A child process killed when dropped: a test that fails leaves no listener behind.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn listen_registers_itself_and_prints_what_it_verifies_and_the_api_commands_work() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let since = format_millis(now_millis() - 1_000).unwrap();
    let mut listener = Killed(
        vfctl()
            .args(["--local", "webhooks", "listen", "--register", "cli"])
            .args(["--port", "0", "--count", "2"])
            .env("VIBEFOLLOW_API_KEY", &key)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run vfctl webhooks listen"),
    );
    // Listening once it says so on stderr (bound, then registered).
    let mut stderr = BufReader::new(listener.0.stderr.take().unwrap());
    let mut said = String::new();
    stderr.read_line(&mut said).unwrap();
    let port = said
        .strip_prefix("listening on http://127.0.0.1:")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("{said}"))
        .to_owned();
    let listed = lines(&webhooks(&key, &["list"]));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["url"], format!("http://127.0.0.1:{port}/"));
    tokio::time::sleep(WORKSPACES_KEPT_FOR).await;

    for step in 1..=2 {
        let change = json!({"external_user_id": "u1", "traits": {"step": step}});
        stack.accept(&key, &change).await;
    }
    let printed = until_working(
        &stack,
        &["consumer", "changes", "webhooks"],
        "vfctl printed two deliveries and stopped",
        || {
            let exited = listener.0.try_wait().unwrap();
            async move { exited }
        },
    )
    .await;
    assert!(printed.success());
    let mut stdout = String::new();
    let mut out = listener.0.stdout.take().unwrap();
    std::io::Read::read_to_string(&mut out, &mut stdout).unwrap();
    // A repeat (the same webhook-id) prints too, marked: not one of the two.
    let deliveries: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|line| line.get("repeat").is_none())
        .collect();
    assert_eq!(deliveries.len(), 2, "{stdout}");
    // In lane order (`sequence`); the two versions of the user, the later one possibly
    // first: a change whose intake message SQS hands over after the next change was
    // sent goes late, and its version says so (docs/webhooks.md §2).
    let field = |d: &Value, path: &[&str]| {
        path.iter()
            .fold(d, |value, name| &value[*name])
            .as_u64()
            .unwrap()
    };
    assert!(
        field(&deliveries[0], &["body", "sequence"]) < field(&deliveries[1], &["body", "sequence"]),
        "{stdout}"
    );
    let versions: Vec<u64> = deliveries
        .iter()
        .map(|d| field(d, &["body", "data", "version"]))
        .collect();
    assert_ne!(versions[0], versions[1], "{versions:?}");
    assert!(deliveries
        .iter()
        .all(|d| d["webhook-id"].as_str().unwrap().starts_with("msg_")));

    // Each attempt's line is written after its answer: read until both are there.
    until_working(
        &stack,
        &["webhooks"],
        "two delivered lines in the log",
        || {
            let logged = lines(&webhooks(&key, &["deliveries", "cli", "--limit", "5"]));
            let delivered = logged.iter().filter(|l| l["status"] == "delivered").count();
            async move { (delivered >= 2).then_some(()) }
        },
    )
    .await;
    let replay = lines(&webhooks(&key, &["replay", "cli", "--since", &since]));
    assert!(replay[0]["replay_id"].as_str().unwrap().starts_with("rpl_"));
    let rotated = lines(&webhooks(&key, &["rotate-secret", "cli"]));
    assert!(rotated[0]["secret"].as_str().unwrap().starts_with("whsec_"));
    let refused = webhooks(&key, &["get", "nope"]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("404") && said.contains("not_found"), "{said}");
    assert_eq!(
        lines(&webhooks(&key, &["delete", "cli"]))[0]["accepted"],
        true
    );
    assert!(lines(&webhooks(&key, &["list"])).is_empty());
}
