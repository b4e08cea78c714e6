//! `vfctl keys …` against the local stack: the key is printed once, alone; lists never
//! show it; revoked keys are refused; bad arguments fail clearly.

mod common;

use common::{error_of, Stack};
use serde_json::json;
use std::process::{Command, Output};

fn vfctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vfctl"))
        .arg("--local")
        .args(args)
        .output()
        .expect("run vfctl")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
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

#[test]
fn bad_arguments_fail_with_a_message() {
    let cases: [&[&str]; 4] = [
        &[
            "keys",
            "create",
            "--workspace",
            "bad workspace",
            "--scopes",
            "users:read",
        ],
        &[
            "keys",
            "create",
            "--workspace",
            "w",
            "--scopes",
            "users:admin",
        ],
        &[
            "keys",
            "create",
            "--workspace",
            "w",
            "--scopes",
            "users:read",
            "--rate-limit",
            "0",
        ],
        &["keys", "revoke", "not-a-key"],
    ];
    for args in cases {
        let output = vfctl(args);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(!output.stderr.is_empty(), "{args:?} said nothing");
        assert!(output.stdout.is_empty(), "{args:?} printed to stdout");
    }
}
