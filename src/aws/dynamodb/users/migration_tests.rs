//! The move from format 1 (attributes, `legacy.rs`) to format 2 (the `profile`
//! document): items written by the code before it (`tests/fixtures/users_v1.json`,
//! captured from it: each user's writes, its item and what a read answered) read as
//! they answered, and merged with later writes, in any order and in either format,
//! equal the writes applied in stamp order.

use super::item::tests::{
    deliver, equals_reference, item_size, legacy_item_from_user, messages_of, shuffled,
    within_once_bound, write, ACCEPTED, DOCUMENT,
};
use super::item::{item_from_user, user_from_item, PROFILE, PROFILE_VERSION, VERSION};
use super::legacy::STAMPS;
use super::*;
use crate::app::ports::StoredUser;
use crate::domain::{user_view, Stamp, UpsertMessage};
use proptest::prelude::*;
use serde_json::json;
use std::sync::LazyLock;

struct Fixture {
    item: Item,
    /// What a read answered (`None`: erased).
    view: Option<Value>,
    stamped: Vec<(Stamp, Option<Value>)>,
    messages: Vec<UpsertMessage>,
}

static FIXTURES: LazyLock<Vec<Fixture>> = LazyLock::new(|| {
    let cases: Vec<Value> =
        serde_json::from_str(include_str!("../../../../tests/fixtures/users_v1.json")).unwrap();
    cases
        .into_iter()
        .map(|case| {
            let item: serde_dynamo::Item = serde_json::from_value(case["item"].clone()).unwrap();
            let writes = case["writes"].as_array().unwrap();
            let bodies: Vec<Option<Value>> = writes
                .iter()
                .map(|w| Some(w["body"].clone()).filter(|b| !b.is_null()))
                .collect();
            let (stamped, messages) = messages_of(
                &bodies,
                |i| writes[i]["accepted_at"].as_i64().unwrap(),
                |i| writes[i]["request_id"].as_str().unwrap().to_owned(),
            );
            Fixture {
                item: item.into(),
                view: Some(case["view"].clone()).filter(|v| !v.is_null()),
                stamped,
                messages,
            }
        })
        .collect()
});

fn without_version(mut item: Item) -> Item {
    item.remove(VERSION);
    item
}

#[test]
fn format_1_items_read_as_they_answered_and_are_rewritten_in_format_2() {
    assert_eq!(FIXTURES.len(), 61);
    let (mut before, mut after) = (0, 0);
    for (n, fixture) in FIXTURES.iter().enumerate() {
        assert!(fixture.item.contains_key(STAMPS), "fixture {n}");
        let user = user_from_item(&fixture.item).unwrap().unwrap();
        let view = user
            .profile
            .exists()
            .then(|| user_view(&user.external_user_id, &user.profile, true));
        assert_eq!(view, fixture.view, "fixture {n}");
        // The format-1 writer kept for oversized documents is the one that wrote them.
        assert_eq!(
            without_version(legacy_item_from_user("ws", &user)),
            without_version(fixture.item.clone()),
            "fixture {n}"
        );
        // The next write is format 2, and reads as the same user.
        let rewritten = item_from_user("ws", &user, DOCUMENT).unwrap();
        assert!(rewritten.contains_key(PROFILE) && !rewritten.contains_key(STAMPS));
        // Under a name builds from before format 2 do not read.
        assert!(rewritten.contains_key(PROFILE_VERSION) && !rewritten.contains_key(VERSION));
        let again = user_from_item(&rewritten).unwrap().unwrap();
        assert_eq!(again.profile, user.profile, "fixture {n}");
        assert_eq!(again.listed_unsharded, user.listed_unsharded, "fixture {n}");
        // Never more write units (a tombstone's few bytes more stay in its one unit).
        let units = |item: &Item| item_size(item).div_ceil(1024);
        assert!(units(&rewritten) <= units(&fixture.item), "fixture {n}");
        (before, after) = (
            before + item_size(&fixture.item),
            after + item_size(&rewritten),
        );
    }
    eprintln!("fixtures: format 1 {before} B, format 2 {after} B");
    assert!(after < before * 3 / 4, "{before} B → {after} B");
}

/// Every fixture about 16 times over.
const MIGRATION_CASES: u32 = 1_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(MIGRATION_CASES))]
    /// A user stored by the code before format 2, then sent more writes (upserts,
    /// erasures) while its own earlier messages arrive again, everything delivered
    /// shuffled and each write in either format, reads as all its writes applied one
    /// by one in stamp order.
    #[test]
    fn format_1_users_merged_in_any_order_equal_the_writes_in_stamp_order(
        fixture in any::<proptest::sample::Index>(),
        later in proptest::collection::vec(write(), 0..6),
        order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..16),
        legacy in proptest::collection::vec(any::<bool>(), 0..22),
    ) {
        let fixture = fixture.get(&FIXTURES);
        let earlier: Vec<Option<Value>> = fixture.stamped.iter().map(|(_, w)| w.clone()).collect();
        let skip = earlier.len();
        let later: Vec<Option<Value>> =
            within_once_bound([earlier, later].concat()).into_iter().skip(skip).collect();
        let (later_stamped, later_messages) =
            messages_of(&later, |i| ACCEPTED + i as i64, |i| format!("later{i}"));
        let messages: Vec<UpsertMessage> =
            fixture.messages.iter().cloned().chain(later_messages).collect();
        let stored = user_from_item(&fixture.item).unwrap().unwrap();
        let user = deliver(stored, &shuffled(&messages, &order), &legacy);
        let stamped: Vec<_> = fixture.stamped.iter().cloned().chain(later_stamped).collect();
        equals_reference(&user, &stamped)?;
    }
}

