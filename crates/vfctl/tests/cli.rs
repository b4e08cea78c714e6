//! `vfctl` refuses bad arguments before it reads any configuration or talks to
//! anything: a message that names the problem on stderr, nothing on stdout.

use std::process::{Command, Output};

fn vfctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vfctl"))
        .arg("--local")
        .args(args)
        .output()
        .expect("run vfctl")
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let create = ["keys", "create", "--workspace"];
    // Each with what the message must name.
    let cases: [(Vec<&str>, &str); 4] = [
        (
            [&create[..], &["bad workspace", "--scopes", "users:read"]].concat(),
            "bad workspace",
        ),
        (
            [&create[..], &["w", "--scopes", "users:admin"]].concat(),
            "users:admin",
        ),
        (
            [
                &create[..],
                &["w", "--scopes", "users:read", "--rate-limit", "0"],
            ]
            .concat(),
            "rate-limit",
        ),
        (vec!["keys", "revoke", "not-a-key"], "not-a-key"),
    ];
    for (args, named) in cases {
        // No local stack is needed: the arguments fail before its environment is read.
        let output = vfctl(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("make dev"),
            "{args:?} failed for want of a stack: {stderr}"
        );
        assert!(output.stdout.is_empty(), "{args:?} printed to stdout");
    }
}
