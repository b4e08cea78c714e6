//! The CPU work on the hot paths, without I/O: what the api function does to a request
//! before its AWS calls, and what the consumer does to a batch between read and write.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;
use std::hint::black_box;

use vibefollow_bench::{accept, body_of};
use vibefollow_users::aws::sqs::{decode, encode};
use vibefollow_users::domain::auth::{bearer_key, key_hash};
use vibefollow_users::domain::{
    Changes, ProfileField, Stamp, UpsertMessage, UserProfile, MESSAGE_VERSION,
};

fn api_hot_path(c: &mut Criterion) {
    let header = b"Bearer sk_live_abcdefghijklmnopqrstuvwxyz0123456789ABCD";
    c.bench_function("auth header parse + key hash", |b| {
        b.iter(|| key_hash(bearer_key(Some(black_box(header))).unwrap()))
    });
    let mut group = c.benchmark_group("body parse + validate + hash + message");
    for (name, size) in [("1 KB", 1024), ("32 KB", 32 * 1024 - 64)] {
        let body = body_of(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| b.iter(|| accept(black_box(&body))));
    }
    group.finish();

    // The parts of the 1 KB case, to see where the time goes.
    let body = body_of(1024);
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut parts = c.benchmark_group("1 KB parts");
    parts.bench_function("JSON parse only", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap())
    });
    parts.bench_function("canonical hash only", |b| {
        b.iter(|| vibefollow_users::contract::body_hash(black_box(&value)))
    });
    let message = accept(&body);
    parts.bench_function("message JSON only", |b| {
        let parsed = decode(&message).unwrap().remove(0);
        b.iter(|| encode(black_box(&parsed)))
    });
    parts.finish();
}

fn consumer_merge(c: &mut Criterion) {
    let messages: Vec<String> = (0..10)
        .map(|i| {
            let mut changes = Changes::default();
            changes
                .profile
                .insert(ProfileField::Plan, Some(format!("plan-{i}")));
            changes
                .profile
                .insert(ProfileField::Name, Some("Jane Doe".into()));
            changes.traits.insert(
                format!("t{}", i % 3),
                Some(json!({"n": i, "list": [1, 2, 3]})),
            );
            encode(&UpsertMessage {
                version: MESSAGE_VERSION,
                workspace_id: "ws".into(),
                external_user_id: "usr_42".into(),
                stamp: Stamp::new(1_795_773_600_000 + i, format!("req-{i}")),
                changes,
                erase: false,
            })
        })
        .collect();
    c.bench_function("consumer: parse + merge a batch of 10 for one user", |b| {
        b.iter_batched(
            UserProfile::default,
            |mut user| {
                for body in &messages {
                    for message in decode(black_box(body)).unwrap() {
                        user.apply(&message.stamp, &message.changes);
                    }
                }
                user
            },
            BatchSize::SmallInput,
        )
    });
}

/// One 32 KB upsert (a 31 KB custom trait) applied to a profile whose trait budget is
/// full: the budget check sums the stored traits, then refuses the new one.
fn full_profile_merge(c: &mut Criterion) {
    let stamp = |i: i64| Stamp::new(1_795_773_600_000 + i, format!("req-{i}"));
    let mut full = UserProfile::default();
    for i in 0..8 {
        let mut fill = Changes::default();
        fill.traits
            .insert(format!("fill{i}"), Some(json!("v".repeat(31_000))));
        full.apply(&stamp(i), &fill);
    }
    let mut upsert = Changes::default();
    upsert
        .traits
        .insert("one_more".into(), Some(json!("w".repeat(31_000))));
    upsert
        .profile
        .insert(ProfileField::Plan, Some("pro".into()));
    c.bench_function("consumer: a 32 KB upsert onto a full profile", |b| {
        b.iter_batched(
            || full.clone(),
            |mut user| {
                user.apply(&stamp(100), black_box(&upsert));
                user
            },
            BatchSize::SmallInput,
        )
    });
}

