//! `vfctl keys …` against the local stack: the key is printed once, alone; lists never
//! show it; revoked keys are refused; bad arguments fail clearly.

use crate::support::{error_of, Stack};
use serde_json::json;
use std::process::Output;

fn vfctl(args: &[&str]) -> Output {
    crate::support::vfctl()
        .arg("--local")
        .args(args)
        .output()
        .expect("run vfctl")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn create_list_revoke_round_trip() {
    let stack = Stack::new().await;
    let workspace = stack.workspace.as_str();
    let created = vfctl(&[
        "keys",
        "create",
        "--workspace",
        workspace,
        "--scopes",
        "users:write,users:read",
    ]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let key = stdout(&created).trim().to_owned();
    assert!(
        key.starts_with("sk_live_") && !key.contains(char::is_whitespace),
        "stdout is the key alone: {key:?}"
    );
    stack.accept(&key, &json!({"external_user_id": "u"})).await;

    let listed = stdout(&vfctl(&["keys", "list", "--workspace", workspace]));
    assert!(!listed.contains(&key[8..]), "list shows a key");
    assert!(
        listed.contains("users:write,users:read") && listed.contains("default"),
        "{listed}"
    );
    let key_id = listed
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();

    let second = stdout(&vfctl(&[
        "keys",
        "create",
        "--workspace",
        workspace,
        "--scopes",
        "users:read",
        "--rate-limit",
        "7",
    ]));
    let revoked = vfctl(&["keys", "revoke", second.trim()]);
    assert!(revoked.status.success());
    assert_eq!(
        error_of(stack.get_user(second.trim(), "u").await).await.1,
        ["invalid_api_key"]
    );

    assert!(vfctl(&["keys", "revoke", &key_id]).status.success());
    assert!(stdout(&vfctl(&["keys", "list", "--workspace", workspace])).contains("true"));
}

/// vfctl as used against AWS: no `--local`, the table named by a stack's outputs.
fn vfctl_for_stack(args: &[&str]) -> Output {
    crate::support::vfctl()
        .args(args)
        .env_remove("API_KEYS_TABLE")
        .output()
        .expect("run vfctl")
}

async fn create_stack(stack: &Stack, name: &str, outputs: serde_json::Value) {
    let sdk = vibefollow_users::aws::sdk_config().await;
    let template = json!({
        "Resources": {"Marker": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": name}}},
        "Outputs": outputs,
    });
    let created = aws_sdk_cloudformation::Client::new(&sdk)
        .create_stack()
        .stack_name(name)
        .template_body(template.to_string())
        .send()
        .await;
    // The name is this test's own: "already exists" is the SDK's retry of a create whose
    // answer came too late, which is done.
    match created {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_already_exists_exception()) => {}
        Err(e) => panic!(
            "create stack {name} in the emulator: {e:?} ({})",
            stack.workspace
        ),
    }
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn without_local_the_stack_outputs_name_the_table() {
    let stack = Stack::new().await;
    let name = format!("vf-{}", &stack.workspace[1..12]);
    let table = &stack.resources.api_keys_table;
    create_stack(&stack, &name, json!({"ApiKeysTableName": {"Value": table}})).await;
    let created = vfctl_for_stack(&[
        "--stack",
        &name,
        "--region",
        "us-east-1",
        "keys",
        "create",
        "--workspace",
        &stack.workspace,
        "--scopes",
        "users:read",
    ]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let key = stdout(&created).trim().to_owned();
    // The key landed in the stack's table: the api knows it (404, not 401).
    assert_eq!(stack.get_user(&key, "nobody").await.status(), 404);

    let missing = vfctl_for_stack(&[
        "--stack",
        "no-such-stack",
        "--region",
        "us-east-1",
        "keys",
        "list",
        "--workspace",
        "w",
    ]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("stack no-such-stack not found"));

    let other = format!("{name}-other");
    create_stack(&stack, &other, json!({"Something": {"Value": "x"}})).await;
    let no_output = vfctl_for_stack(&["--stack", &other, "keys", "list", "--workspace", "w"]);
    assert!(!no_output.status.success());
    assert!(
        String::from_utf8_lossy(&no_output.stderr).contains("has no output ApiKeysTableName"),
        "{}",
        String::from_utf8_lossy(&no_output.stderr)
    );
}