/// The bench's profile (`dev/capacity_run.py`): ~1.5 KB of traits and an email.
fn bench_user() -> StoredUser {
    let traits = json!({"name": "Capacity User 12", "plan": "pro", "company": "Example Inc",
        "role": "admin", "signupDate": "2026-05-17T14:00:00Z", "rev": 3,
        "preferences": {"theme": "dark", "digest": "weekly", "locale": "en-GB", "timezone": "Europe/London"},
        "utm": {"source": "newsletter", "medium": "email", "campaign": "autumn-12"},
        "notes": "x".repeat(900)});
    let create = json!({"external_user_id": "cap-user-12-7f3a9c", "email": "cap-user-12-7f3a9c@example.com", "traits": traits});
    let update = json!({"external_user_id": "cap-user-12-7f3a9c", "traits": {"rev": 4}});
    let (_, messages) = messages_of(
        &[Some(create), Some(update)],
        |i| ACCEPTED + i as i64,
        |i| format!("Yk3Qw{i:03}ZpTaEwAbC="),
    );
    let mut user = StoredUser::new("cap-user-12-7f3a9c");
    for message in &messages {
        user.profile.apply_message(message);
    }
    user
}

#[test]
fn the_bench_profile_bills_one_write_unit() {
    let user = bench_user();
    let new = item_size(&item_from_user("ws_capacity", &user, DOCUMENT).unwrap());
    let old = item_size(&legacy_item_from_user("ws_capacity", &user));
    eprintln!("bench profile: format 1 {old} B, format 2 {new} B");
    assert!(new <= 1024, "{new} B");
    assert!(old > 1024, "{old} B");
}

#[test]
fn a_damaged_document_makes_the_item_unreadable_not_empty() {
    let mut item = item_from_user("ws", &bench_user(), DOCUMENT).unwrap();
    let AttributeValue::B(profile) = &item[PROFILE] else {
        panic!("no document");
    };
    let bytes = profile.as_ref().to_vec();
    for damaged in [vec![], vec![9], bytes[..bytes.len() / 2].to_vec()] {
        item.insert(
            PROFILE.to_owned(),
            AttributeValue::B(Blob::new(damaged.clone())),
        );
        assert!(user_from_item(&item).is_err(), "{damaged:?}");
    }
    item.insert(PROFILE.to_owned(), s("text"));
    assert!(user_from_item(&item).is_err());
}

#[test]
fn a_profile_past_the_document_bound_is_written_in_format_1() {
    // Short decimals: 3 bytes each as DynamoDB counts them, 9 in MessagePack, and too
    // varied to deflate well.
    let numbers: Vec<Value> = (0..120_000u64)
        .map(|i| json!(((i * 7_919) % 100_003) as f64 / 1e3))
        .collect();
    let mut user = StoredUser::new("u1");
    user.profile
        .traits
        .insert("numbers".to_owned(), Value::Array(numbers));
    user.profile.created_at = Some(1);
    let item = item_from_user("ws", &user, DOCUMENT).unwrap();
    assert!(item.contains_key(STAMPS) && !item.contains_key(PROFILE));
    assert_eq!(
        user_from_item(&item).unwrap().unwrap().profile,
        user.profile
    );
}

/// `tests/fixtures/users_v2_sample.json`: users as both formats write them (format 2
/// plain and deflated), which `dev/stack/users_item.py`'s test reads too.
#[test]
fn the_committed_format_2_samples_read_as_their_format_1_twins() {
    let samples: Vec<Value> = serde_json::from_str(include_str!(
        "../../../../tests/fixtures/users_v2_sample.json"
    ))
    .unwrap();
    assert_eq!(samples.len(), 3);
    for sample in samples {
        let read = |format: &str| -> Item {
            let item: serde_dynamo::Item = serde_json::from_value(sample[format].clone()).unwrap();
            item.into()
        };
        let (format_2, format_1) = (read("format_2"), read("format_1"));
        assert!(format_2.contains_key(PROFILE) && format_1.contains_key(STAMPS));
        let (two, one) = (
            user_from_item(&format_2).unwrap().unwrap(),
            user_from_item(&format_1).unwrap().unwrap(),
        );
        assert_eq!(two.profile, one.profile);
        assert!(two.version > 0 && format_2.contains_key(PROFILE_VERSION));
    }
}
