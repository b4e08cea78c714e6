//! The api hot path as a workload, shared by the criterion benches and the
//! instruction-count driver (`hot_path_count`, run under callgrind by `make bench-full`).

use serde_json::json;
use std::hint::black_box;
use vibefollow_users::aws::sqs::encode;
use vibefollow_users::contract::parse_upsert;
use vibefollow_users::domain::{Stamp, UpsertMessage, MESSAGE_VERSION};

/// A typical identify call of about `size` bytes: known traits plus custom ones.
pub fn body_of(size: usize) -> Vec<u8> {
    let mut traits = json!({
        "name": "Jane Doe", "plan": "trial", "signupDate": "2026-05-17T16:00:00+02:00",
        "company": "Acme Inc.", "role": "engineering_lead",
        "favoriteColor": "teal", "seats": 12, "beta": true, "tags": ["a", "b", "c"],
        "address": {"city": "Lisbon", "zip": "1000-001"}
    });
    let mut i = 0;
    while json!({"external_user_id": "usr_42", "email": "jane@acme.io", "traits": traits})
        .to_string()
        .len()
        < size
    {
        traits[format!("custom_{i}")] = json!(format!(
            "value number {i} {}",
            "with some longer text ".repeat(6)
        ));
        i += 1;
    }
    json!({"external_user_id": "usr_42", "email": "jane@acme.io", "traits": traits})
        .to_string()
        .into_bytes()
}

/// Everything the api function does to a POST between receiving and sending to SQS.
/// The service's clock in the benches: any time; bodies carry no `timestamp`.
const NOW: i64 = 1_800_000_000_000;

pub fn accept(body: &[u8]) -> String {
    let upsert = parse_upsert(body, NOW).expect("valid body");
    let message = UpsertMessage {
        version: MESSAGE_VERSION,
        workspace_id: "ws".into(),
        external_user_id: upsert.external_user_id,
        stamp: Stamp::new(1_795_773_600_000, "0b9e1d5c-1a52-4bde-9a55-7c6b1a3e0001"),
        changes: upsert.changes,
        erase: false,
    };
    black_box(upsert.body_hash);
    encode(&message)
}