/// A batch of 100 identifies: ours (`POST /api/v1/users/batch`) and Segment's
/// (`POST /v1/batch`), parsed and validated into the same upserts. What follows (the
/// rate check, packing, SQS) is the same code for both.
fn batch_of_100(c: &mut Criterion) {
    const NOW: i64 = 1_800_000_000_000;
    let ours = json!({"users": (0..100).map(|i| json!({
        "external_user_id": format!("usr_{i}"), "email": format!("u{i}@acme.io"),
        "traits": {"name": "Jane Doe", "plan": "pro", "company": "Acme", "signupDate": "2026-05-17T14:00:00Z", "seats": i}
    })).collect::<Vec<_>>()})
    .to_string();
    let segment = json!({"sentAt": "2027-01-15T08:00:00.000Z", "batch": (0..100).map(|i| json!({
        "type": "identify", "userId": format!("usr_{i}"), "messageId": format!("m-{i}"),
        "timestamp": "2027-01-15T07:59:59.000Z", "integrations": {},
        "context": {"library": {"name": "analytics-node", "version": "3.1.0"}},
        "traits": {"email": format!("u{i}@acme.io"), "name": "Jane Doe", "plan": "pro",
                   "company": {"name": "Acme"}, "createdAt": "2026-05-17T14:00:00Z", "seats": i}
    })).collect::<Vec<_>>()})
    .to_string();
    let mut group = c.benchmark_group("batch of 100 identifies: parse + validate");
    group.bench_function("ours", |b| {
        b.iter(|| vibefollow_users::contract::parse_batch(black_box(ours.as_bytes()), NOW).unwrap())
    });
    group.bench_function("Segment's", |b| {
        b.iter(|| {
            vibefollow_users::contract::parse_segment_batch(black_box(segment.as_bytes()), NOW)
                .unwrap()
        })
    });
    group.finish();
}

/// One user's evaluation against a workspace's rules at the bounds: 100 audiences, each
/// a rule as large as a `PUT` takes (32 KiB), `any` of 50 conditions that are all false
/// (so every one is evaluated). The costliest condition is a substring search: a
/// 450-character needle that almost matches everywhere in a 30 KB trait. Lists cost a
/// lookup each (`ValueSet`), whatever their length. What a stream record of the worst
/// workspace costs in CPU, beside the compile its revision costs once per instance.
fn audience_evaluation_at_the_bounds(c: &mut Criterion) {
    use vibefollow_users::contract::parse_rule;
    const NOW: i64 = 1_800_000_000_000;
    let needle = format!("{}x", "y".repeat(449));
    let list: Vec<String> = (0..1_000).map(|i| format!("v{i:03}")).collect();
    let condition = |i: usize| match i % 10 {
        // One list of 1,000 values per rule: as many as 32 KiB holds beside the rest.
        0 if i == 0 => json!({"field": "email", "op": "in", "value": list}),
        _ => json!({"field": "bio", "op": "contains", "value": needle}),
    };
    let rules: Vec<serde_json::Value> = (0..100)
        .map(|_| json!({"any": (0..50).map(condition).collect::<Vec<_>>()}))
        .collect();
    let largest = rules.iter().map(|r| r.to_string().len()).max().unwrap_or(0);
    assert!(largest <= 32 * 1024, "a rule of {largest} bytes");
    let mut fields = serde_json::Map::new();
    fields.insert(
        "email".into(),
        json!(format!("{}@acme.io", "J".repeat(240))),
    );
    fields.insert("bio".into(), json!("y".repeat(30_000)));
    let mut group = c.benchmark_group("audiences at the bounds (100 rules × 50 conditions)");
    group.sample_size(10);
    group.bench_function("compile the workspace's rules (once per revision)", |b| {
        b.iter(|| {
            rules
                .iter()
                .map(|rule| parse_rule(black_box(rule)).unwrap())
                .collect::<Vec<_>>()
        })
    });
    let compiled: Vec<_> = rules.iter().map(|rule| parse_rule(rule).unwrap()).collect();
    assert!(
        compiled.iter().all(|rule| !rule.matches(&fields, NOW)),
        "all evaluated"
    );
    group.bench_function("evaluate one user (per change)", |b| {
        b.iter(|| {
            compiled
                .iter()
                .filter(|rule| rule.matches(black_box(&fields), NOW))
                .count()
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    api_hot_path,
    consumer_merge,
    full_profile_merge,
    batch_of_100,
    audience_evaluation_at_the_bounds
);
criterion_main!(benches);
